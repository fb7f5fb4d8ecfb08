"""SoftEther: NAT-T probes, PACK datagrams, DDNS registration, the unwrapped handshake; near-misses."""

from __future__ import annotations

import base64
import os
import random
import struct

from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, verdicts
from tunnelwatch.classify.softether import ddns_pack, parse_pack

C, S = "192.0.2.10", "198.51.100.5"


def pack(**elements: int | str | bytes) -> bytes:
    """A SoftEther PACK: count, then (name length + 1, name, type, value count, value) per element."""
    out = struct.pack("!I", len(elements))
    for name, value in elements.items():
        out += struct.pack("!I", len(name) + 1) + name.encode()
        if isinstance(value, int):
            out += struct.pack("!III", 0, 1, value)
        elif isinstance(value, str):
            out += struct.pack("!III", 2, 1, len(value)) + value.encode()
        else:
            out += struct.pack("!III", 1, 1, len(value)) + value
    return out


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def t(src: str, dst: str, sp: int, dp: int, b: bytes, seq: int = 1000) -> IP:
    return IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags="PA", seq=seq) / Raw(b)


def http_post(path: str, ctype: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: vpn.example\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_pack_parser() -> None:
    p = pack(opcode="nat_t_register", tran_id=7, token=b"\x01\x02")
    assert parse_pack(p) == ["opcode", "tran_id", "token"]
    assert parse_pack(p + b"\0") is None     # must fill the datagram exactly
    assert parse_pack(p[:-1]) is None
    for cut in range(len(p)):
        parse_pack(p[:cut])                  # never raises
    assert parse_pack(struct.pack("!I", 1) + struct.pack("!I", 5) + b"a\x01b\x00" + bytes(8)) is None


def test_natt_probe_answered_is_confirmed() -> None:
    v = one_verdict([u(C, S, 51381, 5004, b"A"), u(S, C, 5004, 51381, b"IP=203.0.113.7,PORT=51381")])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "softether", "confirmed")
    assert any("source port" in e for e in v.evidence)


def test_pack_both_ways_is_confirmed_one_way_heuristic() -> None:
    req = pack(opcode="nat_t_register", tran_id=1, product_str="SoftEther OSS")
    rep = pack(isret=1, my_ip="198.51.100.5", ok=1)
    v = one_verdict([u(C, S, 40000, 5004, req), u(S, C, 5004, 40000, rep)])
    assert (v.protocol, v.confidence) == ("softether", "confirmed")
    v = one_verdict([u(C, S, 40001, 5004, req)])
    assert (v.protocol, v.confidence) == ("softether", "heuristic")


def test_ddns_registration_is_heuristic_and_outranks_http() -> None:
    inner = pack(build=9674, ddns_protocol_version=1, key=b"k" * 20)
    body = b"PACK%010X" % len(inner) + base64.b64encode(inner)
    v = one_verdict([t(C, S, 37504, 80, http_post("/ddns/ddns.aspx?v=1", "application/x-www-form-urlencoded",
                                                   body))])
    assert (v.protocol, v.confidence) == ("softether", "heuristic") and "http" in v.supersedes
    assert ddns_pack(b"PACK0000000010not-base64!!!!!!!!!!!") is None


def test_unwrapped_connect_handshake_is_confirmed() -> None:
    req = http_post("/vpnsvc/connect.cgi", "image/jpeg", b"VPNCONNECT")
    hello = pack(hello="SoftEther VPN Server", version=5, build=9674, random=os.urandom(20))
    resp = (f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(hello)}\r\n\r\n").encode() + hello
    v = one_verdict([t(C, S, 50000, 5555, req), t(S, C, 5555, 50000, resp)])
    assert (v.protocol, v.confidence) == ("softether", "confirmed")
    v = one_verdict([t(C, S, 50001, 5555, req)])
    assert (v.protocol, v.confidence) == ("softether", "heuristic")


def test_near_misses_are_not_softether() -> None:
    pkts = [
        # an image upload to a similarly named path
        t(C, S, 50010, 80, http_post("/upload/connect.cgi", "image/jpeg", b"\xff\xd8\xff" + os.urandom(64))),
        # connect.cgi with another content type or body
        t(C, S, 50011, 80, http_post("/vpnsvc/connect.cgi", "text/plain", b"VPNCONNECT")),
        t(C, S, 50012, 80, http_post("/vpnsvc/connect.cgi", "image/jpeg", b"\xff\xd8\xff\xe0JFIF")),
        # a single 'A' answered by something else, "IP=" from the client, zero-prefixed random UDP
        u(C, S, 40010, 5004, b"A"), u(S, C, 5004, 40010, b"hello"),
        u(C, S, 40011, 9999, b"IP=1.2.3.4,PORT=5"),
        u(C, S, 40012, 9999, b"\0\0\0" + os.urandom(60)),
        # TLS to a SoftEther port: the handshake is inside, nothing to see
        t(C, S, 50013, 5555, bytes.fromhex("16030100a5010000a10303") + os.urandom(160)),
    ]
    flagged = [v for v in verdicts(pkts) if v.protocol == "softether"]
    assert not flagged, flagged


def test_hostile_payloads_never_break_the_classifier() -> None:
    rnd = random.Random(6)
    seeds = [pack(opcode="x", tran_id=1), b"IP=1.2.3.4,PORT=5", b"A",
             http_post("/vpnsvc/connect.cgi", "image/jpeg", b"VPNCONNECT"),
             http_post("/ddns/ddns.aspx", "x", b"PACK0000000010" + base64.b64encode(pack(build=1)))]
    raws = []
    for i in range(400):
        m = mutate(rnd, seeds) or b"A"
        sp = 40000 + i % 13
        if i % 3:
            raws.append(bytes(u(C, S, sp, 5004, m) if i % 2 else u(S, C, 5004, sp, m)))
        else:
            raws.append(bytes(t(C, S, sp, 80, m) if i % 2 else t(S, C, 80, sp, m)))
    engine = feed_raw(["softether", "common"], raws)
    assert engine.classifier_errors == 0
