"""Boot a disk image under QEMU and read its serial console until a line appears (the image boot tests).

The console is QEMU's stdio serial port read through a pipe: the wait ends on the line itself, on QEMU
exiting, or at the deadline, with no polling. Everything the console printed is kept in a log file, and
QEMU is killed whatever happens.
"""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

READY = re.compile(r"tunnelwatch-banner: (NOT )?READY[^\r\n]*")


@dataclass(frozen=True)
class Boot:
    """One boot: the matched line (None at the deadline or when QEMU exited), the console and the time."""

    line: str | None
    console: str
    seconds: float
    qemu_exit: int | None

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.console.splitlines()[-n:])


def boot_until(cmd: list[str], log: Path, pattern: re.Pattern[str] = READY, timeout: float = 900) -> Boot:
    """Run QEMU (`cmd` must have `-serial stdio`) until `pattern` shows on the console; then kill it."""
    t0 = time.monotonic()
    seen = b""
    line = None
    qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert qemu.stdout is not None
    try:
        with log.open("wb") as out, selectors.DefaultSelector() as sel:
            sel.register(qemu.stdout, selectors.EVENT_READ)
            while line is None:
                left = timeout - (time.monotonic() - t0)
                if left <= 0 or not sel.select(left):
                    break
                chunk = os.read(qemu.stdout.fileno(), 65536)
                if not chunk:
                    break  # QEMU exited
                out.write(chunk)
                out.flush()
                # whole lines only (a line cut between two reads is searched once complete)
                start = seen.rfind(b"\n") + 1
                seen += chunk
                end = seen.rfind(b"\n")
                if end >= start:
                    m = pattern.search(seen[start:end].decode(errors="replace"))
                    if m:
                        line = m.group(0)
        seconds = time.monotonic() - t0
    finally:
        if qemu.poll() is None:
            qemu.kill()
        code = qemu.wait(timeout=60)
        qemu.stdout.close()
    return Boot(line, seen.decode(errors="replace"), seconds, code)
