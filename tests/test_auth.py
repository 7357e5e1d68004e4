"""Which requests count as a browser page load, and what a refusal looks like."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.auth import is_navigation, refusal
from gateway.policy import Decision


@pytest.mark.parametrize(
    ("method", "headers", "navigation"),
    [
        ("GET", {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}, True),
        ("GET", {"Sec-Fetch-Mode": "navigate"}, True),
        ("HEAD", {"Accept": "text/html"}, True),
        ("GET", {"Sec-Fetch-Mode": "navigate", "X-Requested-With": "fetch"}, False),
        ("GET", {"Accept": "text/html", "Sec-Fetch-Mode": "cors"}, False),
        ("GET", {"Accept": "text/html", "Sec-Fetch-Mode": "no-cors"}, False),
        ("GET", {"Accept": "*/*"}, False),
        ("GET", {}, False),
        ("GET", {"Accept": "application/json"}, False),
        ("POST", {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}, False),
        ("PUT", {"Accept": "text/html"}, False),
        ("OPTIONS", {"Accept": "text/html"}, False),
        ("GET", {"Accept": "text/html", "Upgrade": "websocket"}, False),
    ],
)
def test_is_navigation(method: str, headers: dict[str, str], navigation: bool) -> None:
    request = make_mocked_request(method, "/x", headers=headers)

    assert is_navigation(request) is navigation


def test_refusal_page_names_the_user_and_escapes_it() -> None:
    request = make_mocked_request("GET", "/", headers={"Accept": "text/html"})
    decision = Decision(False, "access.users", "Only listed accounts.")

    response = refusal(request, "<b>bob</b>", decision)

    assert response.status == 403
    assert response.text is not None
    assert "u/&lt;b&gt;bob&lt;/b&gt;" in response.text
    assert 'action="/oauth2/sign_out"' in response.text
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_refusal_for_api_clients_is_json() -> None:
    request = make_mocked_request("GET", "/", headers={"Accept": "application/json"})

    response = refusal(request, "bob", Decision(False, "access.users", "No."))

    assert response.status == 403
    assert response.content_type == "application/json"
