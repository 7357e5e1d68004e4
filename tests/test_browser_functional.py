"""The demo in a real headless Chromium, clicked through the way a new user would."""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from gateway.demo import DEMO_CLIENT_ID

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
START_TIMEOUT = 20.0
USERNAME = "Browser_Tester"
CONSENT_HEADING = "An app wants to connect to your account"


class DemoProcess:
    """`reddit-gateway demo` as a child process, its output collected by a thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://localhost:{port}/"
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", "--port", str(port)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_until_ready(self) -> bool:
        """True once the demo says where to open it; False if it exited first."""
        self.ready.wait(START_TIMEOUT)
        return f"open {self.url} " in self.output

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        assert self.process.stdout is not None
        self.process.stdout.close()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if f"open {self.url} " in line:
                self.ready.set()
        self.ready.set()  # the demo exited: wake the waiter


def bindable(port: int) -> bool:
    """True if nothing listens on port, on IPv4 or (where there is one) IPv6."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as sock:
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return False
    return True


def free_port_base() -> int:
    """A port N such that N, N+1 and N+2 are all free."""
    for _ in range(100):
        base = random.randint(20000, 31997)  # below the ephemeral ports
        if all(bindable(base + offset) for offset in range(3)):
            return base
    raise RuntimeError("no three consecutive free ports in 20000-60003")


def require_chromium() -> None:
    if shutil.which(CHROMIUM) is not None:
        return
    message = (
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install "
        "chromium); Playwright drives it directly and downloads no browser"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoProcess]:
    # Another process may take a port between our check and the demo's bind.
    for _ in range(3):
        process = DemoProcess(free_port_base())
        try:
            if process.wait_until_ready():
                break
        except BaseException:
            process.stop()
            raise
        process.stop()
        if "address already in use" not in process.output.lower():
            pytest.fail(f"the demo did not start:\n{process.output}")
    else:
        pytest.fail(f"the demo found no free ports:\n{process.output}")

    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser profile: no cookies, one tab."""
    context = browser.new_context(viewport={"width": 1024, "height": 768})
    context.set_default_timeout(5000)
    try:
        page = context.new_page()
        yield page
        page.close()
    finally:
        context.close()


@pytest.fixture(scope="module")
def screenshots() -> Path:
    folder = Path(os.environ.get("GATEWAY_SCREENSHOTS") or REPO / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def expect_consent_page(page: Page, demo: DemoProcess) -> None:
    authorize = f"http://localhost:{demo.port + 1}/api/v1/authorize?"
    expect(page).to_have_url(re.compile(re.escape(authorize)))
    expect(page.get_by_role("heading", level=1)).to_have_text(CONSENT_HEADING)
    expect(page.locator("main")).to_contain_text(f"The app {DEMO_CLIENT_ID} asks")


def expect_app_page(page: Page, demo: DemoProcess, username: str) -> None:
    # reddit ends its redirect to the callback with "#_"; the gateway's own
    # redirect carries an empty fragment so that the app never sees "#_".
    expect(page).to_have_url(re.compile(re.escape(demo.url) + "#?$"))
    expect(page.locator("#user")).to_have_text(username)


def sign_in(page: Page, demo: DemoProcess, username: str) -> None:
    page.goto(demo.url)
    expect_consent_page(page, demo)

    page.get_by_label("Username").fill(username)
    page.get_by_role("button", name="Allow").click()

    expect_app_page(page, demo, username)


def fetch_whoami(page: Page, demo: DemoProcess) -> dict[str, Any]:
    """What the page's own script gets from fetch(), as a plain fetch() sends it."""
    result: dict[str, Any] = page.evaluate(
        """async (url) => {
            const response = await fetch(url);
            return {status: response.status, redirected: response.redirected,
                    body: await response.json()};
        }""",
        f"{demo.url}api/whoami",
    )
    return result


def test_sign_in_with_the_consent_page_then_sign_out(
    demo: DemoProcess, page: Page, screenshots: Path
) -> None:
    page.goto(demo.url)
    expect_consent_page(page, demo)
    page.screenshot(path=screenshots / "1-consent.png", full_page=True)

    page.get_by_label("Username").fill(USERNAME)
    page.get_by_role("button", name="Allow").click()

    expect_app_page(page, demo, USERNAME)
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Hello, {USERNAME}")
    header_row = page.locator("tr").filter(
        has=page.locator("th", has_text=re.compile(r"^X-Reddit-User$", re.I))
    )
    expect(header_row.locator("td")).to_have_text(USERNAME)
    page.screenshot(path=screenshots / "2-signed-in.png", full_page=True)

    page.get_by_role("button", name="Sign out").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("You are signed out")
    expect(page.get_by_role("link", name="Sign in again")).to_be_visible()
    page.screenshot(path=screenshots / "3-signed-out.png", full_page=True)

    page.goto(demo.url)
    expect_consent_page(page, demo)


def test_declining_shows_a_page_that_offers_to_try_again(
    demo: DemoProcess, page: Page, screenshots: Path
) -> None:
    page.goto(demo.url)
    expect_consent_page(page, demo)

    callback = f"{demo.url}oauth2/callback"
    with page.expect_response(lambda r: r.url.startswith(callback)) as answer:
        page.get_by_role("button", name="Decline").click()

    assert answer.value.status == 403
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign-in cancelled")
    expect(page.locator("main")).to_contain_text("You declined to share")
    # No loop: the page stays put until the user chooses to try again.
    assert page.locator("meta[http-equiv]").count() == 0
    page.wait_for_timeout(500)
    expect(page).to_have_url(re.compile(re.escape(callback)))
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign-in cancelled")
    page.screenshot(path=screenshots / "4-declined.png", full_page=True)

    page.get_by_role("link", name="Try again").click()

    expect_consent_page(page, demo)


def test_a_script_fetch_gets_401_json_until_the_user_signs_in(
    demo: DemoProcess, page: Page
) -> None:
    # Gateway pages forbid scripts any connection (CSP default-src 'none'), so
    # the fetches run from documents of the same origin that allow them.
    page.goto(f"{demo.url}oauth2/ping")

    stranger = fetch_whoami(page, demo)

    assert stranger["status"] == 401
    assert not stranger["redirected"]
    assert stranger["body"]["error"] == "unauthorized"

    sign_in(page, demo, USERNAME)
    signed_in = fetch_whoami(page, demo)

    assert signed_in == {"status": 200, "redirected": False, "body": {"user": USERNAME}}

    other_tab = page.context.new_page()
    other_tab.goto(demo.url)
    other_tab.get_by_role("button", name="Sign out").click()
    expect(other_tab.get_by_role("heading", level=1)).to_have_text("You are signed out")
    other_tab.close()
    signed_out = fetch_whoami(page, demo)

    assert signed_out["status"] == 401
    assert not signed_out["redirected"]
    assert signed_out["body"]["error"] == "unauthorized"


def test_the_moderators_corner_refuses_others_and_admits_moderators(
    demo: DemoProcess, page: Page, screenshots: Path
) -> None:
    sign_in(page, demo, "Not_A_Mod")
    with page.expect_response(lambda r: r.url.endswith("/mods/")) as answer:
        page.get_by_role("link", name="the moderators' corner").click()

    assert answer.value.status == 403
    expect(page.locator("main")).to_contain_text("u/Not_A_Mod")
    expect(page.locator("main")).to_contain_text("r/demo")
    expect(page.get_by_role("link", name="Switch account")).to_be_visible()
    page.screenshot(path=screenshots / "5-refused.png", full_page=True)

    page.get_by_role("link", name="Switch account").click()
    expect_consent_page(page, demo)
    page.get_by_label("Username").fill("Demo_Mod")
    page.locator("summary").click()
    page.get_by_label("Moderator of").fill("demo")
    page.get_by_role("button", name="Allow").click()
    page.goto(f"{demo.url}mods/")

    expect(page.locator("#user")).to_have_text("Demo_Mod")
