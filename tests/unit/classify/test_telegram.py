"""Telegram reflector: peer tag + 0xff marker, confirmed by the reflector's answer; near-misses."""

from __future__ import annotations

import os
import random

from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, verdicts

C, S = "192.0.2.10", "198.51.100.7"
_R = random.Random(14)  # module constants: fixed bytes, whatever the import order
TAG = bytes.fromhex("dc4c00291565b7acbc236da9eda0d597")
FF = b"\xff" * 12
PING = TAG + FF + b"\xfe\xff\xff\xff" + _R.randbytes(8)
PONG = TAG + FF + bytes.fromhex("c77215c060dab25e") + PING[32:40] + bytes(4)
MEDIA = TAG + _R.randbytes(80)


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_reflector_answer_confirms() -> None:
    v = one_verdict([u(C, S, 23174, 521, PING), u(S, C, 521, 23174, PONG), u(S, C, 521, 23174, MEDIA)])
    assert (v.klass, v.protocol, v.confidence) == ("voip", "telegram_call", "confirmed")
    assert one_verdict([u(C, S, 23174, 521, PING)]).confidence == "heuristic"
    other = os.urandom(16) + FF + PONG[28:]
    assert one_verdict([u(C, S, 23174, 521, PING), u(S, C, 521, 23174, other)]).confidence == "heuristic"


def test_near_misses() -> None:
    for p in (b"\xff" * 40, TAG + b"\xff" * 11 + b"\x00" + os.urandom(12), PING[:31], MEDIA):
        assert all(v.protocol != "telegram_call" for v in verdicts([u(C, S, 23174, 521, p)]))


def test_random_and_truncated_bytes_never_raise() -> None:
    rnd = random.Random(7)
    raws = [bytes(u(C, S, 23174, 521, mutate(rnd, [PING, PONG]))) for _ in range(400)]
    assert feed_raw(["telegram"], raws).classifier_errors == 0
