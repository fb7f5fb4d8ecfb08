"""Life under systemd: the sd_notify protocol (Notifier) and the daemon's logging set-up.

Notifier speaks the notify protocol through systemd-python (`systemd.daemon.notify`), with a few-line
socket fallback when that binding is not built; outside systemd (no NOTIFY_SOCKET) every call is a no-op.
Only the process that created the Notifier sends: a forked queue worker inherits NOTIFY_SOCKET, but the unit
says NotifyAccess=main, so its messages would be dropped by systemd with a warning; sending nothing is
cleaner.

setup_logging sends records to journald with structured fields when the daemon runs under systemd, and
otherwise prints `tunnelwatch: LEVEL: message` on stderr. Either way a RateLimitFilter keeps a flood of one
repeated warning from drowning the log: the first occurrence is logged, repeats within the window are
counted, and the next occurrence after the window carries the count.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

SYSLOG_IDENTIFIER: Final = "tunnelwatch"
#: outside journald (which stamps its own): an ISO 8601 time with its UTC offset first
STDERR_FORMAT: Final = "%(asctime)s tunnelwatch: %(levelname)s: %(message)s"
STDERR_DATEFMT: Final = "%Y-%m-%dT%H:%M:%S%z"
_MAX_KEYS: Final = 1024  # distinct warning templates remembered by the rate limiter


def _send_socket(path: str, message: str) -> None:
    """The notify protocol without libsystemd: one datagram to NOTIFY_SOCKET ('@' = abstract name)."""
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(address)
        s.sendall(message.encode())


def _sender() -> Callable[[str], object] | None:
    try:
        # not `from systemd import daemon`: the repo's systemd/ unit directory is a namespace package to mypy
        from systemd.daemon import notify as sd_notify
    except ImportError:  # the compiled binding is optional: the fallback speaks the same protocol
        return None
    notify: Callable[[str], object] = sd_notify
    return notify


def _one_line(text: str) -> str:
    # a newline would start a new KEY=VALUE assignment in the datagram
    return " ".join(text.split("\n"))


class Notifier:
    """sd_notify for the daemon's life cycle; every method is a no-op when NOTIFY_SOCKET is unset."""

    def __init__(self) -> None:
        self.socket_path = os.environ.get("NOTIFY_SOCKET") or None
        self.pid = os.getpid()
        self.backend = "off"
        self._notify: Callable[[str], object] | None = None
        self._failed = False
        if self.socket_path is not None:
            self._notify = _sender()
            self.backend = "systemd-python" if self._notify is not None else "socket"

    @property
    def enabled(self) -> bool:
        """True when messages are sent: under systemd, and in the process that created this object."""
        return self.socket_path is not None and os.getpid() == self.pid

    def send(self, *fields: str) -> None:
        """Send KEY=VALUE assignments in one datagram; failures are logged once, never raised."""
        if not self.enabled or self.socket_path is None:
            return
        message = "\n".join(fields)
        try:
            if self._notify is not None:
                self._notify(message)
            else:
                _send_socket(self.socket_path, message)
        except OSError as exc:
            if not self._failed:  # a watchdog ping every few seconds must not flood the log
                log.warning("sd_notify to %s failed: %s", self.socket_path, exc)
                self._failed = True

    def ready(self, status: str) -> None:
        """Start-up finished (rules in place): READY=1 with a status line."""
        self.send("READY=1", f"STATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        """A new status line for `systemctl status`."""
        self.send(f"STATUS={_one_line(text)}")

    def reloading(self) -> None:
        """A reload started: RELOADING=1 (MONOTONIC_USEC is required by systemd >= 253, ignored by 252)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def reloaded(self, status: str) -> None:
        """The reload finished (applied or refused): READY=1 with a status line."""
        self.ready(status)

    def stopping(self) -> None:
        """Shutdown started: STOPPING=1."""
        self.send("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WATCHDOG_USEC), or None when no watchdog is set for us."""
        if not self.enabled:
            return None
        wpid = os.environ.get("WATCHDOG_PID")
        if wpid and wpid.strip() != str(os.getpid()):
            return None
        try:
            usec = int(os.environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        return usec / 2e6 if usec > 0 else None

    def watchdog(self) -> None:
        """A watchdog ping: WATCHDOG=1."""
        self.send("WATCHDOG=1")


class RateLimitFilter(logging.Filter):
    """Rate-limit repeated WARNING+ records with the same logger and message template.

    The first record is logged; repeats within `window` seconds are dropped and counted; the first
    repeat after the window is logged with "[repeated N times in the last S s]" appended and starts a new
    window. So one template yields at most one line per window. Lower levels always pass. A record may
    name its problem with `extra={"rate_key": ...}` (one generic template, several distinct problems,
    as the uplink's "uplink: %s") or pass unconditionally with `extra={"rate_exempt": True}` (the first
    failure of an outage must reach the log whatever came before it).
    """

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 level: int = logging.WARNING) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self.level = level
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """False drops the record; a record closing a window gets the repeat count appended."""
        if record.levelno < self.level or getattr(record, "rate_exempt", False):
            return True
        key = (record.name, record.levelno, str(getattr(record, "rate_key", None) or record.msg))
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window:
            self._seen[key] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1] > 0:
            record.msg = f"{record.getMessage()} [repeated {seen[1]} times in the last {now - seen[0]:.0f} s]"
            record.args = None
        self._seen.pop(key, None)
        if len(self._seen) >= _MAX_KEYS:  # bounded memory: forget the oldest template
            self._seen.pop(next(iter(self._seen)))
        self._seen[key] = (now, 0)
        return True

    def pending(self) -> dict[tuple[str, str], int]:
        """(logger, template) -> repeats counted but not yet reported (e.g. to log them at shutdown)."""
        return {(name, msg): n for (name, _, msg), (_, n) in self._seen.items() if n > 0}


def journal_stream_is_stderr() -> bool:
    """True when systemd connected stderr to the journal (JOURNAL_STREAM names stderr's device:inode)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except (ValueError, OSError, AttributeError):  # unset/garbled variable, or stderr closed/replaced
        return False


def _journal_handler() -> logging.Handler | None:
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
    return handler


def setup_logging(level: str = "info", *, journal: bool | None = None) -> None:
    """Configure the root logger: journald when journal=True or (None and stderr is the journal), else stderr.

    Replaces the handlers of an earlier call and logging.basicConfig's stderr handler; other handlers
    (e.g. pytest's capture) are kept. Raises ValueError for an unknown level name.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    use_journal = journal_stream_is_stderr() if journal is None else journal
    handler = _journal_handler() if use_journal else None
    fallback = use_journal and handler is None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(STDERR_FORMAT, STDERR_DATEFMT))
    handler.addFilter(RateLimitFilter())
    handler._tunnelwatch = True  # type: ignore[attr-defined]  # marks ours for the next call
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_tunnelwatch", False) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    if fallback:
        log.warning("systemd.journal is not available (systemd-python not installed): logging to stderr")
