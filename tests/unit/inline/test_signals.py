"""Signals: SIGHUP and SIGTERM/SIGINT become flags and make the wakeup fd readable for select()."""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Iterator

import pytest

from tunnelwatch.inline.signals import Signals

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@pytest.fixture
def sig() -> Iterator[Signals]:
    """Signals installed for one test; the previous handlers and wakeup fd come back after it."""
    handlers = {s: signal.getsignal(s) for s in _SIGNALS}
    old_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(old_fd)
    s = Signals()
    try:
        yield s
    finally:
        signal.set_wakeup_fd(old_fd)
        for num, h in handlers.items():
            signal.signal(num, h)
        os.close(s.rfd)
        os.close(s.wfd)


def _readable(fd: int, timeout: float = 5.0) -> bool:
    return fd in select.select([fd], [], [], timeout)[0]


def test_sighup_sets_hup_and_wakes_select(sig: Signals) -> None:
    assert not sig.hup and not _readable(sig.rfd, 0)
    os.kill(os.getpid(), signal.SIGHUP)
    assert _readable(sig.rfd)
    assert sig.hup and sig.stop == 0
    sig.drain()
    assert not _readable(sig.rfd, 0)


@pytest.mark.parametrize("num", [signal.SIGTERM, signal.SIGINT])
def test_stop_signals_record_which_signal(sig: Signals, num: int) -> None:
    os.kill(os.getpid(), num)
    assert _readable(sig.rfd)
    assert sig.stop == num and not sig.hup


def test_drain_empties_many_wakeups_without_blocking(sig: Signals) -> None:
    for _ in range(3):
        os.kill(os.getpid(), signal.SIGHUP)
    assert _readable(sig.rfd)
    sig.drain()
    sig.drain()  # nothing left: returns at once instead of blocking
    assert not _readable(sig.rfd, 0)
