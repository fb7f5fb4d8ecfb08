"""MGCP: a command answered with its transaction id is confirmed; responses alone and near-misses are not."""

from __future__ import annotations

import os
import random

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, verdicts
from tunnelwatch.classify.mgcp import command, response

GW, CA = "192.0.2.10", "198.51.100.7"
CRCX = (b"CRCX 1204 aaln/1@rgw-2567.whatever.net MGCP 1.0\r\nC: A3C47F21456789F0\r\nL: p:10, a:PCMU\r\n"
        b"M: recvonly\r\n")
OK = b"200 1204 OK\r\nI: FDE234C8\r\n\r\nv=0\r\nc=IN IP4 128.96.41.1\r\nm=audio 3456 RTP/AVP 0\r\n"


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_command_and_response_lines() -> None:
    assert command(CRCX) == ("CRCX", 1204)
    assert command(b"RSIP 31656860 *@gw44.example MGCP 1.0\nRM: restart\n") == ("RSIP", 31656860)
    assert command(b"RQNT 1 *@gateway44.example MGCP 0.1\rR: l/hd(n)\r") == ("RQNT", 1)  # lone CR
    assert command(b"RQNT 1 gateway44 MGCP 1.0\r\n") is None  # endpoint without @
    assert command(b"CRCX 12345678901 a@b MGCP 1.0\r\n") is None  # transaction id too long
    assert command(b"CRCX 1 a@b MGCP 2.0\r\n") is None
    assert command(b"GETX 1 a@b MGCP 1.0\r\n") is None
    assert response(OK) == (200, 1204) and response(b"200 262662134 \n") == (200, 262662134)
    assert response(b"220 smtp.example.com ESMTP\r\n") is None


@pytest.mark.parametrize("port", [2427, 2727, 40000])
def test_command_answered_with_its_transaction_id_is_confirmed(port: int) -> None:
    v = one_verdict([u(CA, GW, 2727, port, CRCX), u(GW, CA, port, 2727, OK)])
    assert (v.klass, v.protocol, v.confidence) == ("voip", "mgcp", "confirmed")
    assert v.evidence[0].startswith("CRCX command") and "200 response matches the CRCX" in v.evidence[1]


def test_lone_command_is_heuristic_and_other_tid_does_not_confirm() -> None:
    assert one_verdict([u(CA, GW, 2727, 2427, CRCX)]).confidence == "heuristic"
    v = one_verdict([u(CA, GW, 2727, 2427, CRCX), u(GW, CA, 2427, 2727, b"200 999 OK\r\n")])
    assert (v.protocol, v.confidence) == ("mgcp", "heuristic")


def test_responses_alone_are_never_flagged() -> None:
    pkts = [u(GW, CA, 2427, 2727, b"200 %d OK\r\n" % i) for i in range(6)]
    assert all(v.klass != "voip" or v.confidence == "port" for v in verdicts(pkts))


@pytest.mark.parametrize("payload", [
    b"NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n\r\n",  # SSDP
    b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n\r\n",
    b"INVITE sip:bob@example.org SIP/2.0\r\n\r\n",
    b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12),  # STUN
    b"220 ftp.example.org ready\r\n",
    os.urandom(80),
])
def test_near_misses_are_not_mgcp(payload: bytes) -> None:
    pkts = [u(CA, GW, 40000, 41000, payload), u(GW, CA, 41000, 40000, b"200 1 OK\r\n")]
    assert all(v.protocol != "mgcp" for v in verdicts(pkts))


def test_random_and_truncated_bytes_never_raise() -> None:
    rnd = random.Random(7)
    raws = [bytes(u(CA, GW, 2727, 2427, mutate(rnd, [CRCX, OK]))) for _ in range(400)]
    assert feed_raw(["mgcp"], raws).classifier_errors == 0
