"""The packet-path process's GC policy: young collections stay, automatic full ones stop."""

from __future__ import annotations

import gc
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
    calls: list[int] = []
    monkeypatch.setattr(enforcer_mod.gc, "collect", lambda *a: calls.append(1) or 0)
    enf.next_full_gc = enf.next_tick = 0.0
    enf.tick()
    assert bool(calls) is collected
    if not collected:  # looked at again a minute later, not an hour
        assert enf.next_full_gc - enforcer_mod.time.monotonic() <= enforcer_mod.FULL_GC_RETRY
