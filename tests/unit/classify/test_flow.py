"""One bidirectional flow: a key both directions share, the initiator as src, direction and description."""

from __future__ import annotations

import socket

from tunnelwatch.classify.flow import Flow, flow_key
from tunnelwatch.classify.packet import TCP, UDP, Packet

A = bytes([192, 0, 2, 10])
B = bytes([198, 51, 100, 7])
V6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
V6B = socket.inet_pton(socket.AF_INET6, "2001:db8::2")


def _pkt(src: bytes, sport: int, dst: bytes, dport: int, proto: int = UDP, ts: float = 1.0) -> Packet:
    return Packet(ts, 4 if len(src) == 4 else 6, src, dst, proto, sport, dport, 40, b"x")


def test_both_directions_share_one_key() -> None:
    up, down = _pkt(A, 40000, B, 1194), _pkt(B, 1194, A, 40000)
    assert flow_key(up) == flow_key(down) == (A, 40000, B, 1194, UDP)
    assert flow_key(_pkt(B, 1194, A, 40000)) == flow_key(_pkt(A, 40000, B, 1194))


def test_the_key_tells_transports_ports_and_ends_apart() -> None:
    base = flow_key(_pkt(A, 40000, B, 1194))
    assert flow_key(_pkt(A, 40000, B, 1194, TCP)) != base
    assert flow_key(_pkt(A, 40001, B, 1194)) != base
    assert flow_key(_pkt(A, 1194, B, 40000)) != base  # ports swapped between the same two hosts


def test_a_host_talking_to_itself_orders_by_port() -> None:
    assert flow_key(_pkt(A, 5000, A, 53)) == flow_key(_pkt(A, 53, A, 5000)) == (A, 53, A, 5000, UDP)


def test_the_first_packet_makes_the_initiator_and_direction_follows() -> None:
    first = _pkt(B, 1194, A, 40000, ts=5.0)  # the server end happened to be seen first
    f = Flow(flow_key(first), first)
    assert (f.src, f.sport, f.dst, f.dport, f.first_ts, f.last_ts) == (B, 1194, A, 40000, 5.0, 5.0)
    assert f.direction(first) == 0 and f.direction(_pkt(A, 40000, B, 1194)) == 1
    assert f.direction(_pkt(B, 1195, A, 40000)) == 1  # same host, another port: not the initiator
    assert f.packets == 0 and not f.bidirectional and not f.done and f.best is None
    f.pkts0 += 1
    assert not f.bidirectional and f.pkts_dir == (1, 0)
    f.pkts1 += 1
    assert f.bidirectional and f.pkts_dir == (1, 1)


def test_describe_names_transport_and_both_ends() -> None:
    pkt = _pkt(A, 40000, B, 1194)
    assert Flow(flow_key(pkt), pkt).describe() == "udp 192.0.2.10:40000 -> 198.51.100.7:1194"
    six = _pkt(V6, 443, V6B, 50000, TCP)
    assert Flow(flow_key(six), six).describe() == "tcp 2001:db8::1:443 -> 2001:db8::2:50000"
    assert Flow(flow_key(six), six).version == 6


def test_classifiers_ruled_out_by_a_first_tcp_segment_make_no_state() -> None:
    """STUN, OpenVPN, PPTP, RTP and SIP reject a TCP stream whose first segment rules them out without
    making per-flow state first (issue 13: memory and CPU per flow)."""
    from tunnelwatch.classify import load_classifiers
    from tunnelwatch.classify.base import REJECT, Context
    from tunnelwatch.classify.flow import NO_STATE

    seg = Packet(1.0, 4, A, B, TCP, 40000, 443, 40 + 48, b"\xff" * 48, 0x18, False, 1000)
    for c in load_classifiers(["stun", "openvpn", "pptp", "rtp", "sip"]):
        f = Flow(flow_key(seg), seg)
        f.pay0 = 1
        assert c.inspect(f, seg, 0, Context()) is REJECT, c.name
        assert f.state is NO_STATE, c.name
