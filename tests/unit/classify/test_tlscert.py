"""Server certificate subjects from a TLS 1.2 server flight: organisation and CN, cut-short flights, TLS 1.3,
hostile bytes."""

from __future__ import annotations

import datetime as dt
import random
import struct

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from tunnelwatch.classify.tlscert import MORE, NONE, Subject, cert_subject, server_subject

# Ed25519 signs deterministically: the same certificate bytes every run (the samples are rebuilt from these)
_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def cert_der(org: str | None, cn: str = "newjersey402", version1: bool = False) -> bytes:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "US")]
    if org is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    name = x509.Name(attrs)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(_KEY.public_key())
         .serial_number(12345).not_valid_before(now).not_valid_after(now + dt.timedelta(days=30)))
    return b.sign(_KEY, None).public_bytes(Encoding.DER)


def hs(mtype: int, body: bytes) -> bytes:
    return bytes([mtype]) + len(body).to_bytes(3, "big") + body


def server_hello(tls13: bool = False) -> bytes:
    ext = struct.pack("!HHH", 43, 2, 0x0304) if tls13 else b""
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x13\x01" + b"\x00" + struct.pack("!H", len(ext)) + ext
    return hs(2, body)


def certificate(*ders: bytes) -> bytes:
    chain = b"".join(len(d).to_bytes(3, "big") + d for d in ders)
    return hs(11, len(chain).to_bytes(3, "big") + chain)


def records(data: bytes, ctype: int = 22, size: int = 16384) -> bytes:
    return b"".join(bytes([ctype, 3, 3]) + struct.pack("!H", len(data[i:i + size])) + data[i:i + size]
                    for i in range(0, len(data), size))


def flight(org: str | None = "Private Internet Access", **kw: object) -> bytes:
    return records(server_hello() + certificate(cert_der(org, **kw), cert_der("Some CA")) + hs(14, b""))  # type: ignore[arg-type]


def test_organisation_and_cn_of_the_leaf() -> None:
    assert server_subject(flight()) == Subject("Private Internet Access", "newjersey402")
    assert server_subject(flight(None, cn="54.153.90.230")) == Subject("", "54.153.90.230")


def test_cut_short_flight_asks_for_more() -> None:
    f = flight()
    assert server_subject(f[:60]) == MORE
    cut = f.index(b"newjersey402", f.index(b"newjersey402") + 1) + 4  # the subject's, after the issuer's
    assert server_subject(f[:cut]) == MORE  # the subject is not complete yet
    assert server_subject(f[:cut + 20]) == Subject("Private Internet Access", "newjersey402")


def test_records_split_in_small_pieces() -> None:
    data = server_hello() + certificate(cert_der("Windscribe", cn="54.153.90.230"))
    assert server_subject(records(data, size=50)) == Subject("Windscribe", "54.153.90.230")


def test_tls13_and_other_flights_give_none() -> None:
    assert server_subject(records(server_hello(tls13=True)) + b"\x14\x03\x03\x00\x01\x01") == NONE
    assert server_subject(records(server_hello()) + b"\x17\x03\x03\x00\x10" + bytes(16)) == NONE
    assert server_subject(b"HTTP/1.1 200 OK\r\n\r\n") == NONE
    assert cert_subject(b"\x02\x01\x05" + bytes(10)) == NONE


def test_hostile_input_never_raises() -> None:
    rng = random.Random(11)
    base = flight()
    for _ in range(5000):
        data = bytearray(base[: rng.randrange(len(base) + 1)])
        for _ in range(rng.randrange(0, 6)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        got = server_subject(bytes(data))
        assert got in (MORE, NONE) or isinstance(got, Subject)
        if isinstance(got, Subject):
            assert len(got.organisation) <= 128 and len(got.common_name) <= 128
