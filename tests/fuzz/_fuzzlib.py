"""Shared plumbing for the atheris harnesses: instrumentation, the entry point, and hostile values.

Every harness module `fuzz_<name>.py` defines `one_input(data: bytes) -> None`, which must return normally
for every input (expected refusals such as ConfigError are caught inside it); anything that escapes is a
crash. The same function is replayed in-process by tests/fuzz/test_fuzz_bounded.py over the checked-in
corpus and the crash reproducers, so a fixed crash stays fixed even where atheris is not installed.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: set by tests/fuzz/run.py for the fuzzing subprocesses; replays in pytest run uninstrumented
INSTRUMENT_ENV = "TUNNELWATCH_FUZZ_INSTRUMENT"


#: set by tests/fuzz/run.py to a directory it removes itself: libFuzzer exits without running atexit hooks
SCRATCH_ENV = "TUNNELWATCH_FUZZ_SCRATCH"


def scratch_dir(name: str) -> Path:
    """A fresh scratch directory (in memory when /dev/shm exists) that is removed after the run."""
    parent = os.environ.get(SCRATCH_ENV) or ("/dev/shm" if Path("/dev/shm").is_dir() else None)
    path = Path(tempfile.mkdtemp(prefix=f"tw-fuzz-{name}-", dir=parent))
    atexit.register(shutil.rmtree, path, True)  # for the in-process replay; a fuzzing run relies on run.py
    return path


@contextlib.contextmanager
def instrumented() -> Iterator[None]:
    """Instrument tunnelwatch's modules for coverage when this process is a fuzzing run."""
    if os.environ.get(INSTRUMENT_ENV) != "1":
        yield
        return
    import atheris

    with atheris.instrument_imports(include=["tunnelwatch"]):
        yield


def fuzz_main(one_input: Callable[[bytes], None]) -> None:
    """Run libFuzzer (via atheris) on `one_input` with the command line's libFuzzer options."""
    import atheris

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


class Bytes:
    """A tiny FuzzedDataProvider that also works without atheris (for the in-process replay)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        """Bytes not consumed yet."""
        return len(self.data) - self.pos

    def byte(self) -> int:
        """One byte (0 once exhausted)."""
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        """A big-endian 16-bit number."""
        return (self.byte() << 8) | self.byte()

    def take(self, n: int) -> bytes:
        """Up to n bytes."""
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def chunk(self, limit: int = 255) -> bytes:
        """A length-prefixed run of bytes (length byte modulo limit + 1)."""
        return self.take(self.byte() % (limit + 1))

    def text(self, limit: int = 64) -> str:
        """A string from a length-prefixed chunk; invalid UTF-8 keeps its code points via latin-1."""
        raw = self.chunk(limit)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    def pick(self, seq: list[Any] | tuple[Any, ...]) -> Any:
        """One element of a non-empty sequence."""
        return seq[self.byte() % len(seq)]


_SPECIAL_NUMBERS: tuple[Any, ...] = (
    0, -1, 1, 65535, 65536, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63), 10**400,
    0.0, -0.0, 1.5, 1e300, -1e-300, math.inf, -math.inf, math.nan, True, False,
)
_SPECIAL_TEXT: tuple[str, ...] = (
    "", "x", "192.0.2.1", "2001:db8::1", "fe80::1%eth0", "tcp", "udp", "openvpn", "vpn_tunnel", "confirmed",
    "block", "a\n", "a\x00b", "\ud800", "\u00b2", "١٢", "9" * 5000, "2026-01-01T00:00:00.000000Z",
    "2026-01-01T00:00:00.000000Z\n", "é" * 300, "x" * 70000,
)


def value(b: Bytes, depth: int = 0) -> Any:
    """A JSON-ish hostile value: numbers at the edges, odd text, bytes, nested lists and maps."""
    kind = b.byte() % 11
    if kind == 0:
        return None
    if kind == 1:
        return b.pick(_SPECIAL_NUMBERS)
    if kind == 2:
        return int.from_bytes(b.take(1 + b.byte() % 12), "big", signed=True)
    if kind == 3:
        return b.pick(_SPECIAL_TEXT)
    if kind == 4:
        return b.text()
    if kind == 5:
        return b.chunk(32)
    if kind == 6:
        return float(struct.unpack("!d", b.take(8).ljust(8, b"\0"))[0])
    if kind in (7, 8) and depth < 4:
        return [value(b, depth + 1) for _ in range(b.byte() % 5)]
    if kind in (9, 10) and depth < 4:
        return {b.text(16): value(b, depth + 1) for _ in range(b.byte() % 5)}
    return b.text()


def json_or_values(data: bytes) -> Any:
    """The input as JSON when it parses (the seeds are readable JSON), else hostile values built from it."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return value(Bytes(data))
