"""Every page the gateway shows people, rendered through a real gateway by a real
headless Chromium at desktop and phone widths, light and dark, and photographed
into screenshots/pages/ for a person to look at."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    Response,
    async_playwright,
    expect,
)

from gateway.pages import PAGE_HEADERS
from tests.conftest import Stack, StackFactory, free_port
from tests.test_browser_functional import CHROMIUM, CHROMIUM_ARGS, require_chromium

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
REPO = Path(__file__).resolve().parent.parent
# A well-formed redis session handle ("v1.<sid>.<key>"), good enough to make the
# gateway ask redis about it.
REDIS_HANDLE = "v1." + "A" * 22 + "." + "A" * 42 + "E"

Produce = Callable[[Stack, Page], Awaitable[Response | None]]


@dataclass(frozen=True)
class Scene:
    """How to bring a page up, and what it must show."""

    produce: Produce
    status: int
    heading: str
    next_step: str  # the first link or button, the one that says what to do next
    says: str  # words of the explanation
    settings: dict[str, str] = field(default_factory=dict)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def screenshots() -> Path:
    root = Path(os.environ.get("GATEWAY_SCREENSHOTS") or REPO / "screenshots")
    folder = root / "pages"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def consent(
    page: Page, stack: Stack, username: str, *, allow: bool = True
) -> Response:
    """Start a sign-in, answer the mock reddit's consent page; the callback's answer."""
    await page.goto(str(stack.url / "oauth2/start" % {"rd": "/reports"}))
    await page.get_by_label("Username").fill(username)
    callback = str(stack.url / "oauth2/callback")
    async with page.expect_response(lambda r: r.url.startswith(callback)) as answer:
        await page.get_by_role("button", name="Allow" if allow else "Decline").click()
    await page.wait_for_load_state()
    return await answer.value


async def sign_in_page(stack: Stack, page: Page) -> Response | None:
    return await page.goto(str(stack.url / "reports" % {"week": "12"}))


async def signed_out(stack: Stack, page: Page) -> Response | None:
    await consent(page, stack, "alice")
    return await page.goto(str(stack.url / "oauth2/sign_out"))


async def refused(stack: Stack, page: Page) -> Response | None:
    return await consent(page, stack, "mallory")


async def declined(stack: Stack, page: Page) -> Response | None:
    return await consent(page, stack, "alice", allow=False)


async def stale_link(stack: Stack, page: Page) -> Response | None:
    query = {"state": "not-a-state-we-issued", "code": "x"}
    return await page.goto(str(stack.url / "oauth2/callback" % query))


async def expired_code(stack: Stack, page: Page) -> Response | None:
    stack.reddit.fail_next(
        "/api/v1/access_token", status=200, body={"error": "invalid_grant"}
    )
    return await consent(page, stack, "alice")


async def no_account(stack: Stack, page: Page) -> Response | None:
    stack.reddit.fail_next("/api/v1/me", status=200, body={"features": {}})
    return await consent(page, stack, "alice")


async def misconfigured(stack: Stack, page: Page) -> Response | None:
    body = {"message": "Unauthorized", "error": 401}
    stack.reddit.fail_next("/api/v1/access_token", status=401, body=body)
    return await consent(page, stack, "alice")


async def reddit_down(stack: Stack, page: Page) -> Response | None:
    stack.reddit.fail_next("/api/v1/access_token", status=503, body="down")
    return await consent(page, stack, "alice")


async def store_down(stack: Stack, page: Page) -> Response | None:
    cookie = {"name": "_reddit_gateway", "value": REDIS_HANDLE, "url": str(stack.url)}
    await page.context.add_cookies([cookie])  # type: ignore[list-item]
    return await page.goto(str(stack.url / "reports"))


SCENES = {
    "sign-in": Scene(
        sign_in_page,
        200,
        "Sign in with reddit",
        "Sign in with reddit",
        "reddit will ask",
        {"server_sign_in_page": "true"},
    ),
    "signed-out": Scene(
        signed_out, 200, "You are signed out", "Sign in again", "access to your"
    ),
    "refused": Scene(
        refused,
        403,
        "You can't open this page",
        "Sign out",
        "signed in as u/mallory",
        {"access_users": "alice"},
    ),
    "declined": Scene(
        declined, 403, "Sign-in cancelled", "Try again", "You declined to share"
    ),
    "stale-link": Scene(
        stale_link,
        400,
        "This sign-in link can't be used",
        "Sign in with reddit",
        "does not belong to this browser",
    ),
    "expired-code": Scene(
        expired_code, 400, "This sign-in expired", "Try again", "Start again"
    ),
    "no-account": Scene(
        no_account, 403, "This account can't sign in", "Try again", "which account"
    ),
    "misconfigured": Scene(
        misconfigured,
        502,
        "Sign-in is misconfigured",
        "Try again",
        "reddit.client_secret",
    ),
    "reddit-down": Scene(
        reddit_down, 502, "reddit is not answering", "Try again", "Wait a moment"
    ),
    "store-down": Scene(
        store_down,
        503,
        "Sign-in is unavailable right now",
        "Try again",
        "session store is not answering",
        {"session_store": "redis"},
    ),
}


@pytest.mark.parametrize("name", list(SCENES))
async def test_each_page_renders_cleanly_at_desktop_and_phone_widths(
    make_stack: StackFactory, browser: Browser, screenshots: Path, name: str
) -> None:
    scene = SCENES[name]
    settings = dict(scene.settings)
    if settings.get("session_store") == "redis":
        settings["session_redis_url"] = f"redis://127.0.0.1:{free_port()}/0"
    stack = await make_stack(**settings)
    context = await browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    context.set_default_timeout(5000)
    page = await context.new_page()
    problems: list[str] = []

    def note_error(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    page.on("console", note_error)

    response = await scene.produce(stack, page)

    assert response is not None
    assert response.status == scene.status
    headers = await response.all_headers()
    assert headers["content-security-policy"] == PAGE_HEADERS["Content-Security-Policy"]
    assert headers["x-frame-options"] == "DENY"
    await expect_page_basics(page, scene)
    # The stylesheet ran under the CSP (its hash matches): the card is styled.
    main = page.locator("main")
    assert await main.evaluate("m => getComputedStyle(m).borderTopLeftRadius") == (
        "12px"
    )

    await page.keyboard.press("Tab")
    focused = page.locator(":focus")
    await expect(focused).to_have_accessible_name(scene.next_step)
    outline = await focused.evaluate("e => getComputedStyle(e).outlineStyle")
    assert outline == "solid", "the focused action has no visible focus ring"
    await page.screenshot(path=screenshots / f"{name}-desktop.png", full_page=True)

    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await focused.blur()  # the phone pictures show the page at rest
    overflow = "() => document.documentElement.scrollWidth > innerWidth"
    assert not await page.evaluate(overflow), "the page scrolls sideways on a phone"
    await page.screenshot(path=screenshots / f"{name}-phone.png", full_page=True)
    await page.emulate_media(color_scheme="dark")
    await page.screenshot(path=screenshots / f"{name}-phone-dark.png", full_page=True)

    assert not [p for p in problems if "Content Security Policy" in p], problems
    await context.close()


async def expect_page_basics(page: Page, scene: Scene) -> None:
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    viewport = page.locator('meta[name="viewport"]')
    await expect(viewport).to_have_attribute(
        "content", "width=device-width, initial-scale=1"
    )
    await expect(page.get_by_role("heading", level=1)).to_have_text(scene.heading)
    await expect(page).to_have_title(scene.heading)
    await expect(page.locator("main")).to_contain_text(scene.says)
    step = page.get_by_role("link", name=scene.next_step, exact=True).or_(
        page.get_by_role("button", name=scene.next_step, exact=True)
    )
    await expect(step.first).to_be_visible()
    assert await page.locator("script, img, link, iframe").count() == 0


async def test_the_sign_in_page_button_goes_to_reddit_and_back_to_the_page(
    make_stack: StackFactory, browser: Browser
) -> None:
    stack = await make_stack(server_sign_in_page="true")
    context = await browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    context.set_default_timeout(5000)
    page = await context.new_page()
    await page.goto(str(stack.url / "reports" % {"week": "12"}))

    button = page.get_by_role("link", name="Sign in with reddit")
    await expect(button).to_have_attribute(
        "href", "/oauth2/start?rd=%2Freports%3Fweek%3D12"
    )
    await button.click()
    await page.get_by_label("Username").fill("alice")
    await page.get_by_role("button", name="Allow").click()

    await expect(page).to_have_url(str(stack.url / "reports" % {"week": "12"}) + "#")
    assert "/reports?week=12" in [got.raw_path for got in stack.upstream.received]
    await context.close()
