"""One queue's loop: bound with the config's queue settings, packets polled only when the queue fd is
ready, the host's work woken with every ready fd, and the queue closed whatever happens."""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from tunnelwatch.config.runconfig import RunConfig, parse_config
from tunnelwatch.inline import firewall
from tunnelwatch.inline.serve import serve


class _Queue:
    """Stands in for nfqueue.Queue: its fd is a pipe the test writes 'packets' into."""

    made: list[_Queue] = []

    def __init__(self, qnum: int, handler: Any, mask: int, *, maxlen: int, fail_open: bool) -> None:
        self.qnum, self.handler, self.mask = qnum, handler, mask
        self.maxlen, self.fail_open = maxlen, fail_open
        self.rfd, self.wfd = os.pipe()
        self.flags_ok: bool | None = True
        self.packets = 0
        self.closed = False
        _Queue.made.append(self)

    def fileno(self) -> int:
        return self.rfd

    def poll(self) -> None:
        self.packets += len(os.read(self.rfd, 100))

    def close(self) -> None:
        self.closed = True
        os.close(self.rfd)
        os.close(self.wfd)


class _Enforcer:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.ticks = 0
        self.counts: dict[str, int] = {}
        self.quiet_backlog = False

    def handle(self, payload: bytes) -> int:
        return 0

    def tick(self) -> None:
        self.ticks += 1


class _Sig:
    def __init__(self) -> None:
        self.stop = 0
        self.rfd, self.wfd = os.pipe()
        self.drained = 0

    def drain(self) -> None:
        self.drained += 1
        os.read(self.rfd, 100)


@pytest.fixture
def sig(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Sig]:
    _Queue.made.clear()
    fake = types.ModuleType("tunnelwatch.inline.nfqueue")
    fake.Queue = _Queue  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tunnelwatch.inline.nfqueue", fake)
    s = _Sig()
    yield s
    os.close(s.rfd)
    os.close(s.wfd)


def test_packets_and_host_fds_are_served_until_stop(sig: _Sig) -> None:
    host_r, host_w = os.pipe()
    enf = _Enforcer(parse_config("queue: {num: 3, maxlen: 2048, fail_closed: true}\n"))
    readies: list[bool | None] = []
    woken: list[list[int]] = []

    def wake(ready: list[int]) -> None:
        woken.append(list(ready))
        q = _Queue.made[0]
        if len(woken) == 1:  # first round: nothing was ready but the host's fd
            assert q.packets == 0
            os.read(host_r, 10)
            os.write(q.wfd, b"pp")
        elif len(woken) == 2:
            assert q.packets == 2 and sig.drained == 0
            os.write(sig.wfd, b"\x01")  # a signal arrives
        else:
            assert sig.drained == 1
            sig.stop = 15

    os.write(host_w, b"x")
    try:
        serve(enf, 3, sig, readies.append, [host_r], lambda: 5.0, wake)  # type: ignore[arg-type]
    finally:
        os.close(host_r)
        os.close(host_w)
    (q,) = _Queue.made
    assert (q.qnum, q.maxlen, q.fail_open, q.handler) == (3, 2048, False, enf.handle)
    assert q.mask == firewall.MARK_MASK | firewall.MARK_PENDING
    assert readies == [True]
    assert woken == [[host_r], [q.rfd], [sig.rfd]]
    assert enf.ticks == 3 and q.closed


def test_the_queue_is_closed_when_the_host_raises(sig: _Sig) -> None:
    enf = _Enforcer(RunConfig())

    def wake(ready: list[int]) -> None:
        raise RuntimeError("host failed")

    with pytest.raises(RuntimeError):
        serve(enf, 0, sig, lambda ok: None, [], lambda: 0.0, wake)  # type: ignore[arg-type]
    (q,) = _Queue.made
    assert q.closed and q.fail_open


def test_a_stop_signal_before_binding_still_reports_ready_and_closes(sig: _Sig) -> None:
    sig.stop = 2
    readies: list[bool | None] = []
    serve(_Enforcer(RunConfig()), 0, sig, readies.append, [], lambda: 0.0,  # type: ignore[arg-type]
          lambda ready: None)
    (q,) = _Queue.made
    assert readies == [True] and q.closed and q.packets == 0


def test_the_loop_does_not_sleep_while_quiet_flows_wait_for_a_decision(
        sig: _Sig, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunnelwatch.inline import serve as serve_mod

    enf = _Enforcer(RunConfig())
    enf.quiet_backlog = True  # the enforcer decided a batch and left the rest for the next wake-up
    waits: list[float] = []
    real_select = serve_mod.select.select

    def select(r: list[int], w: list[int], x: list[int], timeout: float) -> Any:
        waits.append(timeout)
        return real_select(r, w, x, 0)

    def wake(ready: list[int]) -> None:
        if len(waits) == 2:
            enf.quiet_backlog = False  # the last batch
        if len(waits) == 3:
            sig.stop = 15

    monkeypatch.setattr(serve_mod.select, "select", select)
    serve(enf, 0, sig, lambda ok: None, [], lambda: 5.0, wake)  # type: ignore[arg-type]
    assert waits == [0.0, 0.0, 1.0]  # then the host's timeout, bounded by half the quiet time
