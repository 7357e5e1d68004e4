"""Tables for which of the app's links to itself are pointed at public_url."""

from __future__ import annotations

import pytest
from yarl import URL

from gateway.redirect_rewrite import RedirectRewriter

PUBLIC = URL("https://app.example.com")
UPSTREAM = URL("http://127.0.0.1:8080")


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        # the upstream's own origin: rewritten, the rest byte for byte
        ("http://127.0.0.1:8080/next", "https://app.example.com/next"),
        (
            "http://127.0.0.1:8080/a%2Fb?q=1#top",
            "https://app.example.com/a%2Fb?q=1#top",
        ),
        ("http://127.0.0.1:8080", "https://app.example.com"),
        ("http://127.0.0.1:8080?x", "https://app.example.com?x"),
        ("HTTP://127.0.0.1:8080/x", "https://app.example.com/x"),
        ("http://127.0.0.1:08080/x", "https://app.example.com/x"),
        # relative: the browser resolves it against public_url already
        ("/next", "/next"),
        ("next?x=1", "next?x=1"),
        ("//127.0.0.1:8080/x", "//127.0.0.1:8080/x"),
        ("", ""),
        # other origins: the app's business
        ("https://127.0.0.1:8080/x", "https://127.0.0.1:8080/x"),
        ("http://127.0.0.1:8081/x", "http://127.0.0.1:8081/x"),
        ("http://127.0.0.1/x", "http://127.0.0.1/x"),
        ("http://localhost:8080/x", "http://localhost:8080/x"),
        ("https://www.reddit.com/login", "https://www.reddit.com/login"),
        ("mailto:a@example.com", "mailto:a@example.com"),
    ],
)
def test_location_on_the_upstream_origin_points_at_public_url(
    location: str, expected: str
) -> None:
    rewriter = RedirectRewriter(UPSTREAM, PUBLIC)

    assert rewriter.rewrite("location", location) == expected
    assert rewriter.rewrite("content-location", location) == expected


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1:8080@evil.example/x",
        "http://user@127.0.0.1:8080/x",
        "http://127.0.0.1:8080.evil.example/x",
        "http://127.0.0.1:8080:80/x",
        "http://127.0.0.1:80800/x",
    ],
)
def test_open_redirect_lookalike_authority_untouched(location: str) -> None:
    rewriter = RedirectRewriter(UPSTREAM, PUBLIC)

    assert rewriter.rewrite("location", location) == location


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        (
            "http://127.0.0.1:8080\\evil.example/x",
            "https://app.example.com\\evil.example/x",
        ),
        (
            "http://127.0.0.1:8080#@evil.example",
            "https://app.example.com#@evil.example",
        ),
    ],
)
def test_open_redirect_rest_never_extends_the_new_authority(
    location: str, expected: str
) -> None:
    rewriter = RedirectRewriter(UPSTREAM, PUBLIC)

    rewritten = rewriter.rewrite("location", location)

    assert rewritten == expected
    origin = str(PUBLIC)
    assert rewritten[len(origin)] in "/\\?#"  # a browser's host ends right there


@pytest.mark.parametrize(
    ("upstream", "location", "expected"),
    [
        (
            "http://app:8080/base",
            "http://app:8080/base/x?y",
            "https://app.example.com/x?y",
        ),
        (
            "http://app:8080/base/",
            "http://app:8080/base/x",
            "https://app.example.com/x",
        ),
        ("http://app:8080/base", "http://app:8080/base", "https://app.example.com/"),
        (
            "http://app:8080/base",
            "http://app:8080/base?q",
            "https://app.example.com/?q",
        ),
        (
            "http://app:8080/base",
            "http://app:8080/basement",
            "http://app:8080/basement",
        ),
        ("http://app:8080/base", "http://app:8080/other", "http://app:8080/other"),
        ("http://APP:80", "http://app/x", "https://app.example.com/x"),
        ("https://app", "https://app:443/x", "https://app.example.com/x"),
        ("http://[::1]:9000", "http://[::1]:9000/x", "https://app.example.com/x"),
        ("http://[::1]:9000", "http://[::2]:9000/x", "http://[::2]:9000/x"),
        ("http://localhost", "http://localhost/x", "https://app.example.com/x"),
    ],
)
def test_upstream_base_path_and_ports(
    upstream: str, location: str, expected: str
) -> None:
    rewriter = RedirectRewriter(URL(upstream), PUBLIC)

    assert rewriter.rewrite("location", location) == expected


@pytest.mark.parametrize(
    ("refresh", "expected"),
    [
        ("5; url=http://127.0.0.1:8080/x", "5; url=https://app.example.com/x"),
        ("0;URL='http://127.0.0.1:8080/x'", "0;URL='https://app.example.com/x'"),
        ('3, url="http://127.0.0.1:8080/x" ', '3, url="https://app.example.com/x" '),
        ("1.5; http://127.0.0.1:8080/x", "1.5; https://app.example.com/x"),
        ("5; url=/x", "5; url=/x"),
        ("5; url=https://elsewhere.example/x", "5; url=https://elsewhere.example/x"),
        ("5", "5"),
        ("soon; url=http://127.0.0.1:8080/x", "soon; url=http://127.0.0.1:8080/x"),
    ],
)
def test_refresh_url_on_the_upstream_origin_points_at_public_url(
    refresh: str, expected: str
) -> None:
    rewriter = RedirectRewriter(UPSTREAM, PUBLIC)

    assert rewriter.rewrite("refresh", refresh) == expected


def test_public_url_with_a_port_is_kept() -> None:
    rewriter = RedirectRewriter(UPSTREAM, URL("http://127.0.0.1:4180"))

    assert rewriter.rewrite("location", "http://127.0.0.1:8080/x") == (
        "http://127.0.0.1:4180/x"
    )
