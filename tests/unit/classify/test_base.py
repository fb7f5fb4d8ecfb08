"""The classifier contract: check_contract refuses bad declarations, verdicts carry the classifier's
klass, and the cross-flow Context holds announced endpoints, bounded and expiring."""

from __future__ import annotations

from typing import ClassVar

import pytest

from tunnelwatch.classify import load_classifiers
from tunnelwatch.classify.base import (
    DONE,
    REJECT,
    Classifier,
    Context,
    ContractError,
    InspectResult,
    Klass,
    check_contract,
)
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, UDP, Packet

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])


def udp(ts: float, payload: bytes = b"x", sport: int = 4000, dport: int = 9) -> Packet:
    return Packet(ts, 4, A, B, UDP, sport, dport, 28 + len(payload), payload)


class Counting(Classifier):
    name: ClassVar[str] = "counting"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    protocols: ClassVar[tuple[str, ...]] = ("counted",)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 9): "counted"}

    def __init__(self, confirm_at: int = 0) -> None:
        self.calls = 0
        self.confirm_at = confirm_at

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        self.calls += 1
        if self.confirm_at and self.calls == self.confirm_at:
            return self.verdict("counted", "confirmed", "saw enough")
        return None



def test_contract_catches_bad_declarations() -> None:
    class Bad(Counting):
        name: ClassVar[str] = "Bad Name"

    class NoInspect(Classifier):
        name: ClassVar[str] = "noinspect"
        klass: ClassVar[Klass] = "voip"
        transports: ClassVar[frozenset[int]] = frozenset({UDP})
        protocols: ClassVar[tuple[str, ...]] = ("x",)

    class BadPort(Counting):
        name: ClassVar[str] = "badport"
        ports: ClassVar[dict[tuple[int, int], str]] = {(6, 80): "counted"}

    for cls, msg in ((Bad, "name"), (NoInspect, "inspect"), (BadPort, "port hint")):
        with pytest.raises(ContractError, match=msg):
            check_contract(cls())


def test_expectation_marks_the_announced_flow() -> None:
    ctx = Context()
    ctx.expect(B, 30000, UDP, "rtp", "voip", "announced", now=0.0)
    assert ctx.lookup(udp(1.0, dport=30000)) is not None
    assert ctx.lookup(udp(1.0, dport=30001)) is None
    assert ctx.lookup(udp(10_000.0, dport=30000)) is None  # expired


@pytest.mark.parametrize(("attrs", "msg"), [
    ({"name": "x"}, "name"),  # too short
    ({"name": "9lives"}, "name"),
    ({"klass": "unknown"}, "klass"),
    ({"klass": "malware"}, "klass"),
    ({"transports": frozenset()}, "transports"),
    ({"transports": frozenset({300})}, "transports"),
    ({"protocols": ()}, "protocols"),
    ({"ports": {(UDP, 0): "counted"}}, "port hint"),
    ({"ports": {(UDP, 9): "other"}}, "port hint"),
    ({"follow": -1}, "follow"),
    ({"follow": 10_001}, "follow"),
])
def test_contract_refuses_each_bad_attribute(attrs: dict[str, object], msg: str) -> None:
    bad = type("Bad", (Counting,), dict(attrs))
    with pytest.raises(ContractError, match=msg):
        check_contract(bad())


def test_a_good_classifier_and_every_shipped_one_pass_the_contract() -> None:
    check_contract(Counting())
    for c in load_classifiers():
        check_contract(c)


def test_verdict_uses_the_classifier_klass() -> None:
    v = Counting().verdict("counted", "likely", "one", "two", supersedes=frozenset({"rtp"}))
    assert (v.klass, v.protocol, v.confidence, v.evidence, v.supersedes) == (
        "vpn_tunnel", "counted", "likely", ("one", "two"), frozenset({"rtp"}))
    assert repr(REJECT) == "REJECT" and repr(DONE) == "DONE"


def test_expectations_match_either_end_and_the_transport() -> None:
    ctx = Context()
    ctx.expect(A, 4000, UDP, "rtp", "voip", "announced", now=0.0)
    assert ctx.lookup(udp(1.0, sport=4000, dport=5)) is not None  # the announced end is the sender
    assert ctx.lookup(Packet(1.0, 4, A, B, TCP, 4000, 5, 40, b"x")) is None


def test_expectations_are_bounded_oldest_first_and_bad_endpoints_ignored() -> None:
    ctx = Context(max_expectations=2)
    for port in (30000, 30001, 30002):
        ctx.expect(B, port, UDP, "rtp", "voip", "sdp", now=0.0)
    assert len(ctx) == 2
    assert ctx.lookup(udp(1.0, dport=30000)) is None and ctx.lookup(udp(1.0, dport=30002)) is not None
    ctx.expect(B, 0, UDP, "rtp", "voip", "sdp", now=0.0)
    ctx.expect(b"\x01\x02", 5000, UDP, "rtp", "voip", "sdp", now=0.0)
    assert len(ctx) == 2


def test_an_expired_expectation_is_forgotten() -> None:
    ctx = Context(lifetime=10.0)
    ctx.expect(B, 30000, UDP, "rtp", "voip", "sdp", now=0.0)
    assert ctx.lookup(udp(10.0, dport=30000)) is not None  # still valid at its expiry time
    assert ctx.lookup(udp(10.5, dport=30000)) is None
    assert len(ctx) == 0


def test_equal_verdicts_are_one_object_and_the_cache_is_bounded() -> None:
    from tunnelwatch.classify import base

    c = Counting()
    v = c.verdict("counted", "heuristic", "same words")
    assert c.verdict("counted", "heuristic", "same words") is v  # frozen: safe to share
    assert c.verdict("counted", "heuristic", "other words") is not v
    assert c.verdict("counted", "confirmed", "same words").confidence == "confirmed"
    for i in range(base._VERDICTS_MAX + 10):
        c.verdict("counted", "heuristic", f"per-flow detail {i}")
    assert len(base._VERDICTS) <= base._VERDICTS_MAX
