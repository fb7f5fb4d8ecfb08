"""PPTP control (cookie, fixed lengths, both ways, TCP segmentation) and GRE (enhanced and plain)."""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import GRE
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict

C, S = "192.0.2.10", "198.51.100.7"
LENGTHS = {1: 156, 2: 156, 5: 16, 6: 20, 7: 168, 8: 32}


def msg(ctype: int, fields: bytes = b"", *, cookie: int = 0x1A2B3C4D, length: int | None = None) -> bytes:
    n = LENGTHS[ctype] if length is None else length
    head = struct.pack("!HHIHH", n, 1, cookie, ctype, 0) + fields
    return head + bytes(max(0, n - len(head)))


def t(src: str, dst: str, sp: int, dp: int, b: bytes, seq: int = 1) -> IP:
    return IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags="PA", seq=seq) / Raw(b)


SCCRQ = msg(1, b"\x01\x00")
SCCRP = msg(2, b"\x01\x00\x01\x00")


def test_sccrq_answered_by_sccrp_is_confirmed() -> None:
    v = one_verdict([t(C, S, 41366, 1723, SCCRQ), t(S, C, 1723, 41366, SCCRP)])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "pptp", "confirmed")
    assert "Start-Control-Connection-Request answered by Reply" in v.evidence


def test_single_request_is_heuristic_and_segmentation_is_handled() -> None:
    v = one_verdict([t(C, S, 41366, 1723, SCCRQ[:10]), t(C, S, 41366, 1723, SCCRQ[10:], 11)])
    assert (v.protocol, v.confidence) == ("pptp", "heuristic")


def test_outgoing_call_reply_echoes_call_id() -> None:
    ocrq = msg(7, struct.pack("!HH", 0x2DEB, 3))
    ocrp = msg(8, struct.pack("!HH", 0x0100, 0x2DEB))
    v = one_verdict([t(C, S, 41366, 1723, ocrq + msg(5)), t(S, C, 1723, 41366, ocrp)])
    assert v.confidence == "confirmed"
    assert "Outgoing-Call-Reply echoes the request's call id" in v.evidence


@pytest.mark.parametrize("payload", [
    msg(1, b"\x01\x00", cookie=0x1A2B3C4E),       # wrong cookie
    msg(1, b"\x01\x00", length=150),              # length does not fit the message type
    bytes.fromhex("160301009a0100009603030000"),  # a TLS ClientHello on 1723
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
])
def test_near_misses_on_1723_are_port_hints(payload: bytes) -> None:
    v = one_verdict([t(C, S, 41366, 1723, payload), t(S, C, 1723, 41366, os.urandom(40))])
    assert v.protocol != "pptp" or v.confidence == "port"


def pptp_gre(call_id: int, ppp: bytes, seq: int = 1) -> bytes:
    return struct.pack("!HHHHI", 0x3001, 0x880B, len(ppp), call_id, seq) + ppp


def test_enhanced_gre_with_inner_ip_is_confirmed() -> None:
    inner = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5060, dport=5060) / Raw(b"x" * 20))
    v = one_verdict([IP(src=C, dst=S, proto=47) / Raw(pptp_gre(0x2DEB, b"\xff\x03\x00\x21" + inner))])
    assert (v.protocol, v.confidence) == ("gre", "confirmed")
    assert "PPTP enhanced GRE" in v.evidence


def test_enhanced_gre_encrypted_ppp_needs_both_directions() -> None:
    ccp = b"\xff\x03\x00\xfd" + os.urandom(60)  # MPPE-compressed/encrypted data: inner not visible
    one = [IP(src=C, dst=S, proto=47) / Raw(pptp_gre(1, ccp))]
    assert one_verdict(one).confidence == "heuristic"
    both = [*one, IP(src=S, dst=C, proto=47) / Raw(pptp_gre(2, ccp))]
    assert one_verdict(both).confidence == "confirmed"


def test_plain_gre_with_inner_ipv4_and_ipv6() -> None:
    v4 = IP(src=C, dst=S) / GRE(proto=0x0800) / IP(src="10.1.1.1", dst="10.2.2.2") / UDP() / Raw(b"a" * 8)
    v6 = IP(src=C, dst=S) / GRE(proto=0x86DD) / IPv6(src="fd00::1", dst="fd00::2") / UDP() / Raw(b"b" * 8)
    for p in (v4, v6):
        v = one_verdict([p])
        assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "gre", "confirmed")


def test_gre_near_misses() -> None:
    unknown_type = IP(src=C, dst=S, proto=47) / Raw(struct.pack("!HH", 0, 0x883E) + os.urandom(40))  # WCCP
    bad_len = IP(src=C, dst=S, proto=47) / Raw(pptp_gre(1, b"\xff\x03\xc0\x21")[:-1])
    reserved = IP(src=C, dst=S, proto=47) / Raw(struct.pack("!HH", 0x0040, 0x0800) + os.urandom(40))
    # IP protocol 47 is GRE whatever the header: tagged from one packet, but only heuristic
    for p in (unknown_type, bad_len, reserved):
        v = one_verdict([p])
        assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "gre", "heuristic")
        assert v.evidence[0].startswith("IP protocol 47")
    assert "payload type 0x883e" in one_verdict([unknown_type]).evidence[0]
    # GRE v0 whose inner IPv4 length disagrees is only heuristic
    broken = IP(src=C, dst=S) / GRE(proto=0x0800) / Raw(bytes(IP(dst="10.0.0.1"))[:-4] + b"zzzzzzzz")
    assert one_verdict([broken]).confidence == "heuristic"


def test_fuzz_never_raises() -> None:
    rnd = random.Random(5)
    seeds = [SCCRQ, SCCRP, msg(7, b"\x00\x01"), pptp_gre(1, b"\xff\x03\x00\x21" + bytes(IP())),
             bytes(GRE(proto=0x6558) / Raw(os.urandom(20)))]

    def raws() -> Iterator[bytes]:
        for i in range(3000):
            data = mutate(rnd, seeds)
            yield bytes(IP(src=C, dst=S, proto=47) / Raw(data)) if rnd.random() < 0.5 else \
                bytes(t(C, S, 1000 + i % 40, 1723, data))

    assert feed_raw(["pptp"], raws()).classifier_errors == 0
