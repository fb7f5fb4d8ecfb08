"""Who may see the status page: the token check, login sessions and their cookie, the failed-login limit,
the same-origin check of form POSTs, and redaction of secrets from log lines.

A technician logs in once with the status token (a form on the page) and gets a session cookie: a random
id (256 bits), HttpOnly, SameSite=Strict, Path=/, a bounded lifetime, Secure when served over TLS. The
server keeps only a hash of each id, in a table bounded in size (the oldest session goes first). Failed
token attempts are counted per client address; past the limit that address is refused (429) until the
window has passed, whatever it sends: guessing a 48-character token over the LAN stays hopeless.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Final
from urllib.parse import urlsplit

COOKIE: Final = "tw_session"
SESSION_LIFETIME: Final = 12 * 3600  # seconds: a working day, then the token again
MAX_SESSIONS: Final = 64  # technicians' browsers; the oldest session is dropped beyond this
MAX_FAILURES: Final = 10  # wrong tokens per client address within FAILURE_WINDOW before it is refused
FAILURE_WINDOW: Final = 600.0  # seconds
MAX_TRACKED_CLIENTS: Final = 1024  # addresses with failures remembered; the oldest is forgotten beyond this
_SECRET_RE: Final = re.compile(r"(?i)(token=|tw_session=|bearer\s+)[^&\s;\"']*")


def redact(text: str) -> str:
    """`token=...`, session cookies and bearer tokens replaced, so no secret reaches the log."""
    return _SECRET_RE.sub(r"\1REDACTED", text)


def token_matches(given: str, token: bytes) -> bool:
    """Whether `given` is the status token, compared in constant time."""
    return bool(given) and hmac.compare_digest(given.encode("utf-8", "replace"), token)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


class Sessions:
    """The login sessions (hashed ids with their expiry) and the per-address failure counts; thread-safe."""

    def __init__(self, *, lifetime: float = SESSION_LIFETIME, max_sessions: int = MAX_SESSIONS,
                 max_failures: int = MAX_FAILURES, window: float = FAILURE_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, float] = OrderedDict()  # sha256(id) -> expiry (clock time)
        self._failures: OrderedDict[str, list[float]] = OrderedDict()  # address -> failure times

    def create(self) -> str:
        """A new session id (returned once, for the cookie; only its hash is kept)."""
        sid = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            for key in [k for k, exp in self._sessions.items() if exp <= now]:
                del self._sessions[key]
            while len(self._sessions) >= self.max_sessions:
                self._sessions.popitem(last=False)
            self._sessions[_digest(sid)] = now + self.lifetime
        return sid

    def valid(self, sid: str) -> bool:
        """Whether `sid` names a live session (an expired one is forgotten)."""
        if not sid or len(sid) > 128:
            return False
        key = _digest(sid)
        with self._lock:
            exp = self._sessions.get(key)
            if exp is None:
                return False
            if exp <= self._clock():
                del self._sessions[key]
                return False
            return True

    def end(self, sid: str) -> None:
        """Log out: forget the session."""
        with self._lock:
            self._sessions.pop(_digest(sid), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def locked_out(self, addr: str) -> float:
        """Seconds until `addr` may try a token again; 0 when it may now."""
        now = self._clock()
        with self._lock:
            times = [t for t in self._failures.get(addr, []) if t > now - self.window]
            if times:
                self._failures[addr] = times
            else:
                self._failures.pop(addr, None)
            if len(times) < self.max_failures:
                return 0.0
            return max(1.0, times[0] + self.window - now)

    def failed(self, addr: str) -> None:
        """Count one wrong token from `addr`."""
        now = self._clock()
        with self._lock:
            times = [t for t in self._failures.pop(addr, []) if t > now - self.window][-self.max_failures:]
            self._failures[addr] = [*times, now]  # re-inserted: the most recent address is the newest entry
            while len(self._failures) > MAX_TRACKED_CLIENTS:
                self._failures.popitem(last=False)


def cookie_value(header: str) -> str:
    """The session id from a Cookie header ("" when absent); never raises on hostile input."""
    for part in header.split(";")[:50]:
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value.strip().strip('"')[:128]
    return ""


def session_cookie(sid: str, *, secure: bool, lifetime: float = SESSION_LIFETIME) -> str:
    """The Set-Cookie value that starts a session."""
    return (f"{COOKIE}={sid}; Max-Age={int(lifetime)}; Path=/; HttpOnly; SameSite=Strict"
            + ("; Secure" if secure else ""))


def clear_cookie(*, secure: bool) -> str:
    """The Set-Cookie value that ends a session in the browser."""
    return f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")


def same_origin(headers: Mapping[str, str], *, secure: bool) -> bool:
    """Whether a form POST comes from this page: Sec-Fetch-Site, Origin and Referer, whichever the
    browser sent, must name this server (the Host header); a request with none of them (a script) passes,
    SameSite=Strict already keeps the cookie out of cross-site requests."""
    site = (headers.get("Sec-Fetch-Site") or "").strip().lower()
    if site and site not in ("same-origin", "none"):
        return False
    host = (headers.get("Host") or "").strip().lower()
    scheme = "https" if secure else "http"
    for name in ("Origin", "Referer"):
        value = (headers.get(name) or "").strip()
        if not value:
            continue
        try:
            url = urlsplit(value)
        except ValueError:
            return False
        return bool(host) and url.scheme.lower() == scheme and url.netloc.lower() == host
    return True
