"""A real sd_notify listener for tests: what systemd would receive from a Type=notify service.

Usage (the daemon under test is a child process; no systemd needed):

    with NotifyListener() as nl:
        proc = subprocess.Popen([...], env=nl.environ(watchdog_usec=2_000_000))
        ready = nl.wait_for("READY=1", timeout=20)           # first message with READY=1
        nl.wait_for(lambda m: m.get("WATCHDOG") == "1" and m.ts > ready.ts, timeout=5)
        proc.terminate()
        nl.wait_for("STOPPING=1", timeout=10)
        assert all(m.pid == proc.pid for m in nl.messages)    # only the main process notified

The listener binds a unix datagram socket in a private temporary directory (SO_PASSCRED on, so each
message carries the sender's pid as the kernel saw it) and a background thread collects every datagram
with its arrival time (time.monotonic()). `wait_for` blocks on a condition variable, never sleeps.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

_UCRED = struct.Struct("3i")  # pid, uid, gid


@dataclass(frozen=True)
class NotifyMessage:
    """One datagram: arrival time (monotonic), sender pid (-1 when unknown), raw text, parsed fields."""

    ts: float
    pid: int
    raw: str
    fields: dict[str, str] = field(default_factory=dict)

    def get(self, key: str) -> str | None:
        """The value of KEY in this message, or None."""
        return self.fields.get(key)

    def has(self, assignment: str) -> bool:
        """True when the message contains `KEY=VALUE` exactly (e.g. "READY=1")."""
        key, _, value = assignment.partition("=")
        return self.fields.get(key) == value


def parse(raw: str) -> dict[str, str]:
    """KEY=VALUE lines of one notify datagram (a later duplicate key wins, as in systemd)."""
    out: dict[str, str] = {}
    for line in raw.split("\n"):
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


Predicate = Callable[[NotifyMessage], bool]


class NotifyListener:
    """Context manager: a NOTIFY_SOCKET that records every message; see the module docstring."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="twnotify-"))  # short: sun_path is 108 bytes
        self.path = str(self._dir / "notify.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(self.path)
        os.chmod(self.path, 0o666)  # a daemon that dropped privileges may still notify
        self._wake_r, self._wake_w = os.pipe()
        self._cond = threading.Condition()
        self._messages: list[NotifyMessage] = []
        self._thread = threading.Thread(target=self._collect, name="notify-listener", daemon=True)
        self._thread.start()

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
                 ) -> None:
        self.close()

    def close(self) -> None:
        """Stop collecting and remove the socket; idempotent."""
        if self._wake_w < 0:
            return
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._wake_w = -1
        self._sock.close()
        for p in self._dir.iterdir():
            p.unlink()
        self._dir.rmdir()

    def _collect(self) -> None:
        space = socket.CMSG_SPACE(_UCRED.size)
        while True:
            ready, _, _ = select.select([self._sock.fileno(), self._wake_r], [], [])
            if self._wake_r in ready:
                return
            data, anc, _, _ = self._sock.recvmsg(65536, space)
            pid = -1
            for level, kind, payload in anc:
                creds = (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
                if creds and len(payload) >= _UCRED.size:
                    pid = _UCRED.unpack_from(payload)[0]
            raw = data.decode(errors="replace")
            with self._cond:
                self._messages.append(NotifyMessage(time.monotonic(), pid, raw, parse(raw)))
                self._cond.notify_all()

    def environ(self, *, watchdog_usec: int | None = None, watchdog_pid: int | None = None,
                base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for the child: `base` (default os.environ) plus NOTIFY_SOCKET and watchdog vars."""
        env = dict(os.environ if base is None else base)
        env["NOTIFY_SOCKET"] = self.path
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        if watchdog_pid is not None:
            env["WATCHDOG_PID"] = str(watchdog_pid)
        return env

    @property
    def messages(self) -> list[NotifyMessage]:
        """A snapshot of every message received so far, in arrival order."""
        with self._cond:
            return list(self._messages)

    def wait_for(self, pred: Predicate | str, timeout: float, *, start: int = 0) -> NotifyMessage:
        """The first message (from index `start`) matching pred, waiting up to `timeout` seconds for it.

        pred is a callable on NotifyMessage or a "KEY=VALUE" string. Raises TimeoutError listing what did
        arrive, so a failing test shows the daemon's actual conversation.
        """
        match: Predicate = (lambda m: m.has(pred)) if isinstance(pred, str) else pred
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self._messages):
                    if match(self._messages[i]):
                        return self._messages[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [m.raw for m in self._messages]
                    raise TimeoutError(f"no matching notify message within {timeout} s; received {got}")
                self._cond.wait(left)

    def count(self, pred: Predicate | str) -> int:
        """How many messages received so far match pred."""
        match: Predicate = (lambda m: m.has(pred)) if isinstance(pred, str) else pred
        return sum(1 for m in self.messages if match(m))
