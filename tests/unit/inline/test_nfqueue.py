"""The NFQUEUE callback with a fake queue: every packet gets ACCEPT and its pending bit cleared, whatever
the handler does (the README's promise: our code failing never cuts the customer off)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

nfqueue = pytest.importorskip("tunnelwatch.inline.nfqueue", reason="needs the daemon extra (netfilterqueue)")
from tunnelwatch.inline import firewall  # noqa: E402

MASK = firewall.MARK_MASK | firewall.MARK_PENDING
UNRELATED = 0x00000ABC  # someone else's bits in the packet mark: never touched


class FakeNfq:
    """Stands in for netfilterqueue.NetfilterQueue: keeps the callback the Queue binds."""

    def __init__(self) -> None:
        self.callback: Callable[[Any], None] | None = None

    def bind(self, num: int, callback: Callable[[Any], None], max_len: int, range: int) -> None:
        self.callback = callback

    def get_fd(self) -> int:
        return -1

    def unbind(self) -> None:
        pass


class FakePacket:
    """A queued packet: records the mark set and the verdict given."""

    def __init__(self, payload: bytes, mark: int) -> None:
        self.payload, self.mark = payload, mark
        self.verdicts: list[str] = []

    def get_payload(self) -> bytes:
        return self.payload

    def get_mark(self) -> int:
        return self.mark

    def set_mark(self, mark: int) -> None:
        self.mark = mark

    def accept(self) -> None:
        self.verdicts.append("accept")

    def drop(self) -> None:
        self.verdicts.append("drop")


def _queue(monkeypatch: pytest.MonkeyPatch, handler: Callable[[bytes], int]) -> tuple[Any, FakeNfq]:
    fake = FakeNfq()
    monkeypatch.setattr(nfqueue, "NetfilterQueue", lambda: fake)
    monkeypatch.setattr(nfqueue.Queue, "_set_flags", lambda self, flags, mask: True)
    monkeypatch.setattr(nfqueue, "relax_gc", lambda: None)
    return nfqueue.Queue(4242, handler, MASK), fake


def test_a_handler_that_raises_still_gets_accept_with_pending_cleared(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(ip: bytes) -> int:
        raise RuntimeError("bug in a classifier")

    q, fake = _queue(monkeypatch, broken)
    assert fake.callback is not None
    pkts = [FakePacket(b"\x45" + bytes(19), firewall.MARK_PENDING | UNRELATED) for _ in range(3)]
    with caplog.at_level(logging.ERROR):
        for p in pkts:
            fake.callback(p)
    assert [p.verdicts for p in pkts] == [["accept"]] * 3
    assert all(p.mark == UNRELATED for p in pkts)  # pending cleared, no decision bits, others' bits kept
    assert q.errors == 3 and q.packets == 3
    assert sum("handler failed" in r.getMessage() for r in caplog.records) == 1  # logged once, then counted


def test_decision_bits_are_masked_into_the_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    q, fake = _queue(monkeypatch, lambda ip: firewall.MARK_DROP | 0x1)  # a stray low bit is masked away
    assert fake.callback is not None
    p = FakePacket(b"\x45" + bytes(19), firewall.MARK_PENDING | UNRELATED)
    fake.callback(p)
    assert p.verdicts == ["accept"]
    assert p.mark == firewall.MARK_DROP | UNRELATED
    assert q.errors == 0


def test_one_packet_in_sample_every_is_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunnelwatch.inline import qstats

    q, fake = _queue(monkeypatch, lambda ip: 0)
    assert fake.callback is not None
    samples = qstats.recorder(4242)
    samples.clear()
    n = 2 * qstats.SAMPLE_EVERY + 1
    pkts = [FakePacket(b"\x45" + bytes(19), firewall.MARK_PENDING) for _ in range(n)]
    for p in pkts:
        fake.callback(p)
    assert len(samples) == 3  # the first packet, then every SAMPLE_EVERY-th: 1, 17, 33
    assert all(0 <= s < 1.0 for s in samples)
    assert all(p.verdicts == ["accept"] and p.mark == 0 for p in pkts)  # every packet got its verdict
    assert q.packets == len(pkts)
