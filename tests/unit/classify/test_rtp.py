"""RTP/RTCP: stream consistency per SSRC, both-way confirmation, RTCP compounds, near-misses rejected."""

from __future__ import annotations

import os
import random
import struct

from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from support import one_verdict, run_engine
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.rtp import rtcp_compound, rtp_header

C, S = "192.0.2.10", "198.51.100.7"


def rtp(seq: int, ts: int, ssrc: int, pt: int = 0, n: int = 160, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq & 0xFFFF, ts & 0xFFFFFFFF,
                       ssrc) + os.urandom(n)


def stream(ssrc: int, count: int, seq0: int = 1000, ts0: int = 5000, step: int = 160) -> list[bytes]:
    return [rtp(seq0 + i, ts0 + i * step, ssrc) for i in range(count)]


def sr(ssrc: int) -> bytes:
    return struct.pack("!BBHI", 0x80, 200, 6, ssrc) + os.urandom(20)


def sdes(ssrc: int) -> bytes:
    item = b"\x01\x06abcdef\x00\x00\x00\x00"  # CNAME, then end-of-list padding to a word boundary
    return struct.pack("!BBHI", 0x81, 202, (8 + len(item)) // 4 - 1, ssrc) + item


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_header_parser() -> None:
    h = rtp_header(rtp(7, 99, 0xABCDEF01, pt=8))
    assert h is not None and (h.pt, h.seq, h.ts, h.ssrc) == (8, 7, 99, 0xABCDEF01)
    assert rtp_header(b"\x40" + rtp(1, 1, 1)[1:]) is None  # version 1
    assert rtp_header(b"\x8f" + rtp(1, 1, 1, n=4)[1:]) is None  # 15 CSRCs do not fit
    assert rtp_header(rtp(1, 1, 1, pt=72, marker=True)) is None  # RTCP SR range


def test_streams_both_ways_with_distinct_ssrcs_are_confirmed() -> None:
    a, b = stream(0x11111111, 4), stream(0x22222222, 4, seq0=60000, ts0=0xFFFFFF00)
    pkts = []
    for x, y in zip(a, b, strict=True):
        pkts += [u(C, S, 30000, 40000, x), u(S, C, 40000, 30000, y)]
    v = one_verdict(pkts)
    assert (v.klass, v.protocol, v.confidence) == ("voip", "rtp", "confirmed")


def test_one_direction_is_heuristic_and_short_bursts_say_nothing() -> None:
    v = one_verdict([u(C, S, 30000, 40000, p) for p in stream(0x1234, 8)])
    assert (v.protocol, v.confidence) == ("rtp", "heuristic")
    v = one_verdict([u(C, S, 30000, 40000, p) for p in stream(0x1234, 2)])
    assert v.klass != "voip"


def test_inconsistent_sequence_or_ssrc_is_not_rtp() -> None:
    rng = random.Random(7)
    jumping = [rtp(rng.randrange(65536), rng.randrange(1 << 32), 0x1234) for _ in range(10)]
    hopping = [rtp(100 + i, 160 * i, rng.randrange(1 << 32)) for i in range(10)]
    backwards_ts = [rtp(100 + i, 1_000_000 - 160 * i, 0x1234) for i in range(10)]
    for payloads in (jumping, hopping, backwards_ts):
        v = one_verdict([u(C, S, 30000, 40000, p) for p in payloads])
        assert v.protocol not in ("rtp", "rtcp"), v


def test_rtcp_compound_both_ways_is_confirmed() -> None:
    assert rtcp_compound(sr(1) + sdes(1)) == (200, 1, "rtcp", 2)
    assert rtcp_compound((sr(1) + sdes(1))[:-2]) is None
    v = one_verdict([u(C, S, 30001, 40001, sr(0xA) + sdes(0xA)), u(S, C, 40001, 30001, sr(0xB) + sdes(0xB))])
    assert (v.protocol, v.confidence) == ("rtcp", "confirmed")


def test_rtp_over_tcp_rfc4571_framing() -> None:
    frames = [struct.pack("!H", len(p)) + p for p in stream(0x55, 8)]
    pkts = [IP(src=C, dst=S) / TCP(sport=40252, dport=5000, flags="PA") / Raw(f) for f in frames]
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("rtp", "heuristic")


def test_random_udp_starting_with_0x80_is_not_rtp() -> None:
    pkts = []
    for _ in range(12):
        pkts.append(u(C, S, 27015, 27016, b"\x80" + os.urandom(60)))
        pkts.append(u(S, C, 27016, 27015, b"\x90" + os.urandom(60)))
    for _, v in run_engine(pkts):
        assert v.klass != "voip", v


def test_quic_short_headers_and_dtls_are_not_rtp() -> None:
    quic = [u(C, S, 50000, 443, bytes([0x40 | random.randrange(64)]) + os.urandom(80)) for _ in range(8)]
    dtls = [u(C, S, 50000, 4433, bytes.fromhex("17fefd0001000000000001") + b"\x00\x20" + os.urandom(32))
            for _ in range(8)]
    for pkts in (quic, dtls):
        for _, v in run_engine(pkts):
            assert v.protocol not in ("rtp", "rtcp"), v


def flow_after(payloads: list[bytes]) -> Flow:
    """The one flow an engine with RTP alone holds after these client datagrams."""
    from tunnelwatch.classify.engine import Engine
    from tunnelwatch.classify.packet import parse_ip
    from tunnelwatch.classify.rtp import RTP

    e = Engine([RTP()], budget=64)
    flows = set()
    for i, p in enumerate(payloads):
        pkt = parse_ip(bytes(u(C, S, 40000, 40002, p)), 1.0 + i / 100)
        assert pkt is not None
        flows.add(e.process(pkt))
    assert len(flows) == 1
    return flows.pop()


def assert_media_after(early: list[bytes]) -> None:
    """Streams both ways after these client datagrams are still confirmed RTP."""
    v = one_verdict([u(C, S, 40000, 40002, p) for p in early]
                    + [u(C, S, 40000, 40002, p) for p in stream(0x1234, 8)]
                    + [u(S, C, 40002, 40000, p) for p in stream(0x5678, 8)])
    assert (v.protocol, v.confidence) == ("rtp", "confirmed"), v


def test_datagrams_of_no_rtp_version_keep_a_count_until_media_comes() -> None:
    """Before anything of RTP version 2 the state is the count of bad datagrams (STUN/DTLS-range first
    bytes are not bad); media after a few of them is still recognised, and enough bad ones reject."""
    early = [b"\x55" + os.urandom(30), b"\x00\x01" + os.urandom(30), b"\x7f" + os.urandom(30)]  # bad STUN bad
    f = flow_after(early)
    assert f.active and f.state["rtp"] == 2
    assert_media_after(early)
    assert not flow_after([b"\x55" + os.urandom(30)] * 4).active  # four bad of four: rejected


def test_version_2_datagrams_that_parse_as_neither_rtp_nor_rtcp_only_count_too() -> None:
    """A first byte of version 2 (or 3) is not enough to build the stream state: a datagram that parses as
    no RTP header and no RTCP compound is only counted as bad, like the others; real media after a few of
    them is still recognised, and four of four still reject."""
    assert rtp_header(b"\x8f" + bytes(15)) is None  # 15 CSRCs announced in a 16-byte datagram
    odd = [b"\x8f" + os.urandom(15), b"\xc5" + os.urandom(30), b"\x80\xc8" + bytes(6)]  # CC, v3, short SR
    f = flow_after(odd)
    assert f.active and f.state["rtp"] == 3
    assert_media_after(odd)
    assert not flow_after([b"\xc5" + os.urandom(30)] * 4).active
    f = flow_after(odd[:1] + stream(0x1234, 1))  # the first real header builds the state, bad count kept
    assert not isinstance(f.state["rtp"], int) and f.state["rtp"].bad == 1 and f.state["rtp"].rtp_pkts == 1
