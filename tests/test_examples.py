"""The deployment examples in examples/: they parse, they name only real config
keys and gateway paths, and the nginx one works in front of a real gateway."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from yarl import URL

from gateway.config import _SCHEMA, load_config
from gateway.errors import ConfigError
from tests.conftest import Stack, StackFactory, free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
COMPOSE = EXAMPLES / "docker-compose.yml"
DOTENV = EXAMPLES / ".env.example"
SIDECAR = EXAMPLES / "kubernetes" / "sidecar.yaml"
NGINX = EXAMPLES / "nginx" / "auth_request.conf"
TRAEFIK = EXAMPLES / "traefik" / "forward-auth.yml"
ALL = [COMPOSE, DOTENV, SIDECAR, NGINX, TRAEFIK]

CONFIG_VARIABLES = {
    f"GATEWAY_{section}_{key}".upper()
    for section, keys in _SCHEMA.items()
    for key in keys
} | {"GATEWAY_CONFIG"}
REAL_SESSION_SECRET = "s" * 43  # as long as what `reddit-gateway secret` prints
GATEWAY_PATHS = {
    "/oauth2/start",
    "/oauth2/callback",
    "/oauth2/sign_out",
    "/oauth2/auth",
    "/oauth2/userinfo",
    "/oauth2/ping",
    "/oauth2/ready",
}


def read_dotenv(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {name: value for name, value in pairs}


def sidecar_documents() -> dict[str, dict[str, Any]]:
    with SIDECAR.open() as f:
        return {doc["kind"]: doc for doc in yaml.safe_load_all(f)}


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in pod["containers"] if c["name"] == name]
    assert len(found) == 1, f"{len(found)} containers named {name}"
    return found[0]


# --- what every example may name -------------------------------------------------


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_gateway_variable_an_example_uses_is_a_config_key(path: Path) -> None:
    used = set(re.findall(r"\bGATEWAY_[A-Z0-9_]+", path.read_text()))

    assert used - CONFIG_VARIABLES == set()


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_gateway_path_an_example_names_exists(path: Path) -> None:
    named = set(re.findall(r"/oauth2/[A-Za-z0-9_.]+", path.read_text()))

    assert named - GATEWAY_PATHS == set()


async def test_the_gateway_serves_exactly_the_paths_the_examples_may_name(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()

    served = {
        resource.canonical
        for resource in stack.app.router.resources()
        if resource.canonical.startswith("/oauth2/") and "{" not in resource.canonical
    }

    assert served == GATEWAY_PATHS


def test_a_misspelt_variable_would_be_caught() -> None:
    assert "GATEWAY_UPSTREAM_URI" not in CONFIG_VARIABLES
    with pytest.raises(ConfigError, match="GATEWAY_UPSTREAM_URI"):
        load_config(None, {"GATEWAY_UPSTREAM_URI": "http://app"})


# --- docker compose --------------------------------------------------------------


def test_compose_runs_the_gateway_in_front_of_an_unpublished_app() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    gateway = compose["services"]["gateway"]
    app = compose["services"]["app"]

    assert gateway["build"] == ".."
    assert gateway["env_file"] == ".env"
    assert gateway["read_only"] is True
    assert gateway["ports"] == ["4180:4180"]
    assert "ports" not in app
    assert gateway["environment"]["GATEWAY_UPSTREAM_URL"] == "http://app:8080"
    assert app["command"] == ["--port", "8080"]


def test_compose_and_its_env_file_make_a_valid_configuration() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    secrets = read_dotenv(DOTENV)
    env = {**compose["services"]["gateway"]["environment"], **secrets}
    env["GATEWAY_SESSION_SECRET"] = REAL_SESSION_SECRET  # as the comment asks

    config = load_config(None, env)

    assert str(config.server.public_url) == "http://localhost:4180"
    assert (
        config.reddit.client_secret.reveal() == secrets["GATEWAY_REDDIT_CLIENT_SECRET"]
    )
    for name in ("GATEWAY_REDDIT_CLIENT_SECRET", "GATEWAY_SESSION_SECRET"):
        assert "FAKE" in secrets[name]  # obviously not a real secret
        assert name not in COMPOSE.read_text()  # secrets stay in .env


def test_a_filled_in_env_file_is_never_committed() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "examples/.env"],
        cwd=EXAMPLES.parent,
        check=False,
    )
    assert ignored.returncode == 0


# --- kubernetes ------------------------------------------------------------------


def test_the_sidecar_manifest_has_both_containers_probes_and_a_service() -> None:
    docs = sidecar_documents()
    assert set(docs) == {"Secret", "Deployment", "Service", "NetworkPolicy"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    gateway = container(pod, "gateway")
    app = container(pod, "app")

    assert gateway["livenessProbe"]["httpGet"] == {
        "path": "/oauth2/ping",
        "port": "http",
    }
    assert gateway["readinessProbe"]["httpGet"] == {
        "path": "/oauth2/ready",
        "port": "http",
    }
    assert gateway["ports"] == [{"name": "http", "containerPort": 4180}]
    service_port = docs["Service"]["spec"]["ports"][0]
    assert service_port["targetPort"] == "http"  # the gateway, never the app
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert docs["Service"]["spec"]["selector"] == labels
    policy = docs["NetworkPolicy"]["spec"]["ingress"]
    assert policy == [{"ports": [{"port": 4180, "protocol": "TCP"}]}]
    assert app["ports"][0]["containerPort"] == 8080


def test_the_sidecar_runs_locked_down() -> None:
    pod = sidecar_documents()["Deployment"]["spec"]["template"]["spec"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    for each in pod["containers"]:
        security = each["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        assert each["resources"]["requests"]
        assert each["resources"]["limits"]["memory"]
    # Longer than the gateway's default shutdown_timeout, so requests finish.
    assert pod["terminationGracePeriodSeconds"] > 30


def test_the_sidecar_environment_and_secret_make_a_valid_configuration() -> None:
    docs = sidecar_documents()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    gateway = container(pod, "gateway")
    (source,) = gateway["envFrom"]

    assert source["secretRef"]["name"] == docs["Secret"]["metadata"]["name"]
    env = {item["name"]: item["value"] for item in gateway["env"]}
    secrets = docs["Secret"]["stringData"]
    assert not set(env) & set(secrets)
    replaced = {**secrets, "GATEWAY_SESSION_SECRET": REAL_SESSION_SECRET}
    config = load_config(None, {**env, **replaced})

    app_port = container(pod, "app")["ports"][0]["containerPort"]
    assert config.upstream.url == URL(f"http://127.0.0.1:{app_port}")
    assert all("FAKE" in value for value in secrets.values())


# --- traefik ---------------------------------------------------------------------


def test_traefik_asks_the_gateway_before_every_request_to_the_app() -> None:
    http = yaml.safe_load(TRAEFIK.read_text())["http"]
    middlewares = http["middlewares"]
    forward = middlewares["reddit-auth"]["forwardAuth"]
    sign_in = middlewares["reddit-sign-in"]["errors"]
    gateway_url = http["services"]["reddit-gateway"]["loadBalancer"]["servers"][0]

    assert forward["address"] == gateway_url["url"] + "/oauth2/auth"
    assert forward["authResponseHeaders"] == ["X-Reddit-User"]
    assert http["routers"]["app"]["middlewares"] == ["reddit-sign-in", "reddit-auth"]
    assert sign_in["status"] == ["401"]
    assert sign_in["query"] == "/oauth2/start?rd={url}"
    assert sign_in["service"] == "reddit-gateway"
    assert "PathPrefix(`/oauth2/`)" in http["routers"]["reddit-gateway"]["rule"]
    assert http["routers"]["reddit-gateway"]["service"] == "reddit-gateway"


# --- nginx -----------------------------------------------------------------------


def nginx_location(conf: str, name: str) -> str:
    """The body of `location <name> { ... }` (no nested blocks in ours)."""
    match = re.search(r"location\s+" + re.escape(name) + r"\s*\{([^}]*)\}", conf)
    assert match is not None, f"no location {name}"
    return match.group(1)


def test_nginx_asks_the_gateway_and_passes_on_the_user() -> None:
    conf = NGINX.read_text()
    app = nginx_location(conf, "/")
    gateway = nginx_location(conf, "/oauth2/")
    auth = nginx_location(conf, "= /oauth2/auth")
    sign_in = re.search(r"location @sign_in \{(.*?)\n    \}", conf, re.S)

    assert "auth_request /oauth2/auth;" in app
    assert "auth_request_set $user $upstream_http_x_reddit_user;" in app
    assert "proxy_set_header X-Reddit-User $user;" in app
    assert "error_page 401 = @sign_in;" in app
    assert "proxy_pass http://app;" in app
    assert "proxy_pass http://reddit_gateway;" in gateway
    assert "internal;" in auth
    assert "proxy_pass_request_body off;" in auth
    assert sign_in is not None
    assert "return 302 /oauth2/start?rd=$request_uri;" in sign_in.group(1)
    assert re.search(r"upstream reddit_gateway \{\s*server 127\.0\.0\.1:4180;", conf)


def nginx_executable() -> str:
    executable = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if executable is None:
        message = (
            "nginx is not installed; install Debian's package: apt-get install nginx"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return executable


def nginx_main_conf(prefix: Path, site: Path) -> Path:
    """A whole nginx.conf around the example, everything under `prefix`."""
    temp = {name: prefix / name for name in ("body", "proxy", "fcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    main = prefix / "nginx.conf"
    main.write_text(
        f"pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log;\n"
        "worker_processes 1;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        "    access_log off;\n"
        f"    client_body_temp_path {temp['body']};\n"
        f"    proxy_temp_path {temp['proxy']};\n"
        f"    fastcgi_temp_path {temp['fcgi']};\n"
        f"    uwsgi_temp_path {temp['uwsgi']};\n"
        f"    scgi_temp_path {temp['scgi']};\n"
        f"    include {site};\n"
        "}\n"
    )
    return main


def test_nginx_accepts_the_example_as_written(tmp_path: Path) -> None:
    nginx = nginx_executable()
    main = nginx_main_conf(tmp_path, NGINX)

    checked = subprocess.run(
        [nginx, "-t", "-q", "-p", str(tmp_path), "-e", "stderr", "-c", str(main)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert checked.returncode == 0, checked.stderr


@pytest.fixture
def nginx_in_front(tmp_path: Path) -> Iterator[tuple[int, Any]]:
    """nginx running the example, on ports chosen by the test; yields (port, start)."""
    nginx = nginx_executable()
    port = free_port()
    processes: list[subprocess.Popen[bytes]] = []

    def start(gateway_port: int, app_port: int) -> None:
        site = NGINX.read_text()
        site = site.replace(
            "server 127.0.0.1:4180;", f"server 127.0.0.1:{gateway_port};"
        )
        site = site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{app_port};")
        site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
        (tmp_path / "site.conf").write_text(site)
        main = nginx_main_conf(tmp_path, tmp_path / "site.conf")
        command = [nginx, "-p", str(tmp_path), "-e", "stderr", "-c", str(main)]
        processes.append(
            subprocess.Popen(
                [*command, "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )

    yield port, start

    for process in processes:
        process.terminate()
        _, errors = process.communicate(timeout=10)
        assert process.returncode == 0, errors.decode()


async def wait_for_nginx(url: URL) -> None:
    async with aiohttp.ClientSession() as client:
        for _ in range(100):
            try:
                async with client.get(url / "oauth2/ping") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("nginx did not answer within 5 s")


@pytest.fixture
async def behind_nginx(
    make_stack: StackFactory, nginx_in_front: tuple[int, Any]
) -> AsyncIterator[tuple[Stack, URL]]:
    nginx_executable()
    port, start = nginx_in_front
    origin = URL(f"http://127.0.0.1:{port}")
    stack = await make_stack(
        server_public_url=str(origin),
        server_trusted_proxies="127.0.0.1/32",
        access_users="alice",
    )
    start(stack.url.port, stack.config.upstream.url.port)
    await wait_for_nginx(origin)
    yield stack, origin


async def test_nginx_sends_browsers_to_sign_in_and_api_clients_a_401(
    behind_nginx: tuple[Stack, URL],
) -> None:
    stack, origin = behind_nginx
    answers: dict[str, tuple[int, str | None]] = {}
    requests = {
        "page": ("GET", {"Accept": "text/html"}),
        "navigation": ("GET", {"Sec-Fetch-Mode": "navigate", "Accept": "*/*"}),
        "fetch": ("GET", {"Sec-Fetch-Mode": "cors", "Accept": "text/html"}),
        "xhr": ("GET", {"Accept": "text/html", "X-Requested-With": "XMLHttpRequest"}),
        "curl": ("GET", {"Accept": "*/*"}),
        "post": ("POST", {"Accept": "text/html"}),
    }

    async with aiohttp.ClientSession() as client:
        for name, (method, headers) in requests.items():
            async with client.request(
                method,
                origin / "reports" % {"week": "12"},
                headers=headers,
                allow_redirects=False,
            ) as answer:
                answers[name] = (answer.status, answer.headers.get("Location"))

    back = "/oauth2/start?rd=/reports?week=12"
    assert answers == {
        "page": (302, back),
        "navigation": (302, back),
        "fetch": (401, None),
        "xhr": (401, None),
        "curl": (401, None),
        "post": (401, None),
    }
    assert stack.upstream.received == []


async def test_nginx_example_signs_in_and_passes_only_the_gateways_user(
    behind_nginx: tuple[Stack, URL],
) -> None:
    stack, origin = behind_nginx
    page = {"Accept": "text/html"}

    async with stack.browser() as browser:
        async with browser.get(
            origin / "reports", headers=page, allow_redirects=False
        ) as first:
            assert first.status == 302
            start = origin.join(URL(first.headers["Location"]))
        async with browser.get(start, allow_redirects=False) as to_reddit:
            assert to_reddit.status == 302
            authorize = URL(to_reddit.headers["Location"])
        callback = await stack.consent(browser, authorize, "alice")
        assert callback.origin() == origin
        async with browser.get(callback, allow_redirects=False) as back:
            assert back.status == 302
            assert back.headers["Location"] == "/reports#"

        spoof = {**page, "X-Reddit-User": "mallory"}
        async with browser.get(origin / "reports", headers=spoof) as answer:
            assert answer.status == 200
            assert (await answer.json())["user"] == "alice"

    assert stack.upstream.last.all("X-Reddit-User") == ["alice"]
    assert stack.upstream.last.raw_path == "/reports"


async def test_nginx_example_refuses_a_user_the_rules_refuse(
    behind_nginx: tuple[Stack, URL],
) -> None:
    stack, origin = behind_nginx

    async with stack.browser() as browser:
        async with browser.get(
            origin / "oauth2/start", allow_redirects=False
        ) as to_reddit:
            authorize = URL(to_reddit.headers["Location"])
        callback = await stack.consent(browser, authorize, "mallory")
        async with browser.get(callback, allow_redirects=False) as refused_at_login:
            assert refused_at_login.status == 403
        async with browser.get(origin / "reports", allow_redirects=False) as refused:
            assert refused.status == 403

    assert stack.upstream.received == []


# --- the README's walkthrough ----------------------------------------------------

README = EXAMPLES.parent / "README.md"


def readme_block(starting: str) -> str:
    """The README's first ```sh block that contains `starting`."""
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S):
        if starting in block:
            return str(block)
    raise AssertionError(f"no sh block in README.md with {starting!r}")


def test_the_readme_links_only_examples_that_exist() -> None:
    linked = set(re.findall(r"\]\((examples/[^)]+)\)", README.read_text()))

    assert linked
    assert {path for path in linked if not (EXAMPLES.parent / path).is_file()} == set()
    assert "examples/kubernetes/sidecar.yaml" in linked


def test_the_readme_docker_run_makes_a_valid_configuration() -> None:
    block = readme_block("docker run")
    env = {
        name: value.strip('"').replace("$(cat session_secret)", REAL_SESSION_SECRET)
        for name, value in re.findall(r"-e (GATEWAY_\w+)=(\"[^\"]*\"|\S+)", block)
    }

    config = load_config(None, env)

    assert len(env) == 7
    assert config.access.users == frozenset({"alice", "bob"})
    assert "--read-only" in block


def test_the_readme_kubectl_secret_fits_the_sidecar_manifest() -> None:
    block = readme_block("kubectl create secret")
    docs = sidecar_documents()
    name = re.search(r"kubectl create secret generic (\S+)", block)
    literals = dict(re.findall(r"--from-literal=(\w+)=(\S+)", block))

    assert name is not None
    assert name.group(1) == docs["Secret"]["metadata"]["name"]
    assert set(literals) == set(docs["Secret"]["stringData"])
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    env = {item["name"]: item["value"] for item in container(pod, "gateway")["env"]}
    secrets = {
        "GATEWAY_REDDIT_CLIENT_SECRET": literals["GATEWAY_REDDIT_CLIENT_SECRET"],
        "GATEWAY_SESSION_SECRET": REAL_SESSION_SECRET,
    }
    load_config(None, {**env, **secrets})


@pytest.mark.parametrize("path", [DOTENV, SIDECAR], ids=lambda p: p.name)
def test_a_forgotten_placeholder_session_secret_stops_start_up(path: Path) -> None:
    text = path.read_text()
    (placeholder,) = re.findall(r"^\s*GATEWAY_SESSION_SECRET[=:] *(\S+)$", text, re.M)

    assert "FAKE" in placeholder
    with pytest.raises(ConfigError, match="shorter than 32"):
        load_config(None, minimal_env(GATEWAY_SESSION_SECRET=placeholder))


def minimal_env(**overrides: str) -> dict[str, str]:
    return {
        "GATEWAY_SERVER_PUBLIC_URL": "https://app.example.com",
        "GATEWAY_REDDIT_CLIENT_ID": "abc",
        "GATEWAY_REDDIT_CLIENT_SECRET": "def",
        "GATEWAY_REDDIT_USER_AGENT": "web:com.example.x:v1 (by /u/someone)",
        **overrides,
    }
