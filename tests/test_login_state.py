"""Login state: bound to the browser, one cookie per login, short-lived, used once."""

from __future__ import annotations

import re
from http.cookies import SimpleCookie
from typing import Any

import pytest
from aiohttp import web

from gateway.config import Secret
from gateway.login_state import LoginState, LoginStates, StateRejection
from gateway.session import SessionCodec, SessionPayload

SECRET = Secret("n" * 40)
OTHER = Secret("x" * 40)
NOW = 1_700_000_000.0
COOKIE = "_gw"
CALLBACK = "/oauth2/callback"


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def states(clock: Clock) -> LoginStates:
    return LoginStates([SECRET], COOKIE, CALLBACK, True, clock)


def rejection(outcome: LoginState | StateRejection) -> str:
    assert isinstance(outcome, StateRejection), outcome
    return outcome.reason


def test_state_has_at_least_128_random_bits(states: LoginStates) -> None:
    first, _, _ = states.begin("/")
    second, _, _ = states.begin("/")

    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", first.state)
    assert first.state != second.state


def test_cookie_name_is_derived_from_the_state(states: LoginStates) -> None:
    login, name, _ = states.begin("/")

    assert name == states.cookie_name_for(login.state)
    assert re.fullmatch(r"_gw_login_[0-9a-f]{16}", name)
    assert states.is_gateway_cookie(name)
    assert not states.is_gateway_cookie("_gw")
    assert not states.is_gateway_cookie("app_session")


def test_login_finishes_with_its_return_path(states: LoginStates, clock: Clock) -> None:
    login, name, value = states.begin("/dashboard?x=1")
    clock.now += 30

    outcome = states.finish({name: value}, login.state)

    assert outcome == LoginState(login.state, "/dashboard?x=1", NOW)


def test_login_csrf_two_tabs_interleaved_both_finish(states: LoginStates) -> None:
    first, first_name, first_value = states.begin("/first")
    second, second_name, second_value = states.begin("/second")
    jar = {"other": "cookie", first_name: first_value, second_name: second_value}

    first_outcome = states.finish(jar, first.state)
    second_outcome = states.finish(jar, second.state)

    assert first_outcome == first
    assert second_outcome == second


def test_login_csrf_state_from_another_browser_is_refused(
    states: LoginStates,
) -> None:
    attacker, _, _ = states.begin("/")
    victim_jar = {"app_session": "x"}

    assert rejection(states.finish(victim_jar, attacker.state)) == "unknown"


def test_login_csrf_state_from_another_browser_with_its_own_login_is_refused(
    states: LoginStates,
) -> None:
    attacker, _, _ = states.begin("/")
    _, victim_name, victim_value = states.begin("/")

    outcome = states.finish({victim_name: victim_value}, attacker.state)

    assert rejection(outcome) == "mismatch"


def test_login_csrf_wrong_state_with_a_valid_cookie_is_refused(
    states: LoginStates,
) -> None:
    _, name, value = states.begin("/")

    outcome = states.finish({name: value}, "x" * 43)

    assert rejection(outcome) == "mismatch"


def test_login_csrf_cookie_swapped_between_logins_is_refused(
    states: LoginStates,
) -> None:
    _, _, first_value = states.begin("/")
    second, second_name, _ = states.begin("/")

    outcome = states.finish({second_name: first_value}, second.state)

    assert rejection(outcome) == "mismatch"


@pytest.mark.parametrize("state", [None, ""])
def test_login_csrf_missing_state_is_refused(
    states: LoginStates, state: str | None
) -> None:
    _, name, value = states.begin("/")

    assert rejection(states.finish({name: value}, state)) == "missing"


@pytest.mark.parametrize("state", ["é" * 43, "a" * 129, "\ud800"])
def test_login_csrf_state_we_never_issue_is_refused(
    states: LoginStates, state: str
) -> None:
    assert rejection(states.finish({}, state)) == "unknown"


def test_state_replay_is_refused(states: LoginStates) -> None:
    login, name, value = states.begin("/")
    assert states.finish({name: value}, login.state) == login

    assert rejection(states.finish({name: value}, login.state)) == "used"


@pytest.mark.parametrize("elapsed", [600, 601, 3600])
def test_expired_state_is_refused(
    states: LoginStates, clock: Clock, elapsed: int
) -> None:
    login, name, value = states.begin("/")

    clock.now += elapsed

    assert rejection(states.finish({name: value}, login.state)) == "expired"


def test_state_just_before_expiry_finishes(states: LoginStates, clock: Clock) -> None:
    login, name, value = states.begin("/")

    clock.now += 599.5

    assert states.finish({name: value}, login.state) == login


def test_tampered_login_cookie_is_refused(states: LoginStates) -> None:
    login, name, value = states.begin("/")
    middle = len(value) // 2
    tampered = (
        value[:middle] + ("A" if value[middle] != "A" else "B") + value[middle + 1 :]
    )

    outcome = states.finish({name: tampered}, login.state)

    assert outcome == StateRejection("unknown", "tampered or other key")


def test_login_cookie_from_another_key_is_refused(
    states: LoginStates, clock: Clock
) -> None:
    other = LoginStates([OTHER], COOKIE, CALLBACK, True, clock)
    login, name, value = other.begin("/")

    outcome = states.finish({name: value}, login.state)

    assert outcome == StateRejection("unknown", "tampered or other key")


def test_login_cookie_sealed_by_an_old_key_still_finishes(clock: Clock) -> None:
    old = LoginStates([OTHER], COOKIE, CALLBACK, True, clock)
    rotated = LoginStates([SECRET, OTHER], COOKIE, CALLBACK, True, clock)
    login, name, value = old.begin("/")

    assert rotated.finish({name: value}, login.state) == login


def test_cookie_type_confusion_session_cookie_is_not_a_login_state(
    states: LoginStates, clock: Clock
) -> None:
    session_cookie = SessionCodec([SECRET], 3600, clock).dump(
        SessionPayload("someone", "", NOW, NOW + 3600, None, 0.0, None, ())
    )
    state = "s" * 43

    outcome = states.finish({states.cookie_name_for(state): session_cookie}, state)

    assert outcome == StateRejection("unknown", "tampered or other key")


def test_used_states_are_bounded_and_expired_ones_go_first(clock: Clock) -> None:
    states = LoginStates([SECRET], COOKIE, CALLBACK, True, clock, used_cap=2)
    first, first_name, first_value = states.begin("/")
    assert states.finish({first_name: first_value}, first.state) == first
    clock.now += 300
    second, second_name, second_value = states.begin("/")
    assert states.finish({second_name: second_value}, second.state) == second

    clock.now += 300
    third, third_name, third_value = states.begin("/")
    assert states.finish({third_name: third_value}, third.state) == third

    assert len(states._used) == 2
    outcome = states.finish({second_name: second_value}, second.state)
    assert rejection(outcome) == "used"


def set_cookie_line(response: web.StreamResponse) -> Any:
    """The one cookie set on response, parsed back from its Set-Cookie line."""
    [morsel] = response.cookies.values()
    jar: SimpleCookie = SimpleCookie()
    jar.load(morsel.OutputString())
    [parsed] = jar.values()
    return parsed


@pytest.mark.parametrize("secure", [True, False])
def test_login_cookie_attributes(clock: Clock, secure: bool) -> None:
    states = LoginStates([SECRET], COOKIE, CALLBACK, secure, clock)
    _, name, value = states.begin("/")
    response = web.Response()

    states.set_cookie(response, name, value)

    cookie = set_cookie_line(response)
    assert (cookie.key, cookie.value) == (name, value)
    assert cookie["path"] == CALLBACK
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["max-age"] == "600"
    assert bool(cookie["secure"]) is secure


def test_clear_cookie_keeps_the_attributes(states: LoginStates) -> None:
    _, name, _ = states.begin("/")
    response = web.Response()

    states.clear_cookie(response, name)

    cookie = set_cookie_line(response)
    assert (cookie.key, cookie.value) == (name, "")
    assert cookie["max-age"] == "0"
    assert cookie["path"] == CALLBACK
    assert cookie["secure"] is True
