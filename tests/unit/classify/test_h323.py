"""H.323: Q.931 call references both ways, H.245 OIDs both ways, RAS sequence numbers; near-misses."""

from __future__ import annotations

import os
import random
import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, verdicts
from tunnelwatch.classify.h323 import H225_OID, q931, ras, tpkt_length

C, S = "192.0.2.10", "198.51.100.7"
UUIE = b"\x7e\x00\x20\x05" + b"\x20\xa8" + H225_OID + b"\x04" + os.urandom(20)


def tpkt(body: bytes) -> bytes:
    return struct.pack("!BBH", 3, 0, 4 + len(body)) + body


def q931_msg(mtype: int, ref: int, flag: bool, ies: bytes = UUIE) -> bytes:
    return bytes([0x08, 0x02, (0x80 if flag else 0) | (ref >> 8), ref & 0xFF, mtype]) + ies


SETUP = tpkt(q931_msg(0x05, 0x77F4, False, b"\x04\x03\x80\x90\xa5" + UUIE))
PROCEEDING = tpkt(q931_msg(0x02, 0x77F4, True))
CONNECT = tpkt(q931_msg(0x07, 0x77F4, True))
H245_TCS = tpkt(b"\x02\x30\x01\x06\x00\x08\x81\x75\x00\x05" + os.urandom(20))
H245_REPLY = tpkt(b"\x02\x70\x01\x06\x00\x08\x81\x75\x00\x07" + os.urandom(30))


def ras_msg(choice: int, seq: int) -> bytes:
    return bytes([choice << 2, 0x20]) + struct.pack("!H", seq) + H225_OID + b"\x04" + os.urandom(20)


def t(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags="PA") / Raw(b)


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_parsers() -> None:
    assert tpkt_length(SETUP) == len(SETUP) and tpkt_length(b"\x03\x00\x00\x03") == -1
    assert q931(SETUP[4:]) == (0x05, 0x77F4, False)
    assert q931(PROCEEDING[4:]) == (0x02, 0x77F4, True)
    assert q931(b"\x08\x02\x00\x01\x99") is None  # unknown message type
    assert q931(b"\x09" + SETUP[5:]) is None
    assert ras(ras_msg(3, 0x4692)) == (3, 0x4692)
    assert ras(ras_msg(3, 1)[:10]) is None


def test_setup_answered_with_the_same_call_reference_is_confirmed() -> None:
    v = one_verdict([t(C, S, 40000, 1720, SETUP), t(S, C, 1720, 40000, PROCEEDING),
                     t(S, C, 1720, 40000, CONNECT)])
    assert (v.klass, v.protocol, v.confidence) == ("voip", "h323", "confirmed")
    assert "SETUP" in v.evidence[0]


def test_tpkt_header_in_its_own_segment_and_a_split_message() -> None:
    v = one_verdict([t(C, S, 40000, 1720, SETUP[:4]), t(C, S, 40000, 1720, SETUP[4:]),
                     t(S, C, 1720, 40000, PROCEEDING[:20]), t(S, C, 1720, 40000, PROCEEDING[20:] + CONNECT)])
    assert (v.protocol, v.confidence) == ("h323", "confirmed")


def test_one_way_or_mismatched_reference_is_heuristic() -> None:
    assert one_verdict([t(C, S, 40000, 1720, SETUP)]).confidence == "heuristic"
    other = tpkt(q931_msg(0x02, 0x1234, True))
    assert one_verdict([t(C, S, 40000, 1720, SETUP), t(S, C, 1720, 40000, other)]).confidence == "heuristic"


def test_h245_on_a_negotiated_port_both_ways() -> None:
    v = one_verdict([t(S, C, 1232, 40002, H245_TCS), t(C, S, 40002, 1232, H245_REPLY)])
    assert (v.protocol, v.confidence) == ("h323", "confirmed")


@pytest.mark.parametrize("port", [1719, 41000])
def test_ras_request_and_confirm(port: int) -> None:
    v = one_verdict([u(C, S, 1719, port, ras_msg(3, 0x4692)), u(S, C, port, 1719, ras_msg(4, 0x4692))])
    assert (v.protocol, v.confidence) == ("h323", "confirmed")
    assert "RegistrationConfirm answers RegistrationRequest" in v.evidence[1]
    wrong = one_verdict([u(C, S, 1719, port, ras_msg(3, 0x4692)), u(S, C, port, 1719, ras_msg(4, 0x4693))])
    assert wrong.confidence == "heuristic"


@pytest.mark.parametrize(("proto", "payload"), [
    # RDP connection request (X.224 CR)
    ("tcp", tpkt(b"\x0e\xe0\x00\x00\x00\x00\x00Cookie: mstshash=x\r\n\x01\x00\x08\x00\x0b\x00\x00\x00")),
    ("tcp", tpkt(b"\x02\xf0\x80\x32\x01\x00\x00\x00\x01\x00\x08\x00\x00")),  # S7comm over ISO-TSAP
    ("tcp", b"\x16\x03\x01\x00\xa0\x01" + os.urandom(60)),
    ("udp", bytes.fromhex("abcd01000001000000000000") + b"\x03www\x07example\x03com\x00\x00\x01\x00\x01"),
    ("udp", os.urandom(80)),
])
def test_near_misses_are_not_h323(proto: str, payload: bytes) -> None:
    mk = t if proto == "tcp" else u
    pkts = [mk(C, S, 40000, 3389, payload), mk(S, C, 3389, 40000, payload)]
    assert all(v.protocol != "h323" for v in verdicts(pkts))


def test_random_and_truncated_bytes_never_raise() -> None:
    rnd = random.Random(9)
    raws = [bytes(t(C, S, 40000, 1720, mutate(rnd, [SETUP, H245_TCS]))) for _ in range(300)]
    raws += [bytes(u(C, S, 1719, 1719, mutate(rnd, [ras_msg(3, 7), ras_msg(0, 1)]))) for _ in range(300)]
    assert feed_raw(["h323"], raws).classifier_errors == 0
