"""The packet-path process's GC policy: young collections stay, automatic full ones stop."""

from __future__ import annotations

import gc
import random
import struct
from collections.abc import Iterator

import pytest

nfqueue = pytest.importorskip("tunnelwatch.inline.nfqueue", reason="needs the daemon extra (netfilterqueue)")


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restore_gc")
def test_relax_gc_keeps_young_collections_and_stops_full_ones() -> None:
    young, middle, _ = gc.get_threshold()
    nfqueue.relax_gc()
    assert gc.get_threshold() == (young, middle, nfqueue.GC_FULL_THRESHOLD)
    assert gc.get_freeze_count() > 0  # start-up objects are out of every collection's sight

    # a young cycle is still collected without any explicit full collection
    class Node:
        ref: object = None

    a, b = Node(), Node()
    a.ref, b.ref = b, a
    del a, b
    assert gc.collect(0) + gc.collect(1) >= 2


def _udp(sport: int) -> bytes:
    from scapy.layers.inet import IP, UDP
    pkt = IP(src="198.51.100.2", dst="203.0.113.2") / UDP(sport=sport, dport=9999) / b"\x01\x02\x03\x04"
    return bytes(pkt)


@pytest.mark.parametrize(("flows", "collected"), [(10, True), (3100, False)])
def test_the_hourly_full_collection_waits_while_the_table_is_large(monkeypatch: pytest.MonkeyPatch,
                                                                   flows: int, collected: bool) -> None:
    """Its pause grows with the flows held (~4 us each here, ~14 us on a Pi 4): a busy table postpones it."""
    from tunnelwatch.config.runconfig import parse_config
    from tunnelwatch.inline import enforcer as enforcer_mod
    from tunnelwatch.policy.registry import Registry

    enf = enforcer_mod.Enforcer(parse_config("log: {level: info}\n"), Registry(), lambda rec: None)
    for i in range(flows):
        enf.handle(_udp(1024 + i))
    assert len(enf.engine.table) == flows
    calls: list[tuple[int, ...]] = []
    monkeypatch.setattr(enforcer_mod.gc, "collect", lambda *a: calls.append(a) or 0)
    enf.next_full_gc = enf.next_tick = 0.0
    enf.tick()
    assert (() in calls) is collected  # gc.collect() without a generation: the full one
    if not collected:  # looked at again a minute later, not an hour
        assert enf.next_full_gc - enforcer_mod.time.monotonic() <= enforcer_mod.FULL_GC_RETRY


def _tcp(i: int, payload: bytes, reply: bool) -> bytes:
    """Flow i's 16-byte request (or its echo), as the queue hands it over (no checksums read)."""
    cli, port, srv = bytes([10, 1, i >> 8 & 0xFF, i & 0xFF]), 1024 + i % 60000, bytes([192, 0, 2, 1])
    src, sport, dst, dport = (srv, 40000, cli, port) if reply else (cli, port, srv, 40000)
    t = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x18, 65535, 0, 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(t), 0, 0x4000, 64, 6, 0, src, dst) + t


def _churn(monkeypatch: pytest.MonkeyPatch, clocked: bool) -> int:
    """6,000 unknown TCP flows (request and echo) through a table full at 1,000, tick() after each
    packet; the most objects a collection looked at, or left waiting in the youngest generation at the end
    (with `clocked` False, tick() never collects)."""
    from tunnelwatch.config.runconfig import parse_config
    from tunnelwatch.inline import enforcer as enforcer_mod
    from tunnelwatch.policy.registry import Registry

    nfqueue.relax_gc()
    if not clocked:
        monkeypatch.setattr(enforcer_mod, "YOUNG_GC_S", 1e9)
    enf = enforcer_mod.Enforcer(parse_config("log: {level: info}\n"), Registry(), lambda rec: None)
    enf.engine.table.max_flows = 1000  # full after a sixth of the run (the config's least is 1,000)
    clock = [1000.0]
    monkeypatch.setattr(enforcer_mod.time, "monotonic", lambda: clock[0])
    rng = random.Random(3)
    packets = [_tcp(i, d, r) for i in range(6000) for d in (rng.randbytes(16),) for r in (False, True)]
    walked: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            walked.append(sum(len(gc.get_objects(g)) for g in range(info["generation"] + 1)))

    gc.callbacks.append(seen)
    try:
        for pkt in packets:
            enf.handle(pkt)
            clock[0] += 0.00025  # 2,000 flows/s
            enf.tick()
    finally:
        gc.callbacks.remove(seen)
    assert len(enf.engine.table) == 1000
    return max([*walked, len(gc.get_objects(0))])


@pytest.mark.usefixtures("restore_gc")
def test_young_collections_stay_small_while_a_full_table_churns(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a full table each new flow's objects are balanced by an evicted flow's freed ones: CPython's
    allocation count then stays under its threshold while the youngest generation grows, and the one
    collection that finally runs walks all of it. tick() collects the young generations on a clock."""
    clocked = _churn(monkeypatch, True)
    assert clocked < 1000  # 20 ms of packets (40 flows) between two collections: a few hundred objects
    assert _churn(monkeypatch, False) >= 4 * clocked  # the growth the clock prevents
