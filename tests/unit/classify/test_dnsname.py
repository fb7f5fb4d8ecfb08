"""DNS answers -> address names: parsing (compression, CNAME chains, hostile bytes) and the bounded cache."""

from __future__ import annotations

import random
import struct

from tunnelwatch.classify.dnsname import MAX_TTL, MIN_TTL, NameCache, parse_answers


def qname(name: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\x00"


def response(name: str, answers: list[tuple[int, bytes, int]], rcode: int = 0, cname: str = "") -> bytes:
    """A response to one A query; answers (type, rdata, ttl) owned by the question name (a pointer), after
    an optional CNAME record."""
    recs = b""
    if cname:
        target = qname(cname)
        recs += b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 300, len(target)) + target
    for rtype, rdata, ttl in answers:
        recs += b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata
    an = len(answers) + (1 if cname else 0)
    head = struct.pack("!HHHHHH", 0x1234, 0x8180 | rcode, 1, an, 0, 0)
    return head + qname(name) + b"\x00\x01\x00\x01" + recs


def test_a_and_aaaa_answers() -> None:
    v6 = bytes.fromhex("20010db8000000000000000000000001")
    p = response("API.PolarGrizzly.com", [(1, bytes([192, 0, 2, 7]), 60), (28, v6, 30)], cname="cdn.example")
    assert parse_answers(p) == ("api.polargrizzly.com", [(bytes([192, 0, 2, 7]), 60), (v6, 30)])


def test_not_usable() -> None:
    assert parse_answers(response("x.example", [(1, b"\x01\x02\x03\x04", 5)], rcode=3)) is None  # NXDOMAIN
    query = response("x.example", [(1, b"\x01\x02\x03\x04", 5)])
    assert parse_answers(query[:2] + b"\x01\x00" + query[4:]) is None  # a query, not a response
    assert parse_answers(response("x.example", [])) is None


def test_pointer_loop_is_refused() -> None:
    p = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0) + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    assert parse_answers(p) is None


CL = bytes([10, 0, 0, 2])


def test_cache_respects_ttl_with_cap_and_floor() -> None:
    c = NameCache()
    c.learn("a.example", CL, b"\x01\x01\x01\x01", 100, now=1000.0)
    assert c.lookup(CL, b"\x01\x01\x01\x01", 1099.0) == "a.example"
    assert c.lookup(CL, b"\x01\x01\x01\x01", 1101.0) is None and len(c) == 0
    c.learn("b.example", CL, b"\x02\x02\x02\x02", 0, now=0.0)
    assert c.lookup(CL, b"\x02\x02\x02\x02", MIN_TTL - 1) == "b.example"
    c.learn("c.example", CL, b"\x03\x03\x03\x03", 10**6, now=0.0)
    assert c.lookup(CL, b"\x03\x03\x03\x03", MAX_TTL + 1) is None


def test_a_name_holds_only_for_the_client_that_resolved_it() -> None:
    c = NameCache()
    c.learn("a.example", CL, b"\x01\x01\x01\x01", 100, now=0.0)
    assert c.lookup(bytes([10, 0, 0, 3]), b"\x01\x01\x01\x01", 1.0) is None


def test_cache_is_bounded_lru() -> None:
    c = NameCache(max_entries=3)
    for i in range(5):
        c.learn(f"n{i}.example", CL, bytes([10, 0, 1, i]), 60, now=0.0)
    assert len(c) == 3
    assert c.lookup(CL, bytes([10, 0, 1, 0]), 1.0) is None
    assert c.lookup(CL, bytes([10, 0, 1, 4]), 1.0) == "n4.example"


def test_learn_response() -> None:
    c = NameCache()
    assert c.learn_response(response("eu0.sec-tunnel.com", [(1, bytes([203, 0, 113, 5]), 120)]), CL, 0.0) == 1
    assert c.lookup(CL, bytes([203, 0, 113, 5]), 1.0) == "eu0.sec-tunnel.com"
    assert c.learn_response(b"\x00" * 11, CL, 0.0) == 0


def test_hostile_input_never_raises() -> None:
    rng = random.Random(53)
    base = response("fuzz.example.com", [(1, bytes([198, 51, 100, 1]), 60)] * 3, cname="x.example.net")
    c = NameCache(max_entries=16)
    for _ in range(5000):
        data = bytearray(base[: rng.randrange(len(base) + 1)])
        for _ in range(rng.randrange(0, 6)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        c.learn_response(bytes(data), CL, 0.0)
    assert len(c) <= 16
