"""Tailscale: disco messages both ways with distinct stable keys confirmed; WireGuard in between allowed."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, run_engine
from tunnelwatch.classify.tailscale import MAGIC

C, S = "192.0.2.10", "198.51.100.7"
KEY_C, KEY_S = os.urandom(32), os.urandom(32)


def disco(key: bytes, plain: int = 14) -> bytes:
    return MAGIC + key + os.urandom(24) + os.urandom(plain + 16)


def wg_data(receiver: int, counter: int) -> bytes:
    return (b"\x04\x00\x00\x00" + receiver.to_bytes(4, "little") + counter.to_bytes(8, "little")
            + os.urandom(48))


def u(src: str, dst: str, b: bytes) -> IP:
    sp, dp = (41641, 41642) if src == C else (41642, 41641)
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_disco_both_ways_confirmed() -> None:
    v = one_verdict([u(C, S, disco(KEY_C)), u(S, C, disco(KEY_S)), u(C, S, disco(KEY_C, 32))])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "tailscale", "confirmed")


def test_wireguard_first_then_disco_confirmed() -> None:
    pkts = [u(S, C, wg_data(7, i)) for i in range(3)] + [u(C, S, disco(KEY_C)), u(S, C, disco(KEY_S))]
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("tailscale", "confirmed")
    assert any("WireGuard" in e for e in v.evidence)


def test_one_way_disco_is_heuristic() -> None:
    v = one_verdict([u(C, S, disco(KEY_C)), u(C, S, disco(KEY_C))])
    assert (v.protocol, v.confidence) == ("tailscale", "heuristic")


def test_changing_key_same_key_both_ways_and_short_disco_not_confirmed() -> None:
    v = one_verdict([u(C, S, disco(KEY_C)), u(C, S, disco(KEY_S))])
    assert v.protocol != "tailscale" or v.confidence == "port"
    v = one_verdict([u(C, S, disco(KEY_C)), u(S, C, disco(KEY_C))])
    assert (v.protocol, v.confidence) == ("tailscale", "heuristic")
    v = one_verdict([u(C, S, MAGIC + KEY_C + os.urandom(20))])
    assert v.protocol != "tailscale" or v.confidence == "port"


def test_plain_wireguard_left_to_wireguard() -> None:
    pkts = []
    for i in range(8):
        pkts += [u(C, S, wg_data(9, i)), u(S, C, wg_data(7, i))]
    v = one_verdict(pkts)
    assert v.protocol == "wireguard"


@pytest.mark.parametrize("payload", [
    bytes(DNS(id=0x5453, rd=1, qd=DNSQR(qname="TS.example"))),
    b"\xc3\x00\x00\x00\x01\x08" + os.urandom(1194),
    b"TS" + os.urandom(100),
    os.urandom(90),
    b"\x17\xfe\xfd" + os.urandom(60),
])
def test_near_misses(payload: bytes) -> None:
    for _, v in run_engine([u(C, S, payload), u(S, C, os.urandom(70))]):
        assert v.protocol != "tailscale" or v.confidence == "port"


def test_fuzz_never_raises() -> None:
    rnd = random.Random(64)
    seeds = [disco(KEY_C), disco(KEY_S, 32), wg_data(7, 1)]

    def raws() -> Iterator[bytes]:
        for i in range(2000):
            data = mutate(rnd, seeds)
            yield bytes(u(C, S, data) if i % 3 else u(S, C, data))

    assert feed_raw(["tailscale"], raws()).classifier_errors == 0
