"""Configuration: file, environment, secret files, validation, masking."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from gateway.config import Secret, describe, load_config
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
            assert f"{key} =" in text, f"{section}.{key} is not documented"


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
    assert bad.returncode != 0
    assert "session.secret" in bad.stderr


def test_secret_command_prints_a_strong_random_secret() -> None:
    first = run_cli("secret", env={})
    second = run_cli("secret", env={})

    assert first.returncode == 0
    assert len(first.stdout.strip()) >= 43
    assert first.stdout != second.stdout
