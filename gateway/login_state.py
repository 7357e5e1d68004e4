"""The short-lived encrypted cookie that carries state and return path during login."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from secrets import token_urlsafe
from typing import Literal

from aiohttp import web

from gateway.config import Secret
from gateway.session import Clock, CookieCodec, write_cookie

LOGIN_STATE_PURPOSE = "login-state"
STATE_TTL = 600  # reddit's authorization codes live 10 minutes too
USED_STATES_CAP = 10_000
PENDING_LOGINS = 4  # unfinished logins (tabs) a browser keeps cookies for
STATE_VERSION = 1

_MAX_STATE_CHARS = 128  # ours are 43

RejectionReason = Literal["missing", "unknown", "expired", "mismatch", "used"]


@dataclass(frozen=True, slots=True)
class LoginState:
    state: str = field(repr=False)
    return_to: str
    issued_at: float


@dataclass(frozen=True, slots=True)
class StateRejection:
    """Why a callback's state was refused; detail is a loggable refinement."""

    reason: RejectionReason
    detail: str = ""


class LoginStates:
    """Begins logins (state + cookie) and finishes each at most once per process."""

    def __init__(
        self,
        secrets: Sequence[Secret],
        cookie_name: str,
        callback_path: str,
        secure: bool,
        clock: Clock,
        ttl: int = STATE_TTL,
        used_cap: int = USED_STATES_CAP,
    ) -> None:
        self._codec = CookieCodec(secrets, LOGIN_STATE_PURPOSE, clock)
        self._prefix = f"{cookie_name}_login_"
        self._path = callback_path
        self._secure = secure
        self._clock = clock
        self._ttl = ttl
        self._used_cap = used_cap
        self._used: OrderedDict[str, float] = OrderedDict()  # state -> forget after

    def begin(self, return_to: str) -> tuple[LoginState, str, str]:
        """A login for return_to (judged safe already): state, cookie name, value."""
        login = LoginState(
            state=token_urlsafe(32), return_to=return_to, issued_at=self._clock()
        )

        data = {
            "v": STATE_VERSION,
            "s": login.state,
            "r": return_to,
            "t": login.issued_at,
        }
        value = self._codec.seal(json.dumps(data, separators=(",", ":")).encode())
        return login, self.cookie_name_for(login.state), value

    def cookie_name_for(self, state: str) -> str:
        # SECURITY: login CSRF across tabs: one cookie per login, so starting a
        # second login never overwrites the state of the first.
        digest = hashlib.sha256(state.encode("utf-8", "surrogatepass")).hexdigest()
        return self._prefix + digest[:16]

    def is_gateway_cookie(self, name: str) -> bool:
        """True for this gateway's login cookies (never forwarded upstream)."""
        return name.startswith(self._prefix)

    def set_cookie(self, response: web.StreamResponse, name: str, value: str) -> None:
        write_cookie(
            response,
            name,
            value,
            path=self._path,
            max_age=self._ttl,
            secure=self._secure,
        )

    def clear_cookie(self, response: web.StreamResponse, name: str) -> None:
        write_cookie(
            response, name, "", path=self._path, max_age=0, secure=self._secure
        )

    def finish(
        self, request_cookies: Mapping[str, str], state: str | None
    ) -> LoginState | StateRejection:
        """The login this browser began with state, once; else why not.

        No network call: the caller redeems the code only after this succeeds.
        """
        if not state:
            return StateRejection("missing")
        if len(state) > _MAX_STATE_CHARS or not state.isascii():
            return StateRejection("unknown", "not a state this gateway issues")

        value = request_cookies.get(self.cookie_name_for(state))
        if value is None:
            # SECURITY: login CSRF: a state is good only in the browser that
            # holds its cookie; "mismatch" when this browser began other logins.
            begun_here = any(map(self.is_gateway_cookie, request_cookies))
            reason: RejectionReason = "mismatch" if begun_here else "unknown"
            return StateRejection(reason, "no login cookie for this state")

        data = self._codec.open(value, self._ttl)
        if data is None:
            detail = self._codec.refusal_reason(value, self._ttl)
            return StateRejection(
                "expired" if detail == "expired" else "unknown", detail
            )
        login = _decode(data)
        if login is None:
            return StateRejection("unknown", "malformed")

        # SECURITY: login CSRF: compared in constant time.
        if not hmac.compare_digest(login.state.encode(), state.encode()):
            return StateRejection("mismatch", "login cookie holds another state")
        now = self._clock()
        if login.issued_at + self._ttl <= now:
            return StateRejection("expired")

        # SECURITY: state replay: each state finishes one login per process.
        if not self._consume(state, now):
            return StateRejection("used")
        return login

    def crowding(self, request_cookies: Mapping[str, str]) -> list[str]:
        """Names of login cookies to clear so that at most PENDING_LOGINS remain.

        Every unfinished login leaves a cookie that the browser sends to the
        callback; enough of them make the request too large to be served at all.
        """
        # SECURITY: sign-in denial by login-cookie pile-up: keep the newest few.
        issued: list[tuple[float, str]] = []
        for name, value in request_cookies.items():
            if not self.is_gateway_cookie(name):
                continue
            data = self._codec.open(value, self._ttl)
            login = None if data is None else _decode(data)
            issued.append((login.issued_at if login else float("-inf"), name))
        issued.sort(reverse=True)
        return [name for _, name in issued[PENDING_LOGINS:]]

    def _consume(self, state: str, now: float) -> bool:
        """Record state as used; False if it already was. Bounded: expired go first."""
        used = self._used
        while used and next(iter(used.values())) <= now:
            used.popitem(last=False)
        if state in used:
            return False

        if len(used) >= self._used_cap:
            used.popitem(last=False)
        used[state] = now + self._ttl
        return True


def _decode(data: bytes) -> LoginState | None:
    try:
        fields = json.loads(data)
        login = LoginState(
            state=fields["s"], return_to=fields["r"], issued_at=fields["t"]
        )
        version = fields["v"]
    except (ValueError, TypeError, KeyError):
        return None

    well_typed = (
        isinstance(login.state, str)
        and isinstance(login.return_to, str)
        and isinstance(login.issued_at, int | float)
    )
    return login if well_typed and version == STATE_VERSION else None
