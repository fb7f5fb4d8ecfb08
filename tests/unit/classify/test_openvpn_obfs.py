"""XOR-obfuscated OpenVPN (Xue et al. 2022 opcode and ACK-size fingerprints), UDP and TCP; plain OpenVPN
left to the openvpn classifier; near-misses (QUIC, DTLS, DNS, STUN+RTCP, uTP, TLS, random bytes) refused."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from support import mutate
from tunnelwatch.classify import load_classifiers
from tunnelwatch.classify.base import Verdict
from tunnelwatch.classify.engine import Engine
from tunnelwatch.classify.openvpn_obfs import OpenVPNObfs
from tunnelwatch.classify.packet import TCP, UDP, Packet
from tunnelwatch.offline.classify import classify_file

C, S = bytes([192, 0, 2, 10]), bytes([198, 51, 100, 7])
CSID, SSID = bytes(range(1, 9)), bytes(range(9, 17))
CAPTURES = Path(__file__).resolve().parents[2] / "data" / "captures"
Flow = list[tuple[int, bytes]]  # (direction 0 = client, record)


def rec(op: int, sid: bytes, *, hmac: int = 64, acks: int = 0, body: int = 0, pid: int = 0) -> bytes:
    """An OpenVPN control-channel record with tls-auth (HMAC + packet id + time) and an ack array."""
    auth = os.urandom(hmac) + (pid + 1).to_bytes(4, "big") + (1_763_000_000).to_bytes(4, "big")
    ack = bytes([acks]) + os.urandom(4 * acks) + (os.urandom(8) if acks else b"")
    msg_id = b"" if op == 5 else pid.to_bytes(4, "big")
    return bytes([op << 3]) + sid + auth + ack + msg_id + os.urandom(body)


def handshake(hmac: int = 64) -> Flow:
    """The record sequence of the NordVPN capture: resets, client hello, server ACK + certificates, ACKs."""
    return [
        (0, rec(7, CSID, hmac=hmac)),
        (1, rec(8, SSID, hmac=hmac, acks=1)),
        (0, rec(4, CSID, hmac=hmac, acks=1, body=280, pid=1)),
        (1, rec(5, SSID, hmac=hmac, acks=1)),
        (1, rec(4, SSID, hmac=hmac, body=1000, pid=1)),
        (1, rec(4, SSID, hmac=hmac, body=1000, pid=2)),
        (0, rec(5, CSID, hmac=hmac, acks=2)),
        (0, rec(5, CSID, hmac=hmac, acks=3)),
        (1, rec(4, SSID, hmac=hmac, body=700, pid=3)),
        (0, rec(5, CSID, hmac=hmac, acks=4)),
        (0, rec(4, CSID, hmac=hmac, acks=1, body=600, pid=2)),
        (1, rec(5, SSID, hmac=hmac, acks=1)),
    ]


def xor(key: bytes) -> Callable[[bytes], bytes]:
    """The xor patch's `xormask`: every byte XOR the key, repeated from the start of each packet."""
    return lambda r: bytes(b ^ key[i % len(key)] for i, b in enumerate(r))


def ptrpos(r: bytes) -> bytes:
    """The xor patch's `xorptrpos`: every byte XOR its position + 1."""
    return bytes(b ^ ((i + 1) & 0xFF) for i, b in enumerate(r))


def udp_packets(flow: Flow, scramble: Callable[[bytes], bytes] = lambda r: r) -> list[Packet]:
    return [Packet(1000 + i * 0.01, 4, *((C, S, UDP, 40000, 1194) if d == 0 else (S, C, UDP, 1194, 40000)),
                   28 + len(r), scramble(r)) for i, (d, r) in enumerate(flow)]


def tcp_packets(flow: Flow, scramble: Callable[[bytes], bytes], seg: int = 0, first: int = 99
                ) -> list[Packet]:
    """TCP: a clear 2-byte length before each scrambled record; `seg` > 0 cuts the first `first` records
    into segments of that size (as the NordVPN client does with its resets)."""
    out: list[Packet] = []
    for k, (d, r) in enumerate(flow):
        data = len(r).to_bytes(2, "big") + scramble(r)
        parts = [data[i:i + seg] for i in range(0, len(data), seg)] if seg and k < first else [data]
        for part in parts:
            ends = (C, S, TCP, 40000, 443) if d == 0 else (S, C, TCP, 443, 40000)
            out.append(Packet(1000 + len(out) * 0.01, 4, *ends, 40 + len(part), part))
    return out


def decide(packets: Iterable[Packet], classifiers: list[OpenVPNObfs] | None = None,
           budget: int = 24) -> list[Verdict]:
    out: list[Verdict] = []
    eng = Engine(classifiers if classifiers is not None else [OpenVPNObfs()], budget=budget,
                 on_end=lambda f, v: out.append(v))
    for p in packets:
        eng.process(p)
    eng.flush()
    assert eng.classifier_errors == 0
    return out


def flagged(vs: list[Verdict]) -> list[Verdict]:
    return [v for v in vs if v.flagged]


@pytest.mark.parametrize("scramble", [xor(b"\x74"), xor(b"s3cr3t-key"), ptrpos],
                         ids=["byte", "key", "ptrpos"])
def test_udp_xor_obfuscated_is_heuristic_openvpn(scramble: Callable[[bytes], bytes]) -> None:
    [v] = decide(udp_packets(handshake(), scramble), budget=16)
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "openvpn", "heuristic")
    assert v.evidence[0] == "opcode pattern of OpenVPN under XOR obfuscation"
    assert any(e.startswith("ACK-size fingerprint:") for e in v.evidence)


@pytest.mark.parametrize(("seg", "first"), [(0, 0), (9, 2), (700, 99)])
def test_tcp_records_reassembled_across_segments(seg: int, first: int) -> None:
    [v] = decide(tcp_packets(handshake(), xor(b"\x5a\xa5"), seg, first), budget=48)
    assert (v.protocol, v.confidence) == ("openvpn", "heuristic"), v


def test_tcp_records_coalesced_in_one_segment() -> None:
    hs = handshake()
    runs: Flow = [(0, len(hs[0][1]).to_bytes(2, "big") + xor(b"k")(hs[0][1]))]
    for d, r in hs[1:]:
        data = len(r).to_bytes(2, "big") + xor(b"k")(r)
        if runs[-1][0] == d and len(runs[-1][1]) + len(data) < 3000:
            runs[-1] = (d, runs[-1][1] + data)
        else:
            runs.append((d, data))
    pkts = [Packet(1.0 + i, 4, *((C, S, TCP, 4, 443) if d == 0 else (S, C, TCP, 443, 4)), 40 + len(x), x)
            for i, (d, x) in enumerate(runs)]
    [v] = decide(pkts)
    assert (v.protocol, v.confidence) == ("openvpn", "heuristic"), v


@pytest.mark.parametrize("hmac", [0, 20, 32])
def test_other_control_channel_wrappings(hmac: int) -> None:
    [v] = decide(udp_packets(handshake(hmac), xor(b"\x33")))
    assert v.confidence == "heuristic" and v.protocol == "openvpn"


def test_plain_openvpn_is_left_to_the_openvpn_classifier() -> None:
    pkts = udp_packets(handshake())
    assert flagged(decide(pkts)) == []
    [v] = decide(udp_packets(handshake()), load_classifiers(["openvpn", "openvpn_obfs"]))  # type: ignore[arg-type]
    assert (v.protocol, v.confidence) == ("openvpn", "confirmed")


def test_pattern_breaks_are_not_openvpn() -> None:
    hs = handshake()
    # a client reset again after the handshake started
    assert flagged(decide(udp_packets([*hs[:4], (0, rec(7, CSID, body=40)), *hs[4:]], xor(b"\x74")))) == []
    # the client talks before any server reply (not a reset retransmission)
    assert flagged(decide(udp_packets([hs[0], hs[2], *hs[1:2], *hs[3:]], xor(b"\x74")))) == []
    # same first byte both ways (the "server reset" cannot be one)
    same = [(d, bytes([0x38]) + r[1:]) for d, r in hs]
    assert flagged(decide(udp_packets(same, xor(b"\x74")))) == []
    # "ACKs" whose sizes are multiples of 4 (RTCP-like): no ACK-size fingerprint
    odd = [(d, r + b"\0\0" if r[0] == 5 << 3 else r) for d, r in hs]
    assert flagged(decide(udp_packets(odd, xor(b"\x74")))) == []


def _udp_flow(seq: list[tuple[int, bytes]], sport: int = 50000, dport: int = 3478) -> list[Packet]:
    return [Packet(1000 + i * 0.01, 4, *((C, S, UDP, sport, dport) if d == 0 else (S, C, UDP, dport, sport)),
                   28 + len(p), p) for i, (d, p) in enumerate(seq)]


def test_benign_udp_near_misses() -> None:
    rnd = random.Random(7)
    quic = [(0, bytes([0xC3]) + b"\0\0\0\1" + os.urandom(1195)), (1, bytes([0xC1]) + os.urandom(200))] * 6
    dtls = [(0, b"\x16\xfe\xfd" + os.urandom(150)), (1, b"\x16\xfe\xfd" + os.urandom(90))] * 6
    dns = [(0, b"\x12\x34\x01\x00" + os.urandom(30)), (1, b"\x12\x34\x81\x80" + os.urandom(60))]
    # WhatsApp-like call: STUN request/response, then RTP (0x80/0x90) and RTCP (0x81, lengths 4*n)
    call = [(0, b"\x00\x01" + os.urandom(70)), (1, b"\x01\x01" + os.urandom(90))]
    call += [(rnd.randint(0, 1), bytes([0x81]) + os.urandom(rnd.choice((27, 43, 59, 83)))) for _ in range(6)]
    call += [(rnd.randint(0, 1), bytes([rnd.choice((0x80, 0x90))]) + os.urandom(rnd.randint(60, 200)))
             for _ in range(14)]
    # BitTorrent uTP: SYN 0x41, STATE 0x21 (repeated), DATA 0x01
    utp = [(0, b"\x41\x01" + os.urandom(18)), (1, b"\x21\x01" + os.urandom(18))]
    utp += [(0, b"\x01\x01" + os.urandom(rnd.randint(100, 1000))) if i % 2
            else (1, b"\x21\x01" + os.urandom(18)) for i in range(20)]
    for name, seq in (("quic", quic), ("dtls", dtls), ("dns", dns), ("call", call), ("utp", utp)):
        assert flagged(decide(_udp_flow(seq))) == [], name
    # random datagrams of random sizes, both ways, even with the reset-size relation (server = client + 12)
    for k in range(600):
        first = rnd.randint(14, 400)
        seq = [(0, rnd.randbytes(first)), (1, rnd.randbytes(first + 12 if k % 2 else rnd.randint(14, 1199)))]
        seq += [(rnd.randint(0, 1), rnd.randbytes(rnd.choice((26, 30, rnd.randint(14, 1199)))))
                for _ in range(22)]
        assert flagged(decide(_udp_flow(seq, sport=20000 + k))) == []


def test_typed_protocol_with_rtcp_like_sizes_is_not_openvpn() -> None:
    # hello pair (reply 12 bytes longer), then two message types reused, but the small one's sizes are
    # multiples of 4 (like RTCP or most length-padded formats): no ACK-size fingerprint
    rnd = random.Random(3)
    seq = [(0, b"\x01" + os.urandom(39)), (1, b"\x02" + os.urandom(51))]
    seq += [(i % 2, bytes([0x10 if i % 3 else 0x11]) + os.urandom(rnd.choice((27, 31, 35)) if i % 3 else 600))
            for i in range(20)]
    assert flagged(decide(_udp_flow(seq))) == []


def test_tls_and_http_over_tcp_refused_on_the_first_packet() -> None:
    for first in (b"\x16\x03\x01\x02\x00\x01" + os.urandom(100), b"GET / HTTP/1.1\r\n\r\n", b"SSH-2.0-x\r\n"):
        eng = Engine([OpenVPNObfs()])
        flow = eng.process(Packet(1.0, 4, C, S, TCP, 40000, 443, 40 + len(first), first))
        assert flow.active == () and flow.done


def test_hostile_input_never_raises() -> None:
    seeds = [len(r).to_bytes(2, "big") + r for _, r in handshake()] + [r for _, r in handshake()]
    rnd = random.Random(11)
    for k in range(400):
        proto = TCP if k % 2 else UDP
        pkts = [Packet(1.0 + i, 4, *((C, S) if i % 3 else (S, C)), proto, 40000 if i % 3 else 443,
                       443 if i % 3 else 40000, 60, mutate(rnd, seeds)) for i in range(12)]
        decide(pkts)  # asserts no classifier error was counted


def test_alone_over_every_sample_only_the_obfuscated_flows_are_flagged() -> None:
    """The classifier on its own (no other classifier to outrank it) over every capture in the repository:
    real OpenVPN in all its modes, WireGuard, IPsec, VoIP, proxies, the near misses. Only the obfuscated
    sample is flagged, both of its flows."""
    hits: dict[str, list[tuple[str, int]]] = {}
    pcaps = sorted(CAPTURES.glob("*.pcap"))
    assert len(pcaps) > 50
    for f in pcaps:
        for r in classify_file(str(f), classifiers=[OpenVPNObfs()], budget=16, progress=False):
            if r["klass"] != "unknown":
                hits.setdefault(f.name, []).append((r["transport"], r["dport"]))
    assert hits == {"crafted-openvpn-obfs.pcap": [("udp", 1214), ("tcp", 465)]}


def test_udp_state_is_one_int_until_a_third_record() -> None:
    """Most UDP flows hold this classifier's state while they are classified and never show more than a
    datagram each way: until then the state is a plain int (not the ~112-byte _State), and the records
    after it (the full state, built from the int) still give the verdict of the whole handshake."""
    scramble = xor(b"\x74")
    pkts = udp_packets(handshake(), scramble)
    eng = Engine([OpenVPNObfs()], budget=16)
    for p in pkts[:2]:
        flow = eng.process(p)
        st = flow.state["openvpn_obfs"]
        assert type(st) is int and sys.getsizeof(st) <= 32
    flow = eng.process(pkts[2])
    assert type(flow.state["openvpn_obfs"]) is not int
    # an ordinary UDP flow (16 random bytes each way) keeps the int
    rnd = random.Random(5)
    flow = None
    for p in _udp_flow([(0, rnd.randbytes(16)), (1, rnd.randbytes(16))], sport=20001):
        flow = eng.process(p)
    assert flow is not None and type(flow.state["openvpn_obfs"]) is int


def test_udp_verdict_and_retransmits_across_the_int_to_state_change() -> None:
    """Retransmitted resets are counted the same whether they come while the state is the int or after it
    became the full state; the verdict names both resets and their 12-byte size relation."""
    hs = handshake()
    # one retransmit of each reset while the state is the int, one more after the third record
    seq = [hs[0], hs[0], hs[1], hs[1], hs[2], hs[0], *hs[3:]]
    [v] = decide(udp_packets(seq, xor(b"\x74")))
    assert (v.protocol, v.confidence) == ("openvpn", "heuristic"), v
    c, s = (7 << 3) ^ 0x74, (8 << 3) ^ 0x74
    assert v.evidence[1].startswith(f"client reset 0x{c:02x} and server reset 0x{s:02x} once each")
    assert v.evidence[-1].startswith("server reset 12 bytes longer")
    # a fourth retransmit is one too many, before the change or after it
    assert flagged(decide(udp_packets([hs[0], hs[0], hs[1], hs[1], hs[0], hs[2], hs[1], *hs[3:]],
                                      xor(b"\x74")))) == []
    assert flagged(decide(udp_packets([hs[0], hs[0], hs[1], hs[1], hs[2], hs[0], hs[1], *hs[3:]],
                                      xor(b"\x74")))) == []
    # the client again before the server's reset, other than a copy of its own: not OpenVPN
    assert flagged(decide(udp_packets([hs[0], (0, hs[0][1] + b"x"), *hs[1:]], xor(b"\x74")))) == []
