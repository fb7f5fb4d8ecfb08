"""Classifier.first: a False test means inspect() rejects that packet, and the engine then skips the call."""

from __future__ import annotations

import random
from typing import ClassVar

import pytest

from tunnelwatch.classify import load_classifiers
from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.engine import Engine
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, UDP, Packet

A = bytes([10, 0, 0, 1])
B = bytes([192, 0, 2, 1])
#: well-known ports of the classifiers whose first look depends on the port
PORTS = (40000, 53, 1701, 1719, 2000, 4569, 5061, 9993, 443)
#: openings that pass some first tests, so the tails after them exercise the deeper conditions
SEEDS = (b"\x16\x03\x01\x02\x00\x01", b"SSH-2.0-", b"POST /", b"GET / HTTP/1.1\r\n", b"SSTP_DUPLEX_POST ",
         b"0 ", b"\x01\x00", b"\x03\x00", b"INVITE sip:a@b SIP/2.0\r\n", b"\0\0\0", b"A", b"IP=", b"\xff",
         b"\x16\xfe\xff", b"\x17\xfe\xfd", b"CRCX 1 ", b"200 1 ", b"\x80\x00",
         b"\x00\x1c\x00\x01\x1a\x2b\x3c\x4d", b"\x00\x20", b"TS3INIT1", b"\x01", b"\x02", b"\x03",
         # whole openers of the classifiers with first_bytes on UDP (each passes its first test as it is)
         b"\xc8\x02\x00\x0c" + bytes(8), b"\x00\x02\x00\x01\x00\x01\xff\x03\xc0\x21",  # l2tp
         "TS\U0001f4ac".encode(), b"\x01\x00\x00\x00" + bytes(28),  # tailscale
         b"TS3INIT1\x00\x65\x00\x00\x88\x00\x00\x00\x01\x00", b"\x01\x05\x84\x01",  # teamspeak
         b"\0\0\0\0\0\0\x01\x8f\0\0\0\x01",  # mumble
         b"\x13\x37\xca\xfe\0\0\0\x01", b"\x00\x01\x00\x46\x00\x00\x00\x2a" + bytes(66),  # discord
         b"\x00\x01\x00\x18" + bytes(16) + b"\x01\x01\x00\x14" + bytes(20),  # zoom (probe)
         b"\x1f\x02\x01\x00" + bytes(20) + b"\x00\x00\x00\x09192.0.2.1",  # zoom (hello to B)
         b"\xd8\x00\x00\x01\x06\x02" + bytes(144),  # linecall
         b"MEGACO/1 [10.0.0.1]:2944\nT=1{", b"!/1 mg1 T=2{", b"megaco/2 <mg> t=3{",  # megaco
         b"\x60\0\0\0\0\0\x3a\x40" + bytes(32),  # teredo (bare IPv6)
         b"\x00\x01\x00\x00" + bytes(9) + b"\x60\0\0\0\0\0\x3b\x40" + bytes(32))  # teredo (indicator)


def payloads(rng: random.Random) -> list[bytes]:
    """Random datagrams/segments, and the seeds with random tails of a few lengths."""
    sizes = (1, 2, 3, 4, 10, 11, 12, 16, 24, 40, 48, 64, 120, 300)
    out = [rng.randbytes(rng.choice(sizes)) for _ in range(160)]
    for s in SEEDS:
        out += [s, *(s + rng.randbytes(n) for n in (3, 9, 30, 60))]
    return out


def first_payload(engine: Engine, proto: int, payload: bytes, d: int, port: int) -> tuple[Flow, Packet]:
    """Feed a fresh flow its first payload packet in direction d (after a bare opening packet if d = 1)."""
    if d:
        engine.process(Packet(1.0, 4, A, B, proto, 51000, port, 40, b""))
        pkt = Packet(1.1, 4, B, A, proto, port, 51000, 40 + len(payload), payload)
    else:
        pkt = Packet(1.0, 4, A, B, proto, 51000, port, 40 + len(payload), payload)
    return engine.process(pkt), pkt


TESTED = [(c, t) for c in load_classifiers() for t in sorted(c.first_on)]


def test_the_classifiers_that_reject_most_fresh_flows_have_a_test() -> None:
    names = {c.name for c, _ in TESTED}
    assert {"tor", "sip", "stun", "openvpn", "rtp", "pptp", "l2tp", "zoom", "mgcp"} <= names


@pytest.mark.parametrize(("clf", "proto"), TESTED, ids=[f"{c.name}-{t}" for c, t in TESTED])
def test_a_false_first_test_means_inspect_rejects_that_packet_having_changed_nothing(
        clf: Classifier, proto: int) -> None:
    rng = random.Random(f"{clf.name}/{proto}")
    falses = 0
    for p in payloads(rng):
        d, port = rng.randrange(2), rng.choice(PORTS)
        engine = Engine([type(clf)()])
        engine._tests.clear()  # the classifier is called whatever its test says
        flow, pkt = first_payload(engine, proto, p, d, port)
        mine = type(clf)().first(pkt, d)
        if proto in clf.first_bytes and p[0] not in clf.first_bytes[proto]:
            assert not mine, (p, d, port)  # the engine does not even ask for such a byte
        if mine:
            continue
        falses += 1
        assert flow.done and not flow.active, (p, d, port)  # it returned REJECT or DONE
        assert flow.best is None and flow.name is None and not len(engine.ctx), (p, d, port)
    assert falses > 0  # the test says "not mine" to some of these, so the check above ran


GATED = [(c, t) for c, t in TESTED if c.first_bytes.get(t)]


@pytest.mark.parametrize(("clf", "proto"), GATED, ids=[f"{c.name}-{t}" for c, t in GATED])
def test_a_seed_passing_a_first_test_starts_with_one_of_its_first_bytes(clf: Classifier, proto: int) -> None:
    """Every seed (bare: some openers have an exact length), both ways, on every port: the seeds hold whole
    openers, so a first byte an opener can have but first_bytes lacks shows here whatever the random draws."""
    passed: set[int] = set()
    for p in (s + bytes(n) for s in SEEDS for n in (0, 16, 60)):
        for port in PORTS:
            for d, pkt in enumerate((Packet(1.0, 4, A, B, proto, 51000, port, 40 + len(p), p),
                                     Packet(1.1, 4, B, A, proto, port, 51000, 40 + len(p), p))):
                if clf.first(pkt, d):
                    assert p[0] in clf.first_bytes[proto], (p, d, port)
                    passed.add(p[0])
    assert passed  # some seed is an opener of it, so the check above ran


class Picky(Classifier):
    name: ClassVar[str] = "picky"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP, TCP})
    first_on: ClassVar[frozenset[int]] = frozenset({UDP})
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {UDP: frozenset(b"PQ")}
    protocols: ClassVar[tuple[str, ...]] = ("picky",)

    def __init__(self) -> None:
        self.calls = 0
        self.tests = 0

    def first(self, pkt: Packet, direction: int) -> bool:
        self.tests += 1
        return pkt.payload[:1] == b"P"

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        self.calls += 1
        return None if pkt.payload[:1] == b"P" else REJECT


class Other(Picky):
    name: ClassVar[str] = "other"
    first_on: ClassVar[frozenset[int]] = frozenset()
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {}


def test_the_engine_skips_a_classifier_whose_test_says_no_only_on_a_fresh_flows_first_payload() -> None:
    picky, other = Picky(), Other()
    e = Engine([picky, other], budget=4, reopens=1)
    flow, _ = first_payload(e, UDP, b"x1", 0, 9)
    assert picky.calls == 0 and other.calls == 1 and flow.done  # other was asked and rejected
    assert picky.tests == 0  # "x" is not among its first bytes: not even tested
    first_payload(e, UDP, b"Q1", 0, 12)
    assert picky.tests == 1 and picky.calls == 0
    flow, _ = first_payload(e, UDP, b"P1", 0, 10)
    assert picky.calls == 1 and flow.active == (picky, other)
    e.process(Packet(1.2, 4, A, B, UDP, 51000, 10, 40, b"x2"))  # a later packet: asked, not tested
    assert picky.calls == 2
    flow, _ = first_payload(e, TCP, b"x1", 0, 9)  # not on first_on: asked
    assert picky.calls == 3
    e.ctx.expect(B, 11, UDP, "picky", "vpn_tunnel", "announced", 0.0)
    first_payload(e, UDP, b"x1", 0, 11)  # announced: asked whatever its test says
    assert picky.calls == 4
