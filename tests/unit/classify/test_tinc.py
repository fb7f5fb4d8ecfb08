"""Tinc: ID lines both ways confirm the meta connection, which announces the node's UDP data port."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from support import feed_raw, mutate, run_engine
from tunnelwatch.classify.tinc import id_line, metakey_prefix

C, S = "192.0.2.10", "198.51.100.7"
C6, S6 = "2001:db8:1::10", "2001:db8:2::7"
METAKEY = b"1 94 64 0 0 " + b"A1B2C3D4" * 64 + b"\n"


def t(src: str, dst: str, sp: int, dp: int, b: bytes, v6: bool = False) -> IP | IPv6:
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    return ip / TCP(sport=sp, dport=dp, flags="PA") / Raw(b)


def u(src: str, dst: str, sp: int, dp: int, b: bytes, v6: bool = False) -> IP | IPv6:
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    return ip / UDP(sport=sp, dport=dp) / Raw(b)


def meta(v6: bool = False, client_id: bytes = b"0 alice 17\n",
         server_id: bytes = b"0 bob 17\n") -> list[IP | IPv6]:
    c, s = (C6, S6) if v6 else (C, S)
    return [t(c, s, 40000, 655, client_id, v6), t(s, c, 655, 40000, server_id, v6),
            t(c, s, 40000, 655, METAKEY, v6), t(s, c, 655, 40000, METAKEY, v6)]


def by_transport(pkts: list[IP | IPv6]) -> dict[str, tuple[str, str, str]]:
    out = {}
    for f, v in run_engine(pkts):
        out["tcp" if f.proto == 6 else "udp"] = (v.klass, v.protocol, v.confidence)
    return out


@pytest.mark.parametrize("v6", [False, True])
def test_meta_connection_confirmed_and_udp_data_paired(v6: bool) -> None:
    c, s = (C6, S6) if v6 else (C, S)
    data = [u(c, s, 655, 655, os.urandom(n), v6) for n in (120, 600, 90)]
    got = by_transport(meta(v6) + data)
    assert got["tcp"] == ("vpn_tunnel", "tinc", "confirmed")
    assert got["udp"] == ("vpn_tunnel", "tinc", "confirmed")


def test_tinc_1_1_minor_version_accepted() -> None:
    got = by_transport(meta(client_id=b"0 alice 17.7\n", server_id=b"0 bob 17.7\n")[:2])
    assert got["tcp"] == ("vpn_tunnel", "tinc", "confirmed")


def test_one_sided_id_line_is_heuristic_and_split_line_is_reassembled() -> None:
    got = by_transport([t(C, S, 40000, 655, b"0 ali"), t(C, S, 40000, 655, b"ce 17\n")])
    assert got["tcp"] == ("vpn_tunnel", "tinc", "heuristic")


def test_udp_without_meta_connection_is_not_tinc() -> None:
    got = by_transport([u(C, S, 40001, 40002, os.urandom(200)) for _ in range(6)])
    assert got["udp"][1] != "tinc"


def test_udp_to_other_port_of_a_tinc_node_is_not_tinc() -> None:
    got = by_transport(meta() + [u(C, S, 5000, 5001, os.urandom(200)) for _ in range(4)])
    assert got["udp"][1] != "tinc"


@pytest.mark.parametrize("first", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32),
    b"SSH-2.0-OpenSSH_9.2\r\n",
    b"0 alice 18\n",  # not protocol 17
    b"0 al ice 17\n",  # space in name
    b"0 " + b"a" * 200,  # no newline within bounds
])
def test_near_misses_rejected(first: bytes) -> None:
    got = by_transport([t(C, S, 40000, 655, first), t(S, C, 655, 40000, b"0 bob 17\n")])
    assert got["tcp"][1] != "tinc" or got["tcp"][2] == "port"


def test_mismatched_major_versions_reject() -> None:
    got = by_transport([t(C, S, 40000, 4000, b"0 alice 17\n"), t(S, C, 4000, 40000, b"0 bob 17x\n")])
    assert got["tcp"][1] != "tinc"


def test_line_parsers() -> None:
    assert id_line(b"0 node_1 17") == "17"
    assert id_line(b"0 node 17.7") == "17.7"
    assert id_line(b"0  17") == "" and id_line(b"1 node 17") == "" and id_line(b"0 n 17.x") == ""
    assert metakey_prefix(METAKEY) and not metakey_prefix(b"1 a b c d ef\n")


def test_fuzz_never_raises() -> None:
    rnd = random.Random(66)
    seeds = [b"0 alice 17\n", b"0 bob 17.7\n" + METAKEY[:40], METAKEY, os.urandom(80)]

    def raws() -> Iterator[bytes]:
        for i in range(2000):
            data = mutate(rnd, seeds)
            yield bytes(t(C, S, 1000 + i % 50, 655, data) if i % 3 else t(S, C, 655, 1000 + i % 50, data))

    assert feed_raw(["tinc"], raws()).classifier_errors == 0
