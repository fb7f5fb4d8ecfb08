"""TLS-in-TLS / Trojan: outer records sized as an inner handshake; near-misses: HTTPS, HTTP/2, non-TLS."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict

C, S = "192.0.2.10", "198.51.100.7"
NAMES = ["trojan", "common"]
rnd = random.Random(7)


def rec(ctype: int, n: int) -> bytes:
    """One TLS record with an n-byte (random) body."""
    return bytes([ctype, 3, 3]) + n.to_bytes(2, "big") + rnd.randbytes(n)


def t(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags="PA") / Raw(b)


def c(b: bytes) -> IP:
    return t(C, S, 40000, 443, b)


def s(b: bytes) -> IP:
    return t(S, C, 443, 40000, b)


def hello() -> bytes:
    body = b"\x01\x00\x01\x0c\x03\x03" + bytes(262)
    return b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body


def tls13_handshake() -> list[IP]:
    """Outer TLS 1.3: ClientHello, ServerHello + CCS + encrypted handshake, client CCS + Finished."""
    flight = rec(22, 122) + rec(20, 1) + rec(23, 38) + rec(23, 754) + rec(23, 128) + rec(23, 53)
    return [c(hello()), s(flight), c(rec(20, 1) + rec(23, 53))]


def tls12_handshake() -> list[IP]:
    return [c(hello()), s(rec(22, 80) + rec(22, 2500) + rec(22, 300) + rec(22, 4)),
            c(rec(22, 37) + rec(20, 1) + rec(22, 40)), s(rec(20, 1) + rec(22, 40))]


def inner_handshake(a: int = 602, b: tuple[int, ...] = (1203, 879, 2065, 2065, 474), fin: int = 97,
                    record: int = 23) -> list[IP]:
    """The proxied inner handshake: hello (+ proxy header), server flight, client Finished flight."""
    return [c(rec(record, a)), *[s(rec(record, n)) for n in b], c(rec(record, fin)), c(rec(record, 147)),
            s(rec(record, 665))]


def test_trojan_shape_over_tls13_is_tls_in_tls() -> None:
    v = one_verdict([*tls13_handshake(), *inner_handshake()], names=NAMES)
    assert (v.klass, v.protocol, v.confidence) == ("proxy_obfuscated", "tls_in_tls", "heuristic")
    assert "tls" in v.supersedes
    assert any("585 bytes" in e for e in v.evidence)  # 602 minus the TLS 1.3 record overhead


def test_tls12_carrier_with_small_certificate_chain() -> None:
    v = one_verdict([*tls12_handshake(), *inner_handshake(a=560, b=(1190,), fin=104)], names=NAMES)
    assert v.protocol == "tls_in_tls"


def test_records_split_over_segments_keep_sync() -> None:
    pk = tls13_handshake()
    big = rec(23, 2065)
    pk += [c(rec(23, 602)), s(big[:1448]), s(big[1448:] + rec(23, 1203)), c(rec(23, 97))]
    assert one_verdict(pk, names=NAMES).protocol == "tls_in_tls"


def test_websocket_carrier() -> None:
    req = b"GET /ray HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"

    def frame(n: int, masked: bool) -> bytes:
        hdr = b"\x82" + bytes([(0x80 if masked else 0) | 126]) + n.to_bytes(2, "big")
        return hdr + (b"abcd" if masked else b"") + rnd.randbytes(n)

    pk = [t(C, S, 40000, 80, req), t(S, C, 80, 40000, resp), t(C, S, 40000, 80, frame(691, True))]
    pk += [t(S, C, 80, 40000, frame(n, False)) for n in (2048, 2048, 2048, 667)]
    pk += [t(C, S, 40000, 80, frame(346, True))]
    v = one_verdict(pk, names=NAMES)
    assert (v.klass, v.protocol) == ("proxy_obfuscated", "tls_in_websocket")


@pytest.mark.parametrize(("why", "inner"), [
    ("small first record: an HTTP request, not a hello", dict(a=120)),
    ("server answer too small for a certificate flight", dict(b=(300,))),
    ("server answer is bulk data", dict(b=(16401,) * 2)),
    ("next client record is a second full-size request", dict(fin=700)),
    ("hello-sized burst split into many records", dict(a=150)),
])
def test_https_shapes_stay_tls(why: str, inner: dict[str, object]) -> None:
    v = one_verdict([*tls13_handshake(), *inner_handshake(**inner)], names=NAMES)  # type: ignore[arg-type]
    assert (v.klass, v.protocol) == ("benign", "tls"), why


def test_http2_browser_first_flight_stays_tls() -> None:
    # preface + SETTINGS, then HEADERS: the first record is small, whatever follows
    pk = [*tls12_handshake(), c(rec(23, 164)), c(rec(23, 241)), c(rec(23, 25)),
          *[s(rec(23, 1316)) for _ in range(4)], c(rec(23, 143))]
    assert one_verdict(pk, names=NAMES).protocol == "tls"


def test_server_speaks_first_and_non_tls_are_rejected() -> None:
    assert one_verdict([s(rec(22, 300)), c(rec(23, 602))], names=NAMES).klass != "proxy_obfuscated"
    v = one_verdict([c(b"SSH-2.0-OpenSSH_9.2\r\n"), s(rec(23, 2000)), c(rec(23, 97))], names=NAMES)
    assert v.klass != "proxy_obfuscated"
    v = one_verdict([c(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), s(b"HTTP/1.1 200 OK\r\n\r\n")], names=NAMES)
    assert v.protocol == "http"


def test_hostile_input_never_raises() -> None:
    seeds = [bytes(p[Raw].load) for p in [*tls13_handshake(), *inner_handshake()]]
    r = random.Random(1)
    for i in range(80):
        raws = []
        for j in range(12):
            d = j % 2
            src, dst, sp, dp = (C, S, 40000, 443) if d == 0 else (S, C, 443, 40000)
            raws.append(bytes(t(src, dst, sp, dp, mutate(r, seeds) or b"\x16")))
        assert feed_raw(NAMES, raws).classifier_errors == 0, i


def test_finished_merged_with_first_request_in_one_record() -> None:
    # the proxy read the inner Finished flight and the HTTP request together: one 205-byte record
    v = one_verdict([*tls13_handshake(), *inner_handshake(b=(1187,), fin=205)])
    assert v.protocol == "tls_in_tls"
