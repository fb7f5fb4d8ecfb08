"""The shared ClientHello parser: SNI and ALPN, truncated hellos, records split in several, hostile bytes."""

from __future__ import annotations

import random
import struct

from tunnelwatch.classify.tlsname import clean_name, client_hello_sni, parse_hello, record_hello


def ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def sni_ext(name: bytes) -> bytes:
    entry = b"\x00" + struct.pack("!H", len(name)) + name
    return ext(0, struct.pack("!H", len(entry)) + entry)


def alpn_ext(*protos: bytes) -> bytes:
    lst = b"".join(bytes([len(p)]) + p for p in protos)
    return ext(16, struct.pack("!H", len(lst)) + lst)


def hello_msg(sni: bytes | None = b"vpn.example.com", alpn: tuple[bytes, ...] = (b"h2", b"http/1.1"),
              pad: int = 0, sni_last: bool = False) -> bytes:
    """A TLS 1.3-style ClientHello handshake message (type, length, body)."""
    exts = [alpn_ext(*alpn)] if alpn else []
    exts.append(ext(0x002B, b"\x02\x03\x04"))
    if pad:
        exts.append(ext(21, bytes(pad)))  # padding extension: pushes what follows into later segments
    if sni is not None:
        exts.insert(len(exts) if sni_last else 0, sni_ext(sni))
    e = b"".join(exts)
    body = (b"\x03\x03" + bytes(range(32)) + b"\x20" + bytes(32) + b"\x00\x04\x13\x01\x13\x02" + b"\x01\x00"
            + struct.pack("!H", len(e)) + e)
    return b"\x01" + len(body).to_bytes(3, "big") + body


def client_hello(sni: bytes | None = b"vpn.example.com", **kw: object) -> bytes:
    """The same hello in one TLS record."""
    m = hello_msg(sni, **kw)  # type: ignore[arg-type]
    return b"\x16\x03\x01" + struct.pack("!H", len(m)) + m


def test_sni_and_alpn() -> None:
    h = record_hello(client_hello(b"VPN.Example.COM."))
    assert h is not None and h.sni == "vpn.example.com" and h.alpn == ("h2", "http/1.1") and h.complete
    assert client_hello_sni(client_hello(b"www.example.org")) == b"www.example.org"


def test_no_sni() -> None:
    h = record_hello(client_hello(None))
    assert h is not None and h.sni is None and h.complete
    assert client_hello_sni(client_hello(None)) is None


def test_truncated_hello_gives_what_is_there() -> None:
    ch = client_hello(b"api.example.net", pad=2000, sni_last=True)
    h = record_hello(ch[:1400])
    assert h is not None and h.sni is None and not h.complete  # the SNI is in the next segment
    h = record_hello(ch)
    assert h is not None and h.sni == "api.example.net"
    early = client_hello(b"api.example.net", pad=2000)
    h = record_hello(early[:200])
    assert h is not None and h.sni == "api.example.net" and not h.complete


def test_hello_split_over_two_records() -> None:
    m = hello_msg(b"split.example.com")
    recs = b"".join(b"\x16\x03\x03" + struct.pack("!H", len(part)) + part for part in (m[:50], m[50:]))
    h = record_hello(recs)
    assert h is not None and h.sni == "split.example.com"


def test_names_are_checked() -> None:
    assert clean_name(b"bad name.example") is None
    assert clean_name(b"a\x00b.example") is None
    assert clean_name(b"x" * 254) is None
    assert clean_name(b"") is None
    assert record_hello(client_hello(b"evil\xff.example")) is not None
    assert record_hello(client_hello(b"evil\xff.example")).sni is None  # type: ignore[union-attr]


def test_not_a_hello() -> None:
    assert record_hello(b"\x17\x03\x03\x00\x10" + bytes(16)) is None
    assert parse_hello(b"\x02" + bytes(60)) is None
    assert record_hello(b"GET / HTTP/1.1\r\n") is None


def test_hostile_input_never_raises() -> None:
    rng = random.Random(14)
    base = client_hello(b"fuzz.example.com", pad=100)
    for _ in range(5000):
        data = bytearray(base[: rng.randrange(len(base) + 1)])
        for _ in range(rng.randrange(0, 6)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        h = record_hello(bytes(data))
        assert h is None or h.sni is None or len(h.sni) <= 253
        parse_hello(bytes(data[5:]))


def test_scan_sni_in_a_piece_of_a_hello() -> None:
    from tunnelwatch.classify.tlsname import scan_sni

    m = hello_msg(b"api.cloudflareclient.com", pad=300, sni_last=True)
    i = m.index(b"api.cloudflareclient.com")
    assert scan_sni(m[i - 40:]) == "api.cloudflareclient.com"  # the start of the hello is missing
    assert scan_sni(bytes(400) + m[i - 9:i + 30]) == "api.cloudflareclient.com"  # after a run of zeros
    assert scan_sni(m[i - 40:i + 5]) is None  # the name is cut
    assert scan_sni(bytes(5000)) is None
    rng = random.Random(5)
    assert all(scan_sni(rng.randbytes(2000)) is None for _ in range(200))  # random bytes: no false names
