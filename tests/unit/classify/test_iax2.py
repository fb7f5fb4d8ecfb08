"""IAX2: NEW answered by a frame naming the caller's call number is confirmed; near-misses rejected."""

from __future__ import annotations

import os
import random
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, verdicts
from tunnelwatch.classify.iax2 import full_frame, ies_walk, opener

C, S = "192.0.2.10", "198.51.100.7"
VERSION = b"\x0b\x02\x00\x02"
CALLED = b"\x01\x0b" + b"18005551234"
FORMAT = b"\x09\x04\x00\x00\x00\x04"


def frame(scall: int, dcall: int, ts: int, oseq: int, iseq: int, ftype: int, sub: int,
          ies: bytes = b"") -> bytes:
    return struct.pack("!HHIBBBB", 0x8000 | scall, dcall, ts, oseq, iseq, ftype, sub) + ies


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def call(port: int = 4569) -> list[IP]:
    return [u(C, S, 4570, port, frame(3, 0, 1, 0, 0, 6, 0x01, VERSION + CALLED + FORMAT)),
            u(S, C, port, 4570, frame(0x17, 3, 2, 0, 1, 6, 0x04)),  # ACK
            u(S, C, port, 4570, frame(0x17, 3, 8, 0, 1, 6, 0x07, FORMAT)),  # ACCEPT
            u(C, S, 4570, port, frame(3, 0x17, 9, 1, 1, 6, 0x04)),
            u(C, S, 4570, port, b"\x00\x03\x00\x10" + os.urandom(160))]  # mini frame (voice)


def test_header_parsing_and_element_walk() -> None:
    new = frame(3, 0, 1, 0, 0, 6, 0x01, VERSION + CALLED)
    f = full_frame(new)
    assert f is not None and (f.scall, f.dcall, f.subclass) == (3, 0, 1) and opener(f, new)
    assert ies_walk(new) and not ies_walk(new[:-1])
    assert full_frame(new[:-1]) is None  # the element walk overruns
    assert full_frame(new[:11]) is None
    assert full_frame(b"\x00" + new[1:]) is None  # a mini frame, not a full frame
    no_version = frame(3, 0, 1, 0, 0, 6, 0x01, CALLED)
    f2 = full_frame(no_version)
    assert f2 is not None and not opener(f2, no_version)


@pytest.mark.parametrize("port", [4569, 40000])
def test_new_answered_naming_the_callers_call_number_is_confirmed(port: int) -> None:
    v = one_verdict(call(port))
    assert (v.klass, v.protocol, v.confidence) == ("voip", "iax2", "confirmed")
    assert "NEW" in v.evidence[0] and "call number 3" in v.evidence[1]


def test_new_alone_is_heuristic_and_a_wrong_echo_does_not_confirm() -> None:
    v = one_verdict(call()[:1])
    assert (v.protocol, v.confidence) == ("iax2", "heuristic")
    wrong = [call()[0], u(S, C, 4569, 4570, frame(0x17, 9, 2, 0, 1, 6, 0x04))]
    assert one_verdict(wrong).confidence == "heuristic"


def test_mid_call_capture_on_port_4569_starts_with_mini_frames() -> None:
    pkts = [u(C, S, 4570, 4569, b"\x00\x03\x00\x10" + os.urandom(160)),
            u(C, S, 4570, 4569, frame(3, 0x17, 900, 5, 4, 6, 0x02)),  # PING
            u(S, C, 4569, 4570, frame(0x17, 3, 901, 4, 6, 6, 0x03))]  # PONG
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("iax2", "confirmed")


@pytest.mark.parametrize("payload", [
    bytes.fromhex("abcd01000001000000000000") + b"\x03www\x07example\x03com\x00\x00\x01\x00\x01",  # DNS
    b"\xc3\x00\x00\x00\x01\x08" + os.urandom(40),  # QUIC long header
    b"\x17\x03\x03\x00\x20" + os.urandom(32),  # TLS-like
    frame(3, 0, 1, 0, 0, 6, 0x01, CALLED),  # NEW without VERSION away from 4569
    frame(3, 0, 1, 0, 0, 2, 0x04, os.urandom(20)),  # a voice full frame cannot open a flow on any port
    frame(3, 0, 1, 0, 0, 6, 0x50),  # unknown subclass
])
def test_near_misses_are_not_iax2(payload: bytes) -> None:
    pkts = [u(C, S, 40000, 27015, payload), u(S, C, 27015, 40000, os.urandom(60))]
    assert all(v.protocol != "iax2" for v in verdicts(pkts))


def test_random_and_truncated_bytes_never_raise() -> None:
    rnd = random.Random(6)
    seeds = [bytes(p[Raw].load) for p in call()]
    raws = [bytes(u(C, S, 4570, 4569, mutate(rnd, seeds))) for _ in range(400)]
    assert feed_raw(["iax2"], raws).classifier_errors == 0
