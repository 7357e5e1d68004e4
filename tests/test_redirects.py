"""Return targets: whatever a browser would resolve off the origin becomes "/"."""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urljoin, urlsplit

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from yarl import URL

from gateway.redirects import MAX_TARGET_LENGTH, return_target

PUBLIC = URL("https://app.example.com")
DEMO = URL("http://localhost:65010")


def browser_resolve(ref: str, base: URL) -> SplitResult:
    """A small model of how a browser resolves a Location header (WHATWG URL)."""
    ref = ref.strip("".join(map(chr, range(0x21))))
    ref = re.sub("[\t\r\n]", "", ref).replace("\\", "/")
    return urlsplit(urljoin(str(base), ref))


def origin(url: SplitResult) -> tuple[str, str | None, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.hostname, url.port or default


def assert_stays_on_origin(target: str, base: URL) -> None:
    assert target.startswith("/")
    assert not target.startswith("//")
    assert origin(browser_resolve(target, base)) == origin(urlsplit(str(base)))


@pytest.mark.parametrize(
    "raw",
    [
        "//evil.com",
        "///evil.com",
        "////evil.com",
        "/\\evil.com",
        "\\/evil.com",
        "\\\\evil.com",
        "/\\/evil.com",
        "/\t/evil.com",
        "/%09/evil.com",
        "/\n/evil.com",
        "/\r/evil.com",
        "/\r\n/evil.com",
        "\t//evil.com",
        " //evil.com",
        "\x00//evil.com",
        "//evil.com\x00",
        "https://evil.com",
        "https://evil.com/",
        "http://app.example.com",
        "http://app.example.com/dashboard",
        "https://app.example.com:444/",
        "https://app.example.com.evil.com/",
        "https://app.example.com./",
        "https://app.example.com@evil.com/",
        "https://user:pass@app.example.com/",
        "https://evil.com#@app.example.com",
        "https://evil.com?@app.example.com",
        "https://evil.com\\@app.example.com",
        "https://app.example.com\\@evil.com",
        "https://app%2Eexample.com/",
        "https:evil.com",
        "https:/evil.com",
        "https:///evil.com",
        "https:\\\\evil.com",
        "//app.example.com/x",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "java\tscript:alert(1)",
        " javascript:alert(1)",
        "data:text/html,x",
        "vbscript:msgbox(1)",
        "ftp://app.example.com/",
        "evil.com",
        "evil.com:443/x",
        "./evil.com",
        "../evil.com",
        "?x=1",
        "#top",
        "",
        " ",
        None,
        "/./\\evil",
        "/.//evil.com",
        "/../..//evil.com",
        "/%2e%2e//evil.com",
        "/%2E/%2e.//evil.com",
        "/a/..//evil.com",
        "/%2F%2Fevil.com",
        "/%2fevil.com",
        "/%5Cevil.com",
        "/x/%5c/y",
        "/ok?next=https://evil.com/\\x",
        "/x%00",
        "/x%0d%0aSet-Cookie:a=b",
        "/x\x7f",
        "/x\x00y",
        "/x#\ny",
        "/x#\\",
        "/" + "a" * MAX_TARGET_LENGTH,
        "/café",
        "/\uff45vil.com",  # fullwidth e
        "/x\u2028y",
        "https://\u0430pp.example.com/",  # Cyrillic a
    ],
)
def test_open_redirect_is_refused(raw: str | None) -> None:
    assert return_target(raw, PUBLIC) == "/"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "/"),
        ("/dashboard", "/dashboard"),
        ("/dashboard?x=1&y=%2F", "/dashboard?x=1&y=%2F"),
        ("/ok?next=//evil", "/ok?next=//evil"),
        ("/a?b=c?d", "/a?b=c?d"),
        ("/x#frag", "/x"),
        ("/x?y=1#frag", "/x?y=1"),
        ("  /padded\t ", "/padded"),
        ("/a b?c d", "/a%20b?c%20d"),
        ('/q?"<x>`', "/q?%22%3Cx%3E%60"),
        ("/@evil.com", "/@evil.com"),
        ("/evil.com:443", "/evil.com:443"),
        ("/a//b", "/a//b"),
        ("/a/./b/../c", "/a/c"),
        ("/a/../../evil", "/evil"),
        ("/a/%2e%2E/b", "/b"),
        ("/a/.", "/a/"),
        ("/a/..", "/"),
        ("/%41", "/%41"),
        ("/" + "a" * (MAX_TARGET_LENGTH - 1), "/" + "a" * (MAX_TARGET_LENGTH - 1)),
        ("https://app.example.com", "/"),
        ("https://app.example.com/x?y", "/x?y"),
        ("https://app.example.com?q=1", "/?q=1"),
        ("https://app.example.com:443/x", "/x"),
        ("HTTPS://APP.EXAMPLE.COM/x", "/x"),
        ("https://app.example.com/.//evil.com", "/"),
        ("https://app.example.com?@evil.com", "/?@evil.com"),
    ],
)
def test_same_origin_targets_are_kept(raw: str, expected: str) -> None:
    assert return_target(raw, PUBLIC) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://localhost:65010/x", "/x"),
        ("http://LOCALHOST:65010/x?y", "/x?y"),
        ("http://localhost/x", "/"),
        ("http://localhost:80/x", "/"),
        ("http://localhost:65011/x", "/"),
        ("https://localhost:65010/x", "/"),
        ("//localhost:65010/x", "/"),
    ],
)
def test_open_redirect_to_another_port_is_refused(raw: str, expected: str) -> None:
    assert return_target(raw, DEMO) == expected


def test_open_redirect_to_another_host_is_refused_for_an_ipv6_origin() -> None:
    public = URL("http://[::1]:8080")

    assert return_target("http://[::1]:8080/x", public) == "/x"
    assert return_target("http://[::2]:8080/x", public) == "/"


HOSTILE_PIECES = [
    *"/\\.:@?#% \t\n\r\x00",
    "%09",
    "%2e",
    "%2f",
    "%5c",
    "//",
    "evil.com",
    "app.example.com",
    "https:",
    "http:",
    "javascript:",
    "a",
    "b",
    "é",
]


@given(st.text())
@example("/\t/evil.com")
@example("/.//evil.com")
def test_open_redirect_never_leaves_the_origin_for_any_text(raw: str) -> None:
    assert_open_redirect_impossible(raw)


HOSTILE_TEXT = st.tuples(
    st.sampled_from(
        ["", "/", "https://app.example.com", "HTTPS://app.example.com:443"]
    ),
    st.lists(st.sampled_from(HOSTILE_PIECES), max_size=12).map("".join),
).map("".join)


@given(HOSTILE_TEXT)
def test_open_redirect_never_leaves_the_origin_for_hostile_text(raw: str) -> None:
    assert_open_redirect_impossible(raw)


def assert_open_redirect_impossible(raw: str) -> None:
    target = return_target(raw, PUBLIC)

    assert_stays_on_origin(target, PUBLIC)
    assert return_target(target, PUBLIC) == target
    if target != "/":
        assert origin(browser_resolve(raw, PUBLIC)) == origin(urlsplit(str(PUBLIC)))
