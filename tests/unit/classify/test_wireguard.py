"""WireGuard: handshake indices matched across directions; data-only heuristic; near-misses rejected."""

from __future__ import annotations

import os

from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import one_verdict, run_engine

C, S = "192.0.2.10", "198.51.100.7"
I_IDX, R_IDX = 0x01020304, 0x0A0B0C0D


def le(n: int, size: int = 4) -> bytes:
    return n.to_bytes(size, "little")


def initiation(idx: int = I_IDX) -> bytes:
    return b"\x01\x00\x00\x00" + le(idx) + os.urandom(140)


def response(sender: int = R_IDX, receiver: int = I_IDX) -> bytes:
    return b"\x02\x00\x00\x00" + le(sender) + le(receiver) + os.urandom(80)


def data(receiver: int, counter: int, n: int = 64) -> bytes:
    return b"\x04\x00\x00\x00" + le(receiver) + le(counter, 8) + os.urandom(n)


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_handshake_confirmed_on_any_port() -> None:
    v = one_verdict([u(C, S, 40000, 443, initiation()), u(S, C, 443, 40000, response())])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "wireguard", "confirmed")


def test_response_with_wrong_receiver_index_is_rejected() -> None:
    v = one_verdict([u(C, S, 40000, 443, initiation()), u(S, C, 443, 40000, response(receiver=0x999))])
    assert v.confidence != "confirmed"


def test_wrong_sizes_or_reserved_bytes_reject() -> None:
    bad_size = b"\x01\x00\x00\x00" + os.urandom(150)
    bad_reserved = b"\x01\x01\x00\x00" + os.urandom(144)
    for payload in (bad_size, bad_reserved):
        v = one_verdict([u(C, S, 40000, 443, payload)])
        assert v.protocol != "wireguard"


def test_transport_data_two_each_way_is_heuristic_three_confirmed() -> None:
    pkts = []
    for i in range(3):
        pkts.append(u(C, S, 40000, 51821, data(R_IDX, i)))
        pkts.append(u(S, C, 51821, 40000, data(I_IDX, i, 96)))
    v = one_verdict(pkts[:4])
    assert (v.protocol, v.confidence) == ("wireguard", "heuristic")
    # a third message each way: fixed type and reserved bytes, one index per direction and rising counters
    # on six messages (a flow first seen mid-session must be blockable from a short later window)
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("wireguard", "confirmed")


def test_data_with_unaligned_length_or_falling_counter_rejects() -> None:
    unaligned = [u(C, S, 40000, 51821, data(R_IDX, i, 65)) for i in range(3)]
    falling = [u(C, S, 40000, 51821, data(R_IDX, 5 - i)) for i in range(3)] + \
              [u(S, C, 51821, 40000, data(I_IDX, 5 - i)) for i in range(3)]
    for pkts in (unaligned, falling):
        for _, v in run_engine(pkts):
            assert v.protocol != "wireguard" or v.confidence == "port"
