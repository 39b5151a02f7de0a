"""Console sign-in: signed session cookies, CSRF tokens, a sign-in throttle, security headers.

A session cookie is `sid.issued.who.scope.workspace.signature`: who signed in (the credential's
name), the workspace that credential may act in (`*`: the admin key, every workspace) and the
workspace the session acts in now. It is signed with HMAC-SHA256 under a key derived from the
deployment's console secret (SMSBOT_API_KEY, see signing_secret). Nothing is stored server-side,
so every `smsbot serve` process behind a load balancer accepts it, and changing the key ends
every session at once. Sign-out clears the cookie and forgets the sid in this process; a copy of
the cookie kept elsewhere lapses after SESSION_LIFETIME at the latest. Choosing another
workspace (the admin only) re-signs the cookie with the same sid, so its CSRF token, its
lifetime and a sign-out stay those of the session.

Each form carries a CSRF token derived from the session (the sign-in form: a random value also
set as a cookie), and the cookie is SameSite=Strict, so another site can neither read a page
nor post a form as the operator.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable

from aiohttp import web

from smsbot.app.server.keys import BOT
from smsbot.config import Secret, Settings
from smsbot.workspaces import DEFAULT, NAME

SESSION_COOKIE = "smsbot_console"
SIGNIN_COOKIE = "smsbot_console_signin"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_LIFETIME = 12 * 3600  # seconds; sign in again after a working day
SIGNIN_FAILURES = 10  # wrong keys from one address within SIGNIN_WINDOW, then 429
SIGNIN_WINDOW = 300.0

# No inline script or style anywhere: scripts, styles and fetches come from this origin only.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


ALL = "*"  # the scope of an admin session: every workspace


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    """A signed-in operator: who, where they may act, where they act now, their forms' CSRF token.

    `scope` is the credential's workspace, None for the admin key (every workspace); `workspace`
    is the one the session acts in: the scope itself, or the admin's choice (`default` at first).
    """

    sid: str
    issued: int
    who: str
    csrf: str
    scope: str | None = None
    workspace: str = DEFAULT

    @property
    def is_admin(self) -> bool:
        """Whether this session may act in every workspace (it signed in with SMSBOT_API_KEY)."""
        return self.scope is None


def signing_secret(settings: Settings) -> Secret | None:
    """The secret console sessions are signed under: SMSBOT_API_KEY; None: the console is off."""
    return settings.api_key


def _key(credential: Secret) -> bytes:
    # A key of its own, so a session cookie is never a MAC under the bearer token itself.
    return hashlib.sha256(b"smsbot console session\x00" + credential.get().encode()).digest()


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _encode(who: str) -> str:
    return base64.urlsafe_b64encode(who.encode()).decode().rstrip("=")


def _decode(text: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, ValueError):
        return None


class Sessions:
    """Opens, checks and ends console sessions; time is real time, never the bot's clock."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._ended: dict[str, float] = {}  # sid -> when its cookie would lapse anyway

    def open(self, credential: Secret, who: str, scope: str | None = None) -> str:
        """Return the cookie value of a new session for `who`, who may act in `scope` (None: all).

        A workspace credential's session acts in its workspace; the admin's in `default`.
        """
        sid = secrets.token_urlsafe(16)
        return self._cookie(credential, sid, int(self._now()), who, scope, scope or DEFAULT)

    def switch(self, credential: Secret, session: Session, workspace: str) -> str:
        """The cookie value of `session` acting in `workspace` from now on (same sid, same age)."""
        if not session.is_admin and workspace != session.scope:
            raise ValueError(f"this session acts in workspace {session.scope} only")
        return self._cookie(
            credential, session.sid, session.issued, session.who, session.scope, workspace
        )

    def _cookie(
        self,
        credential: Secret,
        sid: str,
        issued: int,
        who: str,
        scope: str | None,
        workspace: str,
    ) -> str:
        for name in (scope, workspace):
            if name is not None and not NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a workspace name")
        body = f"{sid}.{issued}.{_encode(who)}.{scope or ALL}.{workspace}"
        return f"{body}.{_mac(_key(credential), body)}"

    def read(self, credential: Secret | None, cookie: str | None) -> Session | None:
        """The session in `cookie` if it is genuine, current and not signed out; else None."""
        if credential is None or not cookie or cookie.count(".") != 5:
            return None
        body, _, signature = cookie.rpartition(".")
        key = _key(credential)
        if not hmac.compare_digest(signature.encode(), _mac(key, body).encode()):
            return None
        sid, issued_text, who_text, scope_text, workspace = body.split(".")
        who = _decode(who_text)
        if who is None or not issued_text.isdecimal() or sid in self._ended:
            return None
        scope = None if scope_text == ALL else scope_text
        if scope is not None and workspace != scope:
            return None
        issued = int(issued_text)
        if not 0 <= self._now() - issued < SESSION_LIFETIME:
            return None
        csrf = _mac(key, f"csrf.{sid}")[:32]
        return Session(sid, issued, who, csrf, scope, workspace)

    def end(self, session: Session) -> None:
        """Refuse this session's cookie from now on (in this process)."""
        now = self._now()
        self._ended = {sid: t for sid, t in self._ended.items() if t > now}
        self._ended[session.sid] = session.issued + SESSION_LIFETIME


class SignInThrottle:
    """Counts wrong keys per client address, so the key cannot be guessed at speed."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, who: str) -> deque[float]:
        now = time.monotonic()
        failures = self._failures.setdefault(who, deque())
        while failures and failures[0] < now - SIGNIN_WINDOW:
            failures.popleft()
        return failures

    def blocked(self, who: str) -> bool:
        """True when `who` has had too many wrong keys lately."""
        return len(self._recent(who)) >= SIGNIN_FAILURES

    def failed(self, who: str) -> None:
        """Record one wrong key from `who`."""
        if len(self._failures) > 10_000:  # many addresses: forget the old ones
            self._failures = {k: v for k, v in self._failures.items() if self._recent(k)}
        self._recent(who).append(time.monotonic())


SESSIONS = web.AppKey("console_sessions", Sessions)
THROTTLE = web.AppKey("console_throttle", SignInThrottle)


SESSION = web.RequestKey("console_session", Session)


def read_session(request: web.Request) -> Session | None:
    """The session the request's cookie carries if it is genuine and current, else None.

    The console's guard checks it further (its workspace still exists) and keeps the result
    for the request: pages use current_session.
    """
    secret = signing_secret(request.config_dict[BOT].settings)
    return request.config_dict[SESSIONS].read(secret, request.cookies.get(SESSION_COOKIE))


def current_session(request: web.Request) -> Session | None:
    """The request's signed-in session, as the console's guard found it (None: signed out)."""
    return request.get(SESSION)


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a submitted token with the expected one."""
    return given is not None and hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode()
    )


def is_https(request: web.Request) -> bool:
    """True when the browser reached us over TLS, directly or through a proxy that says so."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def set_cookie(
    response: web.StreamResponse, request: web.Request, name: str, value: str, path: str
) -> None:
    """Set an HttpOnly, SameSite=Strict cookie; Secure whenever the browser uses TLS."""
    response.set_cookie(
        name,
        value,
        path=path,
        httponly=True,
        samesite="Strict",
        secure=is_https(request),
        max_age=SESSION_LIFETIME,
    )
