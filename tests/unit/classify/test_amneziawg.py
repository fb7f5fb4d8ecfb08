"""AmneziaWG: padded handshakes behind junk, custom types, data mid-session; near-misses stay unflagged."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from scapy.utils import wrpcap

from support import feed_raw, mutate, one_verdict, run_engine
from support.wgcraft import awg_session, le, rnd, u, wg_data
from tunnelwatch.offline.classify import classify_file

CAPTURES = Path(__file__).resolve().parents[2] / "data" / "captures"

KNOBS = [  # (Jc, Jmin, Jmax, S1, S2, H1..H4, S4)
    (3, 40, 70, 15, 68, (1020325451, 3288052141, 1766607858, 2235690657), 0),
    (16, 1, 1400, 0, 0, (0x6B, 0x7F, 0x90, 0xA1), 0),  # no padding, types only
    (10, 500, 1000, 100, 200, (0xDEADBEEF, 0x11223344, 0x55667788, 0x0BADF00D), 0),
    (5, 10, 50, 42, 7, (5, 6, 7, 8), 16),  # 2.0-style S4 padding on transport data
    (128, 1, 50, 1132, 1188, (111111, 222222, 333333, 444444), 0),  # the largest documented padding
]


@pytest.mark.parametrize(("jc", "jmin", "jmax", "s1", "s2", "h", "s4"), KNOBS)
def test_padded_handshake_behind_junk_is_confirmed_by_data(jc: int, jmin: int, jmax: int, s1: int, s2: int,
                                                           h: tuple[int, int, int, int], s4: int) -> None:
    rng = random.Random(jc * 1000 + s1)
    pkts = awg_session(rng, jc=jc, jmin=jmin, jmax=jmax, s1=s1, s2=s2, h=h, s4=s4, data=1)
    v = one_verdict(pkts, budget=jc + 8)
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "amneziawg", "confirmed"), v
    assert f"initiation 148+{s1} bytes, response 92+{s2}" in v.evidence[0]


def test_handshake_without_data_is_heuristic() -> None:
    rng = random.Random(1)
    pkts = awg_session(rng, jc=4, jmin=20, jmax=200, s1=30, s2=40, h=(10, 20, 30, 40), data=0)
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("amneziawg", "heuristic"), v


def test_response_echoing_another_index_is_not_a_handshake() -> None:
    rng = random.Random(2)
    pkts = awg_session(rng, jc=4, jmin=20, jmax=200, s1=30, s2=40, h=(10, 20, 30, 40), data=0)
    resp = bytearray(bytes(pkts[-1].payload.payload))
    resp[40 + 8] ^= 0xFF  # receiver index no longer the initiator's sender index
    pkts[-1] = u(bytes(resp), up=False)
    assert one_verdict(pkts, names=["amneziawg"]).protocol == "unknown"


def test_data_mid_session_is_heuristic_only() -> None:
    rng = random.Random(3)
    h4, i_idx, r_idx = 0x5A5A1234, 0xCAFE0001, 0xBEEF0002
    pkts = []
    for i in range(500, 503):
        pkts += [u(wg_data(rng, h4, i_idx, i), up=False), u(wg_data(rng, h4, r_idx, i + 3))]
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("amneziawg", "heuristic"), v
    assert one_verdict(pkts[:4], names=["amneziawg"]).protocol == "unknown"  # two each way: not yet


def _rtp(rng: random.Random, ssrc: int, seq: int, ts: int) -> bytes:
    return bytes([0x80, 0x00]) + seq.to_bytes(2, "big") + ts.to_bytes(4, "big") + ssrc.to_bytes(4, "big") + \
        rnd(rng, 160)


def near_misses(rng: random.Random) -> list[list[bytes | tuple[bytes, bool]]]:
    """Flows (datagrams up/down) that look a little like WireGuard-family traffic and are not."""
    game, rtp, quic, dtls, same_idx, rand = [], [], [], [], [], []
    for i in range(10):
        # a game protocol: 4-byte magic, one session id both ways, 8-byte LE counter, 16-byte-aligned body
        game += [(le(0x47414D45) + le(0x1234) + le(i, 8) + rnd(rng, 48), True),
                 (le(0x47414D45) + le(0x1234) + le(i, 8) + rnd(rng, 64), False)]
        rtp += [(_rtp(rng, 0x1111, 100 + i, 160 * i), True), (_rtp(rng, 0x2222, 900 + i, 160 * i), False)]
        # QUIC short header: 0x40 | protected bits, 8-byte connection id, protected packet number
        quic += [(bytes([0x40 | rng.randrange(32)]) + b"CID-UP!!" + rnd(rng, 60), True),
                 (bytes([0x40 | rng.randrange(32)]) + b"CID-DOWN" + rnd(rng, 90), False)]
        rec = b"\x17\xfe\xfd\x00\x01" + (i + 1).to_bytes(6, "big") + (64).to_bytes(2, "big")
        dtls += [(rec + rnd(rng, 64), up) for up in (True, False)]
        # WireGuard-like data but the same index both ways (not two ends of a WireGuard session)
        same_idx += [(wg_data(rng, 0x99, 7, i), True), (wg_data(rng, 0x99, 7, i), False)]
        rand += [(rnd(rng, rng.choice((148, 92, 180, 1200))), True),
                 (rnd(rng, rng.choice((92, 120, 64))), False)]
    return [game, rtp, quic, dtls, same_idx, rand]


def test_near_misses_are_not_flagged() -> None:
    rng = random.Random(11)
    for n, flow in enumerate(near_misses(rng)):
        pkts = [u(b, up, cp=41000 + n, sp=42000 + n) for b, up in flow]  # type: ignore[misc]
        for _, v in run_engine(pkts):
            assert v.protocol not in ("amneziawg", "wireguard", "openvpn"), (n, v)


def test_random_flows_never_match_a_padded_handshake() -> None:
    rng = random.Random(12)
    flagged = 0
    for i in range(300):
        pkts = [u(rnd(rng, rng.randint(92, 1400)), up=rng.random() < 0.6, cp=20000 + i) for _ in range(24)]
        flagged += sum(v.protocol == "amneziawg" for _, v in run_engine(pkts, names=["amneziawg"]))
    assert flagged == 0


def test_hostile_input_never_raises() -> None:
    rng = random.Random(13)
    seeds = [bytes(p.payload.payload) for p in
             awg_session(rng, jc=3, jmin=1, jmax=100, s1=20, s2=30, h=(9, 10, 11, 12))]
    raws = [bytes(u(mutate(rng, seeds), up=rng.random() < 0.5, cp=30000 + i % 40)) for i in range(3000)]
    engine = feed_raw(["amneziawg", "wireguard", "openvpn"], raws)
    assert engine.classifier_errors == 0


def _write_captures() -> None:
    rng = random.Random(2026)
    pkts = awg_session(rng, jc=6, jmin=30, jmax=600, s1=57, s2=113,
                       h=(1213474503, 2887372130, 3141592653, 2718281828), data=4)
    for p in pkts:
        p.time = 1_764_000_000 + pkts.index(p) * 0.01
    wrpcap(str(CAPTURES / "amneziawg-junk-padded.pcap"), pkts)
    nm = []
    for n, flow in enumerate(near_misses(random.Random(2027))):
        nm += [u(b, up, cp=41000 + n, sp=42000 + n) for b, up in flow]  # type: ignore[misc]
    for i, p in enumerate(nm):
        p.time = 1_764_000_100 + i * 0.01
    wrpcap(str(CAPTURES / "udp-near-misses.pcap"), nm)


def test_golden_captures() -> None:
    if os.environ.get("TUNNELWATCH_WRITE_GOLDEN"):
        _write_captures()
    records = list(classify_file(str(CAPTURES / "amneziawg-junk-padded.pcap")))
    assert [(r["protocol"], r["confidence"]) for r in records] == [("amneziawg", "confirmed")], records
    assert records[0]["dport"] == 51820
    near = list(classify_file(str(CAPTURES / "udp-near-misses.pcap")))
    assert len(near) == 6
    assert all(r["klass"] not in ("vpn_tunnel", "proxy_obfuscated") for r in near), near
