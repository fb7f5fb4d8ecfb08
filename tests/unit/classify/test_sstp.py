"""SSTP in clear (behind TLS offload): request line, server answer, control packets; TLS is not enough."""

from __future__ import annotations

import os
import random
import struct

from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict
from tunnelwatch.classify.sstp import URI, control_packet

C, S = "192.0.2.10", "198.51.100.6"
REQUEST = (b"SSTP_DUPLEX_POST " + URI + b" HTTP/1.1\r\nHost: vpn.example\r\n"
           b"Content-Length: 18446744073709551615\r\n"
           b"SSTPCORRELATIONID: {0F3B6A1C-1111-2222-3333-444455556666}\r\n\r\n")
OK = b"HTTP/1.1 200\r\nContent-Length: 18446744073709551615\r\nServer: Microsoft-HTTPAPI/2.0\r\n\r\n"
# Call Connect Request: version 1.0, control, length 14, type 1, one attribute: encapsulated protocol PPP
CALL_CONNECT = struct.pack("!BBHHH BBH H", 0x10, 0x01, 14, 1, 1, 0, 1, 6, 1)


def t(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags="PA") / Raw(b)


def test_control_packet_parser() -> None:
    assert control_packet(CALL_CONNECT) == "Call Connect Request"
    assert control_packet(b"\x10\x00" + CALL_CONNECT[2:]) == ""  # data packet (C bit clear)
    assert control_packet(CALL_CONNECT[:5]) == ""


def test_request_answered_200_is_confirmed() -> None:
    v = one_verdict([t(C, S, 50000, 80, REQUEST), t(S, C, 80, 50000, OK)])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "sstp", "confirmed")
    assert "http" in v.supersedes


def test_request_then_call_connect_is_confirmed() -> None:
    v = one_verdict([t(C, S, 50001, 80, REQUEST), t(C, S, 50001, 80, CALL_CONNECT)])
    assert (v.protocol, v.confidence) == ("sstp", "confirmed")
    assert any("Call Connect Request" in e for e in v.evidence)


def test_request_alone_is_heuristic_and_refusal_withdraws_it() -> None:
    v = one_verdict([t(C, S, 50002, 80, REQUEST)])
    assert (v.protocol, v.confidence) == ("sstp", "heuristic")
    v = one_verdict([t(C, S, 50003, 80, REQUEST), t(S, C, 80, 50003, b"HTTP/1.1 404 Not Found\r\n\r\n")])
    assert v.protocol != "sstp"


def test_tls_to_443_alone_is_not_sstp() -> None:
    hello = bytes.fromhex("16030100a5010000a10303") + os.urandom(160)
    server_hello = bytes.fromhex("160303003d020000390303") + os.urandom(57)
    pkts = [t(C, S, 50004, 443, hello), t(S, C, 443, 50004, server_hello)]
    pkts += [t(C if i % 2 else S, S if i % 2 else C, 50004 if i % 2 else 443, 443 if i % 2 else 50004,
               b"\x17\x03\x03\x00\x40" + os.urandom(64)) for i in range(20)]
    v = one_verdict(pkts)
    assert not v.flagged and v.protocol == "tls"


def test_ordinary_http_post_is_not_sstp() -> None:
    v = one_verdict([t(C, S, 50005, 80, b"POST " + URI + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
                     t(S, C, 80, 50005, OK)])
    assert not v.flagged


def test_hostile_payloads_never_break_the_classifier() -> None:
    rnd = random.Random(7)
    seeds = [REQUEST, OK, CALL_CONNECT, REQUEST + CALL_CONNECT]
    raws = [bytes(t(C, S, 40000 + i % 11, 443, mutate(rnd, seeds)) if i % 2 else
                  t(S, C, 443, 40000 + i % 11, mutate(rnd, seeds))) for i in range(300)]
    engine = feed_raw(["sstp", "common"], raws)
    assert engine.classifier_errors == 0
