"""L2TP: SCCRQ/SCCRP tunnel-id cross-check (v2 and v3), Ns/Nr acks, data messages, near-misses, fuzzing."""

from __future__ import annotations

import os
import random
import struct

from scapy.layers.inet import IP, UDP
from scapy.layers.l2tp import L2TP as ScapyL2TP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict

C, S = "192.0.2.10", "198.51.100.7"


def avp(atype: int, value: bytes, mandatory: bool = True) -> bytes:
    return struct.pack("!HHH", (0x8000 if mandatory else 0) | (6 + len(value)), 0, atype) + value


def control(mtype: int | None, *, tunnel: int = 0, session: int = 0, ns: int = 0, nr: int = 0,
            avps: bytes = b"", version: int = 2) -> bytes:
    body = (avp(0, struct.pack("!H", mtype)) if mtype is not None else b"") + avps
    if version == 2:
        hdr = struct.pack("!HHHHHH", 0xC802, 12 + len(body), tunnel, session, ns, nr)
    else:
        hdr = struct.pack("!HHIHH", 0xC803, 12 + len(body), tunnel, ns, nr)
    return hdr + body


def sccrq(assigned: int = 0x1234, version: int = 2) -> bytes:
    avps = avp(2, b"\x01\x00") + avp(7, b"lac.example")
    avps += avp(9, struct.pack("!H", assigned)) if version == 2 else avp(61, struct.pack("!I", assigned))
    return control(1, avps=avps, version=version)


def sccrp(tunnel: int = 0x1234, version: int = 2) -> bytes:
    avps = avp(2, b"\x01\x00") + avp(7, b"lns.example")
    avps += avp(9, b"\x56\x78") if version == 2 else avp(61, b"\x00\x00\x56\x78")
    return control(2, tunnel=tunnel, nr=1, avps=avps, version=version)


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_sccrq_answered_by_sccrp_is_confirmed() -> None:
    v = one_verdict([u(C, S, 1701, 1701, sccrq()), u(S, C, 1701, 1701, sccrp())])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "l2tp", "confirmed")
    assert "SCCRP addressed to the id assigned in SCCRQ" in v.evidence


def test_l2tpv3_control_connection_id_cross_checked() -> None:
    v = one_verdict([u(C, S, 1701, 1701, sccrq(0xABCDEF01, 3)), u(S, C, 1701, 1701, sccrp(0xABCDEF01, 3))])
    assert (v.protocol, v.confidence) == ("l2tp", "confirmed")
    assert v.evidence[0] == "L2TPv3 SCCRQ"


def test_lone_sccrq_is_heuristic_even_off_port() -> None:
    v = one_verdict([u(C, S, 40000, 1702, sccrq())])
    assert (v.protocol, v.confidence) == ("l2tp", "heuristic")


def test_sccrp_to_the_wrong_tunnel_is_not_confirmed() -> None:
    v = one_verdict([u(C, S, 1701, 1701, sccrq(0x1234)), u(S, C, 1701, 1701, sccrp(0x9999))])
    assert v.confidence == "heuristic"


def test_hello_acknowledged_by_zlb_mid_session() -> None:
    v = one_verdict([u(C, S, 1701, 1701, control(6, tunnel=7, ns=5, nr=9)),
                     u(S, C, 1701, 1701, control(None, tunnel=8, ns=9, nr=6))])
    assert (v.protocol, v.confidence) == ("l2tp", "confirmed")


def data(tunnel: int, session: int, ppp: bytes) -> bytes:
    return struct.pack("!HHHH", 0x4002, 8 + len(ppp), tunnel, session) + ppp


def test_data_messages_both_ways_are_heuristic_and_follow_control() -> None:
    lcp = b"\xff\x03\xc0\x21" + os.urandom(16)
    pkts = [u(C, S, 1701, 1701, data(0x5678, 1, lcp)), u(S, C, 1701, 1701, data(0x1234, 2, lcp))]
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("l2tp", "heuristic")
    v = one_verdict([u(C, S, 1701, 1701, sccrq()), *pkts, u(S, C, 1701, 1701, sccrp())])
    assert v.confidence == "confirmed"


def test_scapy_built_data_message_parses() -> None:
    ppp = b"\xff\x03\x00\x21" + bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2))
    a = bytes(ScapyL2TP(hdr="length", tunnel_id=0x5678, session_id=1, len=8 + len(ppp)) / Raw(ppp))
    b = bytes(ScapyL2TP(hdr="length", tunnel_id=0x1234, session_id=2, len=8 + len(ppp)) / Raw(ppp))
    v = one_verdict([u(C, S, 1701, 1701, a), u(S, C, 1701, 1701, b)])
    assert v.protocol == "l2tp"


def test_near_misses_are_only_port_hints() -> None:
    rnd = random.Random(3)
    bad_first_avp = control(None, avps=avp(7, b"host") + avp(0, b"\x00\x01"))
    bad_length = sccrq()[:-1]
    bad_chain = sccrq() + b"\x80"
    random_udp = rnd.randbytes(120)
    dns = bytes.fromhex("12340100000100000000000003777777076578616d706c6503636f6d0000010001")
    for p in (bad_first_avp, bad_length, bad_chain, random_udp, dns):
        v = one_verdict([u(C, S, 1701, 1701, p), u(S, C, 1701, 1701, p)])
        assert v.confidence == "port", p.hex()


def test_fuzz_never_raises() -> None:
    rnd = random.Random(99)
    seeds = [sccrq(), sccrp(), sccrq(5, 3), data(1, 2, b"\xff\x03\xc0\x21\x01\x01\x00\x04"),
             control(None, tunnel=3)]
    raws = (bytes(u(C, S, 1000 + i % 50, 1701, mutate(rnd, seeds))) for i in range(3000))
    assert feed_raw(["l2tp"], raws).classifier_errors == 0
