"""TeamSpeak 3: client Init1 heuristic, the server's Init1 confirms; the server-list exchange; near-misses."""

from __future__ import annotations

import os
import random
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, verdicts
from tunnelwatch.classify.teamspeak import client_init, server_init

C, S = "192.0.2.10", "198.51.100.7"
_R = random.Random(14)  # module constants: fixed bytes, whatever the import order
VERSION = struct.pack("!I", 0x5F5916E0)
# client Init1 step 0: MAC, packet id 101, client id 0, type 0x88, version, step 0, time, random, 8 zeros
INIT0 = (b"TS3INIT1" + b"\x00\x65\x00\x00\x88" + VERSION + b"\x00" + bytes.fromhex("5f5916e0ade76b61")
         + bytes(8))
# server Init1 step 1: MAC, packet id 101, type 0x88, step 1, 16 random bytes, the client's 4 reversed
INIT1 = b"TS3INIT1" + b"\x00\x65\x88" + b"\x01" + _R.randbytes(16) + b"\x61\x6b\xe7\xad"
LIST_REQ = bytes.fromhex("01808401")
LIST_ANS = LIST_REQ + bytes.fromhex("7c65d9a7")
LIST_STEP2 = bytes.fromhex("018184027c65d9a70327200000000000")


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_init_parsers() -> None:
    assert client_init(INIT0) == 0 and server_init(INIT1) == 1
    assert client_init(INIT1) is None and server_init(INIT0) is None
    assert client_init(b"TS3INIT2" + INIT0[8:]) is None
    assert client_init(INIT0[:10] + b"\x00\x01" + INIT0[12:]) is None  # client id must be 0


@pytest.mark.parametrize("port", [9987, 40000])
def test_init_answered_by_server_init_is_confirmed(port: int) -> None:
    v = one_verdict([u(C, S, 53187, port, INIT0), u(S, C, port, 53187, INIT1)])
    assert (v.klass, v.protocol, v.confidence) == ("voip", "teamspeak", "confirmed")
    assert "TS3INIT1" in v.evidence[0] and "server answers with Init1 step 1" in v.evidence[1]


def test_lone_client_init_is_heuristic() -> None:
    pkts = [u(C, S, 53187, 9987, INIT0), u(C, S, 53187, 9987, os.urandom(180)), u(C, S, 53187, 9987, INIT0)]
    assert one_verdict(pkts).confidence == "heuristic"


def test_server_list_exchange_is_confirmed_only_when_answered() -> None:
    pkts = [u(C, S, 2011, 2010, LIST_REQ), u(S, C, 2010, 2011, LIST_ANS), u(C, S, 2011, 2010, LIST_STEP2)]
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("teamspeak", "confirmed") and "cookie" in v.evidence[1]
    assert one_verdict(pkts[:1]).klass == "unknown"  # 4 bytes alone prove nothing
    wrong = [u(C, S, 2011, 2010, LIST_REQ), u(S, C, 2010, 2011, bytes.fromhex("018084027c65d9a7"))]
    assert one_verdict(wrong).klass == "unknown"


@pytest.mark.parametrize("payload", [
    b"TS3INIT1",  # the MAC alone
    INIT0[:12] + b"\x82" + INIT0[13:],  # type 2 (command), not Init1
    INIT0[:17] + b"\x01" + INIT0[18:],  # step 1 is the server's
    os.urandom(34),
])
def test_near_misses_are_not_teamspeak(payload: bytes) -> None:
    pkts = [u(C, S, 40000, 9987, payload), u(S, C, 9987, 40000, INIT1)]
    assert all(v.protocol != "teamspeak" or v.confidence == "port" for v in verdicts(pkts))


def test_random_and_truncated_bytes_never_raise() -> None:
    rnd = random.Random(7)
    raws = [bytes(u(C, S, 53187, 9987, mutate(rnd, [INIT0, INIT1, LIST_ANS]))) for _ in range(400)]
    assert feed_raw(["teamspeak"], raws).classifier_errors == 0
