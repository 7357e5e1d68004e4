"""Configuration: file, environment, secret files, validation, masking."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from gateway.config import Secret, config_warnings, describe, load_config
from gateway.errors import ConfigError

SECRET = "s" * 40
BASE_ENV = {
    "GATEWAY_SERVER_PUBLIC_URL": "https://app.example.com",
    "GATEWAY_REDDIT_CLIENT_ID": "client-id-1234",
    "GATEWAY_REDDIT_CLIENT_SECRET": "client-secret-abcdef",
    "GATEWAY_REDDIT_USER_AGENT": "web:com.example.test:v1 (by /u/tester)",
    "GATEWAY_SESSION_SECRET": SECRET,
}


def write(tmp_path: pathlib.Path, text: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


def test_environment_alone_is_a_complete_configuration() -> None:
    config = load_config(None, BASE_ENV)

    assert str(config.server.public_url) == "https://app.example.com"
    assert config.server.redirect_url == "https://app.example.com/oauth2/callback"
    assert config.server.callback_path == "/oauth2/callback"
    assert config.server.listen_port == 4180
    assert config.reddit.scopes == ("identity",)
    assert config.reddit.client_secret.reveal() == "client-secret-abcdef"
    assert config.session.secrets == (Secret(SECRET),)
    assert config.session.cookie_secure is True
    assert config.access.users == frozenset()


def test_file_values_and_environment_overrides(tmp_path: pathlib.Path) -> None:
    path = write(
        tmp_path,
        """
        [server]
        listen = "127.0.0.1:9000"
        trusted_proxies = ["10.0.0.0/8", "::1"]
        [upstream]
        url = "http://127.0.0.1:3000"
        timeout = 5
        [access]
        users = ["Alice", "bob_2"]
        """,
    )
    env = {**BASE_ENV, "GATEWAY_UPSTREAM_TIMEOUT": "2.5", "GATEWAY_ACCESS_USERS": "X_y"}

    config = load_config(path, env)

    assert (config.server.listen_host, config.server.listen_port) == ("127.0.0.1", 9000)
    assert [str(n) for n in config.server.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    assert str(config.upstream.url) == "http://127.0.0.1:3000"
    assert config.upstream.timeout == 2.5
    assert config.access.users == frozenset({"x_y"})


def test_sign_in_limit_defaults_file_values_and_environment(
    tmp_path: pathlib.Path,
) -> None:
    path = write(tmp_path, "[reddit]\nsign_ins_per_second = 2\nsign_in_burst = 5\n")
    env = {**BASE_ENV, "GATEWAY_REDDIT_SIGN_IN_BURST": "7"}

    default = load_config(None, BASE_ENV).reddit
    from_file = load_config(path, BASE_ENV).reddit
    from_env = load_config(path, env).reddit
    rate_from_env = load_config(
        None, {**BASE_ENV, "GATEWAY_REDDIT_SIGN_INS_PER_SECOND": "0.5"}
    ).reddit

    assert (default.sign_ins_per_second, default.sign_in_burst) == (10.0, 50)
    assert (from_file.sign_ins_per_second, from_file.sign_in_burst) == (2.0, 5)
    assert (from_env.sign_ins_per_second, from_env.sign_in_burst) == (2.0, 7)
    assert rate_from_env.sign_ins_per_second == 0.5
    assert isinstance(from_file.sign_ins_per_second, float)


def test_workers_default_to_the_cpus_the_container_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gateway.config

    def workers(setting: str) -> int:
        env = {**BASE_ENV, "GATEWAY_SERVER_WORKERS": setting}
        return load_config(None, env).server.workers

    monkeypatch.setattr(gateway.config, "usable_cpus", lambda: 3)
    assert (workers(""), workers("0"), workers("5")) == (3, 3, 5)

    monkeypatch.setattr(gateway.config, "usable_cpus", lambda: 200)
    assert workers("0") == 64


def test_redirect_url_is_kept_byte_for_byte() -> None:
    env = {
        **BASE_ENV,
        "GATEWAY_SERVER_PUBLIC_URL": "https://App.Example.com:443",
        "GATEWAY_SERVER_REDIRECT_URL": "https://App.Example.com:443/auth/cb/",
    }

    config = load_config(None, env)

    assert config.server.redirect_url == "https://App.Example.com:443/auth/cb/"
    assert config.server.callback_path == "/auth/cb/"


@pytest.mark.parametrize(
    "public_url", ["https://app.example.com:443", "HTTPS://App.Example.com"]
)
def test_public_url_with_default_port_or_capitals_is_accepted(public_url: str) -> None:
    config = load_config(None, {**BASE_ENV, "GATEWAY_SERVER_PUBLIC_URL": public_url})

    assert config.server.callback_path == "/oauth2/callback"


def test_secret_files_are_read(tmp_path: pathlib.Path) -> None:
    (tmp_path / "client").write_text("from-a-file-secret\n")
    (tmp_path / "session").write_text(SECRET + "\n")
    env = {
        k: v
        for k, v in BASE_ENV.items()
        if k not in ("GATEWAY_REDDIT_CLIENT_SECRET", "GATEWAY_SESSION_SECRET")
    }
    env["GATEWAY_REDDIT_CLIENT_SECRET_FILE"] = str(tmp_path / "client")
    env["GATEWAY_SESSION_SECRET_FILE"] = str(tmp_path / "session")

    config = load_config(None, env)

    assert config.reddit.client_secret.reveal() == "from-a-file-secret"
    assert config.session.secrets[0].reveal() == SECRET


def test_secret_rotation_list_and_environment_replaces_the_newest(
    tmp_path: pathlib.Path,
) -> None:
    old, new = "o" * 32, "n" * 32
    path = write(tmp_path, f'[session]\nsecrets = ["{"x" * 32}", "{old}"]\n')
    env = {**BASE_ENV, "GATEWAY_SESSION_SECRET": new}

    config = load_config(path, env)

    assert [s.reveal() for s in config.session.secrets] == [new, old]


def test_empty_string_means_not_set() -> None:
    env = {**BASE_ENV, "GATEWAY_SERVER_REDIRECT_URL": "", "GATEWAY_LOG_LEVEL": ""}

    config = load_config(None, env)

    assert config.server.redirect_url.endswith("/oauth2/callback")
    assert config.log.level == "info"


@pytest.mark.parametrize(
    ("toml", "env", "key"),
    [
        ("[server]\nlisten_addr = 'x'\n", {}, "server.listen_addr"),
        ("[serverz]\n", {}, "serverz"),
        ("[upstream]\ntimeout = 'slow'\n", {}, "upstream.timeout"),
        ("[session]\nmax_age = 1.5\n", {}, "session.max_age"),
        ("[session]\ncookie_secure = 'yes'\n", {}, "session.cookie_secure"),
        ("[access]\nusers = 'alice'\n", {}, "access.users"),
        ("[access]\nusers = ['a b c']\n", {}, "access.users"),
        ("[access]\ndeny_users = ['x']\n", {}, "access.deny_users"),
        ("[access]\nmoderators_of = ['r/a b']\n", {}, "access.moderators_of"),
        ("[access]\nmoderators_of = ['x']\n", {}, "access.moderators_of"),
        ("[access]\nmoderators_of = ['r/']\n", {}, "access.moderators_of"),
        ("[access]\nmoderators_of = ['u/alice']\n", {}, "access.moderators_of"),
        ("[access]\nmoderators_of = ['r/a/b']\n", {}, "access.moderators_of"),
        ("[access]\nsubscribers_of = ['u_alice']\n", {}, "access.subscribers_of"),
        ("[access]\nsubscribers_of = [1]\n", {}, "access.subscribers_of"),
        (f"[access]\ncontributors_of = ['{'a' * 22}']\n", {}, "access.contributors_of"),
        ("[access]\ncontributors_of = ['r/caf\u00e9']\n", {}, "access.contributors_of"),
        ("[access]\nmin_account_age_days = -1\n", {}, "access.min_account_age_days"),
        ("[access]\nmin_account_age_days = 1.5\n", {}, "access.min_account_age_days"),
        ("[access]\nmin_karma = '100'\n", {}, "access.min_karma"),
        ("[access]\nrequire_verified_email = 1\n", {}, "access.require_verified_email"),
        ("[access]\nallow_suspended = 'no'\n", {}, "access.allow_suspended"),
        ("[access]\nrecheck_interval = 59\n", {}, "access.recheck_interval"),
        ("[access]\nrecheck_grace = -1\n", {}, "access.recheck_grace"),
        ("[server]\nworkers = -1\n", {}, "server.workers"),
        ("[server]\nworkers = 65\n", {}, "server.workers"),
        ("[reddit]\nsign_ins_per_second = 0\n", {}, "reddit.sign_ins_per_second"),
        ("[reddit]\nsign_ins_per_second = -1\n", {}, "reddit.sign_ins_per_second"),
        ("[reddit]\nsign_ins_per_second = 'x'\n", {}, "reddit.sign_ins_per_second"),
        ("[reddit]\nsign_in_burst = 0\n", {}, "reddit.sign_in_burst"),
        ("[reddit]\nsign_in_burst = 2.5\n", {}, "reddit.sign_in_burst"),
        ("[reddit]\nsign_in_burst = true\n", {}, "reddit.sign_in_burst"),
        ("[access]\nroutes = '/admin'\n", {}, "access.routes"),
        ("[access]\nroutes = ['/admin']\n", {}, "access.routes"),
        ("", {"GATEWAY_ACCESS_ROUTES": "/admin"}, "GATEWAY_ACCESS_ROUTES"),
        ("", {"GATEWAY_ACCESS_MIN_KARMA": "lots"}, "GATEWAY_ACCESS_MIN_KARMA"),
        ("", {"GATEWAY_ACCESS_MODERATORS_OF": "ok,r/no way"}, "access.moderators_of"),
        ("", {"GATEWAY_ACCESS_RECHECK_INTERVAL": "10"}, "access.recheck_interval"),
        ("", {"GATEWAY_REDDIT_CLIENT_ID": ""}, "reddit.client_id"),
        ("", {"GATEWAY_REDDIT_CLIENT_SECRET": ""}, "reddit.client_secret"),
        ("", {"GATEWAY_SESSION_SECRET": "short"}, "session.secret"),
        ("", {"GATEWAY_SESSION_SECRET": ""}, "session.secret"),
        (
            "",
            {"GATEWAY_REDDIT_USER_AGENT": "python-requests/2.31"},
            "reddit.user_agent",
        ),
        ("", {"GATEWAY_REDDIT_USER_AGENT": ""}, "reddit.user_agent"),
        ("", {"GATEWAY_REDDIT_SCOPES": "identity,bogus"}, "reddit.scopes"),
        ("", {"GATEWAY_REDDIT_SCOPES": "read"}, "reddit.scopes"),
        ("", {"GATEWAY_REDDIT_DURATION": "forever"}, "reddit.duration"),
        (
            "",
            {"GATEWAY_REDDIT_SIGN_INS_PER_SECOND": "0"},
            "reddit.sign_ins_per_second",
        ),
        (
            "",
            {"GATEWAY_REDDIT_SIGN_INS_PER_SECOND": "inf"},
            "GATEWAY_REDDIT_SIGN_INS_PER_SECOND",
        ),
        ("", {"GATEWAY_REDDIT_SIGN_IN_BURST": "0"}, "reddit.sign_in_burst"),
        (
            "",
            {"GATEWAY_REDDIT_SIGN_IN_BURST": "1.5"},
            "GATEWAY_REDDIT_SIGN_IN_BURST",
        ),
        ("", {"GATEWAY_SERVER_PUBLIC_URL": "app.example.com"}, "server.public_url"),
        (
            "",
            {"GATEWAY_SERVER_PUBLIC_URL": "https://a.example/app"},
            "server.public_url",
        ),
        (
            "",
            {"GATEWAY_SERVER_REDIRECT_URL": "https://evil.example/oauth2/callback"},
            "server.redirect_url",
        ),
        (
            "",
            {"GATEWAY_SERVER_REDIRECT_URL": "http://app.example.com/oauth2/callback"},
            "server.redirect_url",
        ),
        ("", {"GATEWAY_SERVER_LISTEN": "4180"}, "server.listen"),
        (
            "",
            {"GATEWAY_SERVER_TRUSTED_PROXIES": "10.0.0.0/33"},
            "server.trusted_proxies",
        ),
        ("", {"GATEWAY_UPSTREAM_URL": "ftp://files"}, "upstream.url"),
        ("", {"GATEWAY_UPSTREAM_TIMEOUT": "0"}, "upstream.timeout"),
        ("", {"GATEWAY_UPSTREAM_IDLE_TIMEOUT": "-1"}, "upstream.idle_timeout"),
        (
            "",
            {"GATEWAY_UPSTREAM_CLIENT_IDLE_TIMEOUT": "-1"},
            "upstream.client_idle_timeout",
        ),
        ("", {"GATEWAY_UPSTREAM_TIMEOUT": "nan"}, "GATEWAY_UPSTREAM_TIMEOUT"),
        (
            "",
            {"GATEWAY_SESSION_COOKIE_SECURE": "maybe"},
            "GATEWAY_SESSION_COOKIE_SECURE",
        ),
        ("", {"GATEWAY_REDDIT_CLIENTSECRET": "x"}, "GATEWAY_REDDIT_CLIENTSECRET"),
        ("", {"GATEWAY_LOG_FORMAT": "xml"}, "log.format"),
        (
            "",
            {"GATEWAY_SERVER_PUBLIC_URL": "http://app.example.com"},
            "session.cookie_secure",
        ),
        (
            "[session]\nsecret = 'a'\nsecrets = ['b']\n",
            {"GATEWAY_SESSION_SECRET": ""},
            "session.secrets",
        ),
    ],
)
def test_bad_configuration_refuses_to_start_naming_the_key(
    tmp_path: pathlib.Path, toml: str, env: dict[str, str], key: str
) -> None:
    path = write(tmp_path, toml)

    with pytest.raises(ConfigError) as caught:
        load_config(path, {**BASE_ENV, **env})

    assert caught.value.key == key
    assert key in str(caught.value)


def test_unrelated_environment_variables_are_ignored() -> None:
    env = {**BASE_ENV, "GATEWAY_SERVICE_HOST": "10.0.0.1", "GATEWAY_CONFIG": "x"}

    assert load_config(None, env).server.listen_port == 4180


def test_invalid_toml_and_missing_file_are_config_errors(
    tmp_path: pathlib.Path,
) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[server\n"), BASE_ENV)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "absent.toml"), BASE_ENV)


def test_secrets_never_show_in_repr_or_describe() -> None:
    config = load_config(None, BASE_ENV)

    text = describe(config) + repr(config) + str(config)

    assert "client-secret-abcdef" not in text
    assert SECRET not in text
    assert 'client_secret = "********"' in describe(config)


def test_example_file_parses_and_documents_every_key() -> None:
    from gateway.config import _SCHEMA

    example = pathlib.Path(__file__).parent.parent / "gateway.toml.example"
    text = example.read_text()
    env = {k: v for k, v in BASE_ENV.items() if k != "GATEWAY_SERVER_PUBLIC_URL"}

    config = load_config(str(example), env)

    assert str(config.server.public_url) == "https://app.example.com"
    for section, keys in _SCHEMA.items():
        assert f"[{section}]" in text
        for key in keys:
            documented = f"{key} =" in text or f"[[{section}.{key}]]" in text
            assert documented, f"{section}.{key} is not documented"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=30,
        check=False,
    )


def test_check_command_prints_masked_config_and_fails_on_errors() -> None:
    good = run_cli("check", env=BASE_ENV)
    bad = run_cli("check", env={**BASE_ENV, "GATEWAY_SESSION_SECRET": "short"})

    assert good.returncode == 0, good.stderr
    assert "client-secret-abcdef" not in good.stdout + good.stderr
    assert 'public_url = "https://app.example.com"' in good.stdout
    assert "\nworkers = " in good.stdout
    assert "\nsign_ins_per_second = 10.0\n" in good.stdout
    assert "\nsign_in_burst = 50\n" in good.stdout
    assert bad.returncode != 0
    assert "session.secret" in bad.stderr


def test_secret_command_prints_a_strong_random_secret() -> None:
    first = run_cli("secret", env={})
    second = run_cli("secret", env={})

    assert first.returncode == 0
    assert len(first.stdout.strip()) >= 43
    assert first.stdout != second.stdout


def route_toml(*lines: str) -> str:
    return "[[access.routes]]\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        # the prefix: required, a plain path, compared with the raw request path
        (route_toml("public = true"), "access.routes[0].prefix"),
        (route_toml("prefix = ''", "public = true"), "access.routes[0].prefix"),
        (route_toml("prefix = 'admin'", "public = true"), "access.routes[0].prefix"),
        (route_toml("prefix = 7", "public = true"), "access.routes[0].prefix"),
        (
            route_toml("prefix = '/admin%2F'", "min_karma = 1"),
            "access.routes[0].prefix",
        ),
        (route_toml("prefix = '/%61dmin'", "min_karma = 1"), "access.routes[0].prefix"),
        (route_toml("prefix = '/a?x'", "public = true"), "access.routes[0].prefix"),
        (route_toml("prefix = '/a#x'", "public = true"), "access.routes[0].prefix"),
        (route_toml("prefix = '/a;x'", "public = true"), "access.routes[0].prefix"),
        (route_toml("prefix = '/a/../b'", "public = true"), "access.routes[0].prefix"),
        (route_toml("prefix = '/a/./b'", "public = true"), "access.routes[0].prefix"),
        (route_toml("prefix = '/..'", "public = true"), "access.routes[0].prefix"),
        (route_toml("prefix = '//a'", "public = true"), "access.routes[0].prefix"),
        (route_toml("prefix = '/a//b'", "public = true"), "access.routes[0].prefix"),
        (route_toml("prefix = '/a b'", "public = true"), "access.routes[0].prefix"),
        (route_toml("prefix = '/a\\b'", "public = true"), "access.routes[0].prefix"),
        (
            route_toml("prefix = '/caf\u00e9'", "public = true"),
            "access.routes[0].prefix",
        ),
        # keys inside a route
        (route_toml("prefix = '/a'", "bogus = 1"), "access.routes[0].bogus"),
        (
            route_toml("prefix = '/a'", "recheck_interval = 60"),
            "access.routes[0].recheck_interval",
        ),
        (route_toml("prefix = '/a'", "routes = []"), "access.routes[0].routes"),
        (route_toml("prefix = '/a'", "public = 'yes'"), "access.routes[0].public"),
        (route_toml("prefix = '/a'", "users = 'alice'"), "access.routes[0].users"),
        (route_toml("prefix = '/a'", "users = ['a b']"), "access.routes[0].users"),
        (
            route_toml("prefix = '/a'", "moderators_of = ['r/']"),
            "access.routes[0].moderators_of",
        ),
        (
            route_toml("prefix = '/a'", "min_account_age_days = -5"),
            "access.routes[0].min_account_age_days",
        ),
        (route_toml("prefix = '/a'", "min_karma = 1.5"), "access.routes[0].min_karma"),
        # what a route means
        (route_toml("prefix = '/a'"), "access.routes[0]"),
        (route_toml("prefix = '/a'", "users = []"), "access.routes[0]"),
        (
            route_toml("prefix = '/a'", "public = true", "moderators_of = ['x1']"),
            "access.routes[0].moderators_of",
        ),
        (
            route_toml("prefix = '/a'", "public = true", "allow_suspended = false"),
            "access.routes[0].allow_suspended",
        ),
        (
            route_toml("prefix = '/a'", "allow_suspended = true"),
            "access.routes[0].allow_suspended",
        ),
        (
            route_toml("prefix = '/a'", "public = true")
            + route_toml("prefix = '/b'", "min_karma = 1")
            + route_toml("prefix = '/A/'", "min_karma = 5"),
            "access.routes[2].prefix",
        ),
    ],
)
def test_bad_routes_refuse_to_start_naming_the_key(
    tmp_path: pathlib.Path, toml: str, key: str
) -> None:
    path = write(tmp_path, "[access]\n" + toml)

    with pytest.raises(ConfigError) as caught:
        load_config(path, BASE_ENV)

    assert caught.value.key == key
    assert key in str(caught.value)


ACCESS_TOML = """
[reddit]
duration = "permanent"
[access]
users = ["Alice", "bob_2"]
deny_users = ["Mallory"]
moderators_of = ["r/Example", "/r/Other/", "EXAMPLE", " third_sub "]
min_account_age_days = 30
min_karma = -5
require_verified_email = true
recheck_interval = 600
recheck_grace = 0

[[access.routes]]
prefix = "/admin/"
contributors_of = ["Team"]
allow_suspended = false

[[access.routes]]
prefix = "/"
public = true
"""


def test_access_rules_and_routes_are_read_and_normalised(
    tmp_path: pathlib.Path,
) -> None:
    config = load_config(write(tmp_path, ACCESS_TOML), BASE_ENV)

    access = config.access
    assert access.users == {"alice", "bob_2"}
    assert access.deny_users == {"mallory"}
    assert access.moderators_of == ("Example", "Other", "third_sub")
    assert (access.subscribers_of, access.contributors_of) == ((), ())
    assert (access.min_account_age_days, access.min_karma) == (30, -5)
    assert access.require_verified_email is True
    assert access.allow_suspended is False
    assert (access.recheck_interval, access.recheck_grace) == (600, 0)
    admin, root = access.routes
    assert (admin.prefix, admin.public, admin.contributors_of) == (
        "/admin",
        False,
        ("Team",),
    )
    assert admin.allow_suspended is False
    assert (admin.users, admin.min_karma, admin.min_account_age_days) == (
        frozenset(),
        None,
        0,
    )
    assert (root.prefix, root.public) == ("/", True)


def test_access_defaults_and_environment_lists() -> None:
    env = {
        **BASE_ENV,
        "GATEWAY_ACCESS_SUBSCRIBERS_OF": "r/One, two_2",
        "GATEWAY_ACCESS_MIN_KARMA": "-10",
        "GATEWAY_ACCESS_ALLOW_SUSPENDED": "yes",
    }

    default = load_config(None, BASE_ENV).access
    config = load_config(None, env).access

    assert default.min_karma is None
    assert (default.min_account_age_days, default.allow_suspended) == (0, False)
    assert (default.recheck_interval, default.recheck_grace) == (900, 1800)
    assert default.routes == ()
    assert config.subscribers_of == ("One", "two_2")
    assert config.min_karma == -10
    assert config.allow_suspended is True


@pytest.mark.parametrize(
    ("toml", "scopes"),
    [
        ("", ("identity",)),
        ("[access]\nusers = ['alice']\nmin_karma = 5\n", ("identity",)),
        ("[access]\nmoderators_of = ['example']\n", ("identity", "mysubreddits")),
        ("[access]\ncontributors_of = ['example']\n", ("identity", "mysubreddits")),
        (
            "[access]\n" + route_toml("prefix = '/a'", "subscribers_of = ['ex']"),
            ("identity", "mysubreddits"),
        ),
        (
            "[reddit]\nscopes = ['identity', 'mysubreddits', 'read']\n"
            "[access]\nmoderators_of = ['example']\n",
            ("identity", "mysubreddits", "read"),
        ),
    ],
)
def test_scopes_follow_the_rules(
    tmp_path: pathlib.Path, toml: str, scopes: tuple[str, ...]
) -> None:
    assert load_config(write(tmp_path, toml), BASE_ENV).reddit.scopes == scopes


def test_describe_shows_why_each_scope_and_the_routes_as_toml(
    tmp_path: pathlib.Path,
) -> None:
    import tomllib

    config = load_config(write(tmp_path, ACCESS_TOML), BASE_ENV)

    text = describe(config)

    assert 'scopes = ["identity", "mysubreddits"]' in text
    assert "# identity: reads the username (always needed)" in text
    assert (
        "# mysubreddits: needed by access.moderators_of, "
        "access.routes[0].contributors_of"
    ) in text
    shown = tomllib.loads(text)["access"]
    assert shown["moderators_of"] == ["Example", "Other", "third_sub"]
    assert shown["min_karma"] == -5
    assert shown["routes"] == [
        {"prefix": "/admin", "contributors_of": ["Team"], "allow_suspended": False},
        {"prefix": "/", "public": True},
    ]
    assert "# min_karma is not set" in describe(load_config(None, BASE_ENV))


@pytest.mark.parametrize(
    ("toml", "warned"),
    [
        ("", ""),
        ("[access]\nusers = ['alice']\nmin_account_age_days = 30\n", ""),
        ("[access]\nmoderators_of = ['example']\n", "access.moderators_of is"),
        (
            "[access]\nmin_karma = 1\n"
            + route_toml("prefix = '/a'", "require_verified_email = true"),
            "access.min_karma, access.routes[0].require_verified_email are",
        ),
        ("[reddit]\nduration = 'permanent'\n[access]\nmoderators_of = ['ex']\n", ""),
    ],
)
def test_rechecked_rules_with_temporary_tokens_are_warned_about(
    tmp_path: pathlib.Path, toml: str, warned: str
) -> None:
    warnings = config_warnings(load_config(write(tmp_path, toml), BASE_ENV))

    if not warned:
        assert warnings == []
    else:
        (warning,) = warnings
        assert warning.startswith(warned + " re-checked every 900 s")
        assert 'duration = "permanent"' in warning


def test_check_command_warns_but_passes() -> None:
    env = {**BASE_ENV, "GATEWAY_ACCESS_MODERATORS_OF": "r/example"}

    temporary = run_cli("check", env=env)
    permanent = run_cli("check", env={**env, "GATEWAY_REDDIT_DURATION": "permanent"})

    assert temporary.returncode == 0, temporary.stderr
    assert "# warning: access.moderators_of is re-checked" in temporary.stderr
    assert "# mysubreddits: needed by access.moderators_of" in temporary.stdout
    assert permanent.returncode == 0, permanent.stderr
    assert "warning" not in permanent.stderr


def test_the_example_files_commented_routes_are_valid(tmp_path: pathlib.Path) -> None:
    example = pathlib.Path(__file__).parent.parent / "gateway.toml.example"
    lines = example.read_text().splitlines()
    start = lines.index("# [[access.routes]]")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line.removeprefix("#").removeprefix(" "))

    config = load_config(write(tmp_path, "[access]\n" + "\n".join(block)), BASE_ENV)

    admin, health = config.access.routes
    assert (admin.prefix, admin.moderators_of) == ("/admin", ("example",))
    assert (health.prefix, health.public) == ("/health", True)
