"""Tor: random SNI plus a second fact (random .net certificate or cell-sized records); near-misses: TLS."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from support import one_verdict
from tunnelwatch.classify.tor import CELL_PACKET_SIZES, client_hello_sni

C, S = "192.0.2.10", "198.51.100.7"
NAMES = ["tor", "common"]


def client_hello(sni: bytes | None) -> bytes:
    """A minimal TLS 1.2 ClientHello record, with a server_name extension when sni is given."""
    exts = b""
    if sni is not None:
        entry = b"\x00" + len(sni).to_bytes(2, "big") + sni
        body = len(entry).to_bytes(2, "big") + entry
        exts = b"\x00\x00" + len(body).to_bytes(2, "big") + body
    exts += b"\x00\x0b\x00\x02\x01\x00"  # ec_point_formats, after SNI or alone
    hello = (b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x04\xc0\x2f\x00\x9c" + b"\x01\x00"
             + len(exts).to_bytes(2, "big") + exts)
    hs = b"\x01" + len(hello).to_bytes(3, "big") + hello
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


def server_flight(cert_name: bytes) -> bytes:
    cert = b"\x0b\x00\x01\x00" + b"\x30\x82" + b"CN=" + cert_name + bytes(60)
    body = b"\x02\x00\x00\x46" + bytes(70) + cert
    return b"\x16\x03\x03" + len(body).to_bytes(2, "big") + body


def appdata(n: int, seed: int) -> bytes:
    return b"\x17\x03\x03" + (n - 5).to_bytes(2, "big") + random.Random(seed).randbytes(n - 5)


def t(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags="PA") / Raw(b)


def conv(sni: bytes, cert: bytes, sizes: list[int]) -> list[IP]:
    pk = [t(C, S, 40000, 443, client_hello(sni)), t(S, C, 443, 40000, server_flight(cert))]
    for i, n in enumerate(sizes):
        pk.append(t(C, S, 40000, 443, appdata(n, i)) if i % 2 == 0 else t(S, C, 443, 40000, appdata(n, i)))
    return pk


def test_sni_parser() -> None:
    assert client_hello_sni(client_hello(b"www.example.org")) == b"www.example.org"
    assert client_hello_sni(client_hello(None)) is None
    ch = client_hello(b"www.example.org")
    for cut in range(len(ch)):
        client_hello_sni(ch[:cut])  # truncated hellos never raise


def test_random_sni_and_random_net_certificate() -> None:
    v = one_verdict(conv(b"www.q4cyamnc6mtokj.com", b"www.fcsyvnlemwxv5p.net", []), names=NAMES)
    assert (v.klass, v.protocol, v.confidence) == ("proxy_obfuscated", "tor", "heuristic")


@pytest.mark.parametrize("size", [543, 536, 586])
def test_random_sni_and_cell_sized_records(size: int) -> None:
    assert size in CELL_PACKET_SIZES
    v = one_verdict(conv(b"www.t3i3ru.com", b"www.example.org", [size, size, size]), names=NAMES)
    assert (v.klass, v.protocol) == ("proxy_obfuscated", "tor")


def test_ordinary_name_shape_without_second_fact_stays_tls() -> None:
    # www.facebook.com fits the SNI shape; ordinary record sizes and certificate keep it plain TLS.
    v = one_verdict(conv(b"www.facebook.com", b"www.facebook.com", [300, 1400, 517, 1200]), names=NAMES)
    assert (v.klass, v.protocol) == ("benign", "tls")


@pytest.mark.parametrize("sni", [b"www.example.org", b"mail.q4cyamnc6mtokj.com", b"www.Q4CYAMNC.com",
                                 b"www.q4cyamnc8mtokj.com", b"www.abc.com"])
def test_other_names_are_not_tor(sni: bytes) -> None:
    v = one_verdict(conv(sni, b"www.fcsyvnlemwxv5p.net", [543, 543, 543]), names=NAMES)
    assert v.protocol == "tls"
