"""Sessions, CSRF tokens and the login rate limit of the console.

* **Session**: a cookie ``larder_session`` holding ``{"u": user, "c": csrf token, "t": issued}`` signed with
  itsdangerous (HMAC-SHA256 over a key kept in ``<state dir>/console/session.key``, 0600). ``HttpOnly``,
  ``SameSite=Strict``, ``Secure`` when the console is served over TLS (``--secure-cookies``), expires after
  ``max_age_s``. The user's role and scope are read from the users file on every request, so removing a user or
  changing a role takes effect at once.
* **CSRF**: every POST must carry the session's token (form field ``csrf`` or header ``X-CSRF-Token``); without
  it the request is refused with 403 and audited. The login form has its own pre-session token in a short cookie.
* **Login rate limit**: after ``max_failures`` (5) wrong passwords for one user name, or ``max_failures_remote``
  (30: an office behind one NAT address) from one client address, within ``window_s`` (15 min), further attempts
  are answered 429 until the window has passed (a correct password does not get through while locked).
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "larder_session"
LOGIN_COOKIE = "larder_login"


def session_key(state_dir: Path) -> str:
    """The signing key, generated once per state folder (every console process of the machine shares it)."""
    path = state_dir / "console" / "session.key"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    path.with_suffix(".tmp").replace(path)
    return key


@dataclass
class Sessions:
    key: str
    max_age_s: int = 12 * 3600
    secure: bool = False

    def __post_init__(self) -> None:
        self._s = URLSafeTimedSerializer(self.key, salt="larder-console-session")
        self._login = URLSafeTimedSerializer(self.key, salt="larder-console-login")

    def issue(self, user: str) -> tuple[str, str]:
        """(cookie value, csrf token) for a fresh session."""
        csrf = secrets.token_urlsafe(24)
        return self._s.dumps({"u": user, "c": csrf}), csrf

    def read(self, cookie: str | None) -> dict[str, Any] | None:
        if not cookie:
            return None
        try:
            data = self._s.loads(cookie, max_age=self.max_age_s)
        except BadSignature:  # also SignatureExpired
            return None
        return data if isinstance(data, dict) and "u" in data and "c" in data else None

    def login_token(self, cookie: str | None = None) -> tuple[str, str]:
        """(cookie value, form token) that protect the login form itself (login CSRF). A still valid cookie is
        kept: two login pages open at once (or the browser fetching a redirected favicon) must not void each other."""
        if cookie:
            try:
                tok = self._login.loads(cookie, max_age=1800)
                if isinstance(tok, str):
                    return cookie, tok
            except BadSignature:
                pass
        tok = secrets.token_urlsafe(24)
        return self._login.dumps(tok), tok

    def login_token_ok(self, cookie: str | None, given: str) -> bool:
        if not cookie or not given:
            return False
        try:
            want = self._login.loads(cookie, max_age=3600)
        except BadSignature:
            return False
        return isinstance(want, str) and hmac.compare_digest(want, given)

    def cookie_args(self) -> dict[str, Any]:
        return {"httponly": True, "samesite": "Strict", "secure": self.secure, "path": "/"}


def csrf_ok(session: dict[str, Any], given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(str(session["c"]), str(given))


@dataclass
class LoginLimiter:
    """Failures per user name and per client address in a sliding window."""

    max_failures: int = 5
    max_failures_remote: int = 30
    window_s: float = 900.0
    _fails: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, user: str, remote: str, now: float | None = None) -> float:
        """Seconds until a login for ``user`` from ``remote`` may be tried again; 0 if it may now."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for key, limit in ((f"u:{user.lower()}", self.max_failures), (f"r:{remote}", self.max_failures_remote)):
            q = self._recent(key, now)
            if len(q) >= limit:
                wait = max(wait, q[-limit] + self.window_s - now)
        return wait

    def failed(self, user: str, remote: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for key in (f"u:{user.lower()}", f"r:{remote}"):
            self._recent(key, now).append(now)
        if len(self._fails) > 100_000:  # bounded memory under a spray of names
            for k in [k for k, q in self._fails.items() if not q][:50_000]:
                del self._fails[k]

    def succeeded(self, user: str) -> None:
        self._fails.pop(f"u:{user.lower()}", None)
