"""Zoom: join token echoed, STUN-shaped probe answered with type 0x0002, peer hellos; near-misses."""

from __future__ import annotations

import os
import random
import struct

from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, verdicts
from tunnelwatch.classify.zoom import p2p_address

C, S, P = "192.0.2.10", "198.51.100.7", "10.78.14.178"
_R = random.Random(14)  # module constants: fixed bytes, whatever the import order
TOKEN = bytes.fromhex("7d464d35fffda234495d0d6d3b51e896")
JOIN = b"\x01\x00\x02" + TOKEN + bytes(8) + _R.randbytes(80)
JOINED = b"\x02\x00\x01" + TOKEN + _R.randbytes(16)
TID = _R.randbytes(16)
PROBE = b"\x00\x01\x00\x18" + TID + b"\x01\x01\x00\x14" + b"12345678901234567890"
PROBE_ANS = b"\x00\x02\x00\x0c" + TID + b"\x01\x03\x00\x08" + _R.randbytes(8)


def hello(addr: str) -> bytes:
    """A peer-to-peer hello naming `addr` (shape of nDPI's zoom_p2p capture)."""
    text = addr.encode()
    return (b"\x1f\x02\x01\x00\x08\x00\x01\x00\x04\x00" + os.urandom(4) + struct.pack("!II", 7, 0x63)
            + b"\xc1\xb2" + struct.pack("!I", len(text)) + text + struct.pack("!I", 36) + os.urandom(36))


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_join_answered_with_token_is_confirmed_never_alone() -> None:
    v = one_verdict([u(C, S, 58327, 8801, JOIN), u(S, C, 8801, 58327, JOINED)])
    assert (v.klass, v.protocol, v.confidence) == ("voip", "zoom", "confirmed")
    assert one_verdict([u(C, S, 58327, 40000, JOIN)]).klass == "unknown"
    other = b"\x02\x00\x01" + os.urandom(16) + os.urandom(16)
    assert one_verdict([u(C, S, 58327, 40000, JOIN), u(S, C, 40000, 58327, other)]).klass == "unknown"


def test_probe_answered_is_confirmed() -> None:
    v = one_verdict([u(C, S, 23903, 3479, PROBE), u(S, C, 3479, 23903, PROBE_ANS)])
    assert (v.protocol, v.confidence) == ("zoom", "confirmed") and "0x0002" in v.evidence[1]
    assert all(v.protocol != "zoom" for v in verdicts([u(C, S, 23903, 3479, PROBE)]))


def test_peer_hello_naming_its_destination() -> None:
    assert p2p_address(hello(P)) == P and p2p_address(hello("not.an.ip.x")) is None
    v = one_verdict([u(C, P, 49579, 49586, hello(P))])
    assert (v.protocol, v.confidence) == ("zoom", "heuristic")
    v = one_verdict([u(C, P, 49579, 49586, hello(P)), u(P, C, 49586, 49579, hello("192.168.1.128"))])
    assert v.confidence == "confirmed"
    # a hello naming some other address is not taken alone
    assert all(v.protocol != "zoom" for v in verdicts([u(C, P, 49579, 49586, hello("10.9.9.9"))]))


def test_random_and_truncated_bytes_never_raise() -> None:
    rnd = random.Random(7)
    raws = [bytes(u(C, P, 49579, 8801, mutate(rnd, [JOIN, JOINED, PROBE, hello(P)]))) for _ in range(400)]
    assert feed_raw(["zoom"], raws).classifier_errors == 0
