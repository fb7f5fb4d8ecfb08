"""The progress bar on stderr: drawn only on a terminal (or when forced), at most every 0.2 s, cleared at
the end."""

from __future__ import annotations

import io

import pytest

from tunnelwatch.offline import progress as progress_mod
from tunnelwatch.offline.progress import Progress


def test_progress_bar_draws_when_enabled() -> None:
    out = io.StringIO()
    p = Progress(1000, "file.pcap", stream=out, enabled=True)
    p.update(500, "42 pkts")
    p.close()
    assert "50.0%" in out.getvalue() and "file.pcap" in out.getvalue()
    quiet = io.StringIO()
    Progress(1000, "x", stream=quiet).update(500)
    assert quiet.getvalue() == ""  # StringIO is not a terminal: no bar


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_redraws_at_most_every_fifth_of_a_second_and_shows_the_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    out = io.StringIO()
    p = Progress(1000, "capture.pcap", stream=out, enabled=True)
    clock.t += 10.0
    p.update(250, "1 pkts")
    clock.t += 0.1
    p.update(300, "2 pkts")  # too soon: not drawn
    draws = out.getvalue().split("\r")[1:]
    assert len(draws) == 1 and "25.0%" in draws[0] and "1 pkts" in draws[0]
    assert "[" + "#" * 7 + "-" * 23 + "]" in draws[0]
    assert "eta   30s" in draws[0]  # 10 s for a quarter: 30 s to go
    clock.t += 0.2
    p.update(2000)  # past the total: capped at 100 %
    assert "100.0%" in out.getvalue().split("\r")[-1] and p.done == 2000


def test_a_terminal_gets_the_bar_by_default_and_close_clears_the_line() -> None:
    out = _Tty()
    p = Progress(0, "empty", stream=out)  # a zero total must not divide by zero
    assert p.enabled and p.total == 1
    p.update(1)
    p.close()
    assert out.getvalue().endswith("\r" + " " * 100 + "\r")


def test_disabled_close_writes_nothing() -> None:
    out = _Tty()
    p = Progress(10, stream=out, enabled=False)
    p.update(5)
    p.close()
    assert out.getvalue() == ""
