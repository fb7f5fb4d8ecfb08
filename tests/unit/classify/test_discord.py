"""Discord voice: keep-alive echo and IP discovery confirmed; lone messages heuristic; near-misses."""

from __future__ import annotations

import os
import random
import struct

from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, verdicts

C, S = "192.0.2.10", "198.51.100.7"
KEEPALIVE = bytes.fromhex("1337cafe0e000000")
SSRC = struct.pack("!I", 0x0001E240)
DISCOVERY = b"\x00\x01\x00\x46" + SSRC + bytes(66)
ANSWER = b"\x00\x02\x00\x46" + SSRC + C.encode().ljust(64, b"\x00") + struct.pack("!H", 56271)


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_keepalive_echoed_is_confirmed_and_alone_heuristic() -> None:
    v = one_verdict([u(C, S, 56271, 50004, KEEPALIVE), u(S, C, 50004, 56271, KEEPALIVE)])
    assert (v.klass, v.protocol, v.confidence) == ("voip", "discord", "confirmed")
    assert v.evidence[1] == "the server echoes the keep-alive"
    assert one_verdict([u(C, S, 56271, 50004, KEEPALIVE)]).confidence == "heuristic"
    other = bytes.fromhex("1337cafe0f000000")  # another counter is not the echo
    pkts = [u(C, S, 56271, 50004, KEEPALIVE), u(S, C, 50004, 56271, other)]
    assert one_verdict(pkts).confidence == "heuristic"


def test_ip_discovery_answered_with_same_ssrc_is_confirmed() -> None:
    v = one_verdict([u(C, S, 56271, 50001, DISCOVERY), u(S, C, 50001, 56271, ANSWER)])
    assert (v.protocol, v.confidence) == ("discord", "confirmed") and "same SSRC" in v.evidence[1]
    wrong = b"\x00\x02\x00\x46" + b"\x00\x00\x00\x01" + ANSWER[8:]
    pkts = [u(C, S, 56271, 50001, DISCOVERY), u(S, C, 50001, 56271, wrong)]
    assert one_verdict(pkts).confidence == "heuristic"


def test_near_misses() -> None:
    for p in (KEEPALIVE + b"\x00", DISCOVERY[:73], b"\x00\x01\x00\x45" + DISCOVERY[4:], os.urandom(8)):
        assert all(v.protocol != "discord" for v in verdicts([u(C, S, 56271, 50004, p)]))


def test_random_and_truncated_bytes_never_raise() -> None:
    rnd = random.Random(7)
    raws = [bytes(u(C, S, 56271, 50004, mutate(rnd, [KEEPALIVE, DISCOVERY, ANSWER]))) for _ in range(400)]
    assert feed_raw(["discord"], raws).classifier_errors == 0
