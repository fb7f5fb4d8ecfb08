"""Flow table: both directions share one flow, idle expiry follows packet time, the size bound holds."""

from __future__ import annotations

from tunnelwatch.classify.flow import Flow, flow_key
from tunnelwatch.classify.flowtable import FlowTable
from tunnelwatch.classify.packet import UDP, Packet

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])


def pkt(src: bytes, sport: int, dst: bytes, dport: int, ts: float) -> Packet:
    return Packet(ts, 4, src, dst, UDP, sport, dport, 60, b"x")


def test_both_directions_map_to_one_flow_with_initiator_kept() -> None:
    t = FlowTable()
    f1, new1 = t.get(pkt(B, 9000, A, 53, 1.0))
    f2, new2 = t.get(pkt(A, 53, B, 9000, 1.1))
    assert f1 is f2 and new1 and not new2
    assert f1.src == B and f1.sport == 9000
    assert f1.direction(pkt(A, 53, B, 9000, 1.2)) == 1


def test_idle_flows_expire_by_packet_time_not_wall_clock() -> None:
    ended: list[tuple[Flow, str]] = []
    t = FlowTable(idle_timeout=10, on_end=lambda f, r: ended.append((f, r)))
    t.get(pkt(A, 1, B, 2, 0.0))
    t.get(pkt(A, 3, B, 4, 5.0))
    assert not ended
    t.get(pkt(A, 5, B, 6, 10.5))
    assert [(e.sport, r) for e, r in ended] == [(1, "idle")]
    assert len(t) == 2 and t.expired == 1


def test_same_tuple_after_silence_is_a_new_flow() -> None:
    ended: list[tuple[Flow, str]] = []
    t = FlowTable(idle_timeout=10, on_end=lambda f, r: ended.append((f, r)))
    f1, _ = t.get(pkt(A, 1, B, 2, 0.0))
    f2, new = t.get(pkt(A, 1, B, 2, 100.0))
    assert new and f1 is not f2 and ended[0][0] is f1


def test_bound_evicts_the_least_recently_seen_flow() -> None:
    ended: list[tuple[Flow, str]] = []
    t = FlowTable(idle_timeout=1000, max_flows=3, on_end=lambda f, r: ended.append((f, r)))
    for i in range(3):
        t.get(pkt(A, 100 + i, B, 1, float(i)))
    # touch the oldest so that flow 101 becomes the least recently seen
    t.get(pkt(A, 100, B, 1, 3.0))
    t.get(pkt(A, 200, B, 1, 4.0))
    assert len(t) == 3 and t.evicted == 1
    assert [(e.sport, r) for e, r in ended] == [(101, "evicted")]


def test_flush_ends_every_flow_once() -> None:
    ended: list[Flow] = []
    t = FlowTable(on_end=lambda f, r: ended.append(f))
    for i in range(50):
        t.get(pkt(A, i + 1, B, 1, 0.0))
    t.flush()
    t.flush()
    assert len(ended) == 50 and len({id(f) for f in ended}) == 50 and len(t) == 0


def test_key_is_the_lower_address_port_end_first_and_the_table_agrees() -> None:
    # the comparison is inlined in FlowTable.get: it must order exactly like (addr, port) tuples,
    # including one host talking to itself (equal addresses, ports decide)
    cases = [(A, 5000, B, 53), (B, 53, A, 5000), (A, 9000, A, 53), (A, 53, A, 9000), (A, 7, A, 7),
             (bytes([10, 0, 0, 1]), 1, bytes([9, 255, 255, 255]), 65535)]
    for src, sport, dst, dport in cases:
        p = pkt(src, sport, dst, dport, 1.0)
        lo, hi = sorted([(src, sport), (dst, dport)])
        assert flow_key(p) == (*lo, *hi, UDP)
        t = FlowTable()
        f, _ = t.get(p)
        assert f.key == flow_key(p)
        assert t.get(pkt(dst, dport, src, sport, 1.1)) == (f, False)
