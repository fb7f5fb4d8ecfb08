"""Property tests: hostile bytes never raise, in the parser, the capture reader or any classifier."""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunnelwatch.classify import load_classifiers
from tunnelwatch.classify.engine import Engine
from tunnelwatch.classify.packet import AH, ESP, GRE, TCP, UDP, Packet, parse_ip
from tunnelwatch.offline.pcapfile import PcapError, PcapReader

# Ports where classifiers look hardest, plus arbitrary ones.
PORTS = st.one_of(st.sampled_from([53, 123, 443, 500, 1194, 1701, 1723, 3478, 4500, 5060, 51820]),
                  st.integers(1, 65535))
A = bytes([192, 0, 2, 1])
B = bytes([198, 51, 100, 2])

PAYLOAD = st.one_of(
    st.binary(max_size=200),
    # payloads that start like the protocols we parse, then turn to garbage
    st.tuples(st.sampled_from([b"\x38", b"\x40", b"\x01\x00\x00\x00", b"\x02\x00\x00\x00",
                               b"\x04\x00\x00\x00", b"\x00\x00\x00\x00", b"\xc8\x02", b"\x80",
                               b"\x00\x01\x00", b"\x01\x01",
                               b"INVITE sip:a@b SIP/2.0\r\n", b"SIP/2.0 200 OK\r\n", b"\x16\x03\x01",
                               b"\x17\xfe\xfd", b"\xc8\x02\x00\x01", b"\x00\x00\x00\x00\x00\x00\x00\x00"]),
              st.binary(max_size=150)).map(lambda t: t[0] + t[1]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([UDP, TCP, ESP, AH, GRE]), PORTS, PORTS, PAYLOAD),
                min_size=1, max_size=12))
def test_classifiers_never_raise(packets: list[tuple[bool, int, int, int, bytes]]) -> None:
    e = Engine(load_classifiers(), budget=16)
    ts = 0.0
    for reply, proto, p1, p2, payload in packets:
        ts += 0.01
        ports = (p1, p2) if proto in (UDP, TCP) else (0, 0)
        src, dst, sp, dp = (B, A, ports[1], ports[0]) if reply else (A, B, ports[0], ports[1])
        e.process(Packet(ts, 4, src, dst, proto, sp, dp, 20 + len(payload), payload))
    e.flush()
    assert e.classifier_errors == 0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 4))
def test_parse_ip_never_raises(data: bytes, off: int) -> None:
    p = parse_ip(data, 0.0, off)
    assert p is None or len(p.payload) <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x0a\x0d\x0d\x0a", b"\x4d\x3c\xb2\xa1"]),
       st.binary(max_size=400))
def test_capture_reader_never_raises_anything_but_pcaperror(magic: bytes, rest: bytes) -> None:
    try:
        for _ in PcapReader(io.BytesIO(magic + rest)):
            pass
    except PcapError:
        pass
