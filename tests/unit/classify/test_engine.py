"""Engine: budget, early decision, port hints, and a failing classifier contained and counted."""

from __future__ import annotations

from typing import ClassVar

import pytest

from tunnelwatch.classify import classifier_names, load_classifiers
from tunnelwatch.classify.base import (
    DONE,
    REJECT,
    Classifier,
    Context,
    ContractError,
    InspectResult,
    Klass,
    Verdict,
)
from tunnelwatch.classify.engine import Engine
from tunnelwatch.classify.flow import NO_STATE, Flow
from tunnelwatch.classify.packet import UDP, Packet

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


class Broken(Counting):
    name: ClassVar[str] = "broken"

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        raise IndexError("bug")


def test_budget_limits_inspection_and_port_hint_applies() -> None:
    c = Counting()
    got = []
    e = Engine([c], budget=5, on_end=lambda f, v: got.append(v))
    for i in range(50):
        e.process(udp(float(i)))
    e.flush()
    assert c.calls == 5
    assert (got[0].protocol, got[0].confidence) == ("counted", "port")


def test_confirmed_verdict_stops_inspection_early() -> None:
    c = Counting(confirm_at=3)
    decided = []
    e = Engine([c], budget=20, on_decided=lambda f, v: decided.append(v))
    for i in range(10):
        e.process(udp(float(i)))
    assert c.calls == 3 and decided[0].confidence == "confirmed"


def test_broken_classifier_is_contained_logged_once_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    good = Counting(confirm_at=2)
    e = Engine([Broken(), good], budget=10)
    for i in range(4):
        e.process(udp(float(i), sport=4000 + i))
        e.process(udp(float(i) + 0.1, sport=4000 + i))
    assert e.classifier_errors == 4
    assert sum("classifier broken failed" in r.message for r in caplog.records) == 1
    assert good.calls == 8


def test_registry_contract_and_names() -> None:
    names = classifier_names()
    assert len(names) == len(set(names)) and "openvpn" in names and "sip" in names
    assert [c.name for c in load_classifiers(["wireguard"])] == ["wireguard"]
    with pytest.raises(ContractError, match="unknown classifier"):
        load_classifiers(["nope"])


def test_reject_removes_classifier_from_flow() -> None:
    class Rejecting(Counting):
        name: ClassVar[str] = "rejecting"

        def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
            self.calls += 1
            return REJECT

    r = Rejecting()
    e = Engine([r], budget=10)
    for i in range(5):
        e.process(udp(float(i)))
    assert r.calls == 1


def test_followers_keep_reading_after_the_decision_but_cannot_change_it() -> None:
    class Follower(Counting):
        name: ClassVar[str] = "follower"
        follow: ClassVar[int] = 3

        def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
            self.calls += 1
            if self.calls == 1:
                return self.verdict("counted", "confirmed", "first")
            return Verdict("benign", "other", "confirmed", ("late",))

    f = Follower()
    got = []
    e = Engine([f], budget=20, on_end=lambda fl, v: got.append(v))
    for i in range(10):
        e.process(udp(float(i)))
    e.flush()
    assert f.calls == 1 + 3
    assert (got[0].protocol, got[0].evidence) == ("counted", ("first",))


def test_done_keeps_the_verdict_and_reject_withdraws_it() -> None:
    class Says(Counting):
        name: ClassVar[str] = "says"

        def __init__(self, then: object) -> None:
            super().__init__()
            self.then = then

        def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
            self.calls += 1
            if self.calls == 1:
                return self.verdict("counted", "heuristic", "looked right")
            return self.then  # type: ignore[return-value]

    for then, expect in ((DONE, "heuristic"), (REJECT, "port")):
        s = Says(then)
        got: list[Verdict] = []
        e = Engine([s], budget=10, on_end=lambda f, v, out=got: out.append(v))  # type: ignore[misc]
        for i in range(5):
            e.process(udp(float(i)))
        e.flush()
        assert s.calls == 2 and got[0].confidence == expect


def test_a_verdict_that_looked_inside_a_benign_carrier_outranks_it_in_either_order() -> None:
    class Carrier(Counting):
        name: ClassVar[str] = "carrier"
        klass: ClassVar[Klass] = "benign"
        protocols: ClassVar[tuple[str, ...]] = ("tls",)
        ports: ClassVar[dict[tuple[int, int], str]] = {}

        def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
            return self.verdict("tls", "confirmed", "TLS record")

    class Inner(Counting):
        name: ClassVar[str] = "inner"
        klass: ClassVar[Klass] = "proxy_obfuscated"
        protocols: ClassVar[tuple[str, ...]] = ("tor",)
        ports: ClassVar[dict[tuple[int, int], str]] = {}

        def __init__(self, sees_through: frozenset[str]) -> None:
            super().__init__()
            self.sees_through = sees_through

        def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
            return self.verdict("tor", "heuristic", "cell sizes", supersedes=self.sees_through)

    cases = ((frozenset({"tls"}), "tor"), (frozenset(), "tls"), (frozenset({"ssh"}), "tls"))
    for sees_through, expect in cases:
        for order in ((Carrier(), Inner(sees_through)), (Inner(sees_through), Carrier())):
            got: list[Verdict] = []
            e = Engine(list(order), budget=3, on_end=lambda f, v, out=got: out.append(v))  # type: ignore[misc]
            for i in range(3):
                e.process(udp(float(i)))
            e.flush()
            assert got[0].protocol == expect, (sees_through, order)


def test_confidence_ranks_keep_list_between_heuristic_and_port() -> None:
    def v(klass: Klass, conf: str) -> Verdict:
        return Verdict(klass, "x", conf)  # type: ignore[arg-type]

    order = [v("vpn_tunnel", "confirmed"), v("benign", "confirmed"), v("vpn_tunnel", "heuristic"),
             v("benign", "heuristic"), v("vpn_tunnel", "list"), v("benign", "list"), v("benign", "port"),
             v("vpn_tunnel", "port")]
    ranks = [x.rank for x in order]
    assert ranks == sorted(ranks, reverse=True) and len(set(ranks)) == len(ranks)


def test_deep_ports_get_a_larger_budget() -> None:
    for dport, deep, expect in ((22, {(UDP, 22): 8}, 8), (23, {(UDP, 22): 8}, 3), (22, {}, 3)):
        c = Counting()
        e = Engine([c], budget=3, deep=deep)
        for i in range(12):
            e.process(udp(float(i), dport=dport))
        assert c.calls == expect, (dport, deep)


def test_undecided_flows_are_decided_once_they_go_quiet() -> None:
    got: list[tuple[int, Verdict]] = []
    c = Counting()
    e = Engine([c], budget=10, on_decided=lambda f, v: got.append((f.sport, v)))
    e.process(udp(0.0, sport=4001))
    e.process(udp(1.0, sport=4002))
    e.process(udp(1.5, sport=4001))  # 4001 seen again: now the more recent one
    assert e.decide_quiet(now=2.0, quiet=2.0) == [] and not got
    quiet = e.decide_quiet(now=3.2, quiet=2.0)
    assert [f.sport for f in quiet] == [4002] and [s for s, _ in got] == [4002]
    assert got[0][1].confidence == "port"  # decided on what was seen: the port hint here
    e.process(udp(3.3, sport=4002))  # a decided flow is not decided again
    assert [f.sport for f in e.decide_quiet(now=10.0, quiet=2.0)] == [4001] and len(got) == 2


def test_two_classifiers_with_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        Engine([Counting(), Counting()])


def test_a_deep_port_counts_whichever_side_spoke_first() -> None:
    # inline the first queued packet may be the server's (an SSH banner): the flow's "dport" is then the
    # client's port, yet the deeper budget of the server port applies
    e = Engine([Counting()], budget=4, deep={(UDP, 2222): 10})
    for i in range(9):
        flow = e.process(udp(float(i), sport=2222, dport=50000))
    assert not flow.done  # still inspected past the budget of 4
    flow = e.process(udp(9.0, sport=2222, dport=50000))
    assert flow.done


class Stateful(Counting):
    """Keeps a state from its first packet; rejects on a payload of b"no"."""

    name: ClassVar[str] = "stateful"

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        self.calls += 1
        if pkt.payload == b"no":
            return REJECT
        flow.put_state(self.name, flow.state.get(self.name, 0) + 1)
        return None


def test_flows_share_containers_until_they_need_their_own_and_decided_flows_let_them_go() -> None:
    leaver = type("Leaver", (Stateful,), {"name": "leaver"})()
    e = Engine([Stateful(), leaver, Counting()], budget=3)
    transport = e._by_proto[UDP]
    f1 = e.process(udp(1.0, b"hi", sport=5001))
    f2 = e.process(udp(1.0, b"hi", sport=5002))
    assert f1.active is f2.active is transport  # nobody dropped out: the engine's own tuple
    assert f1.state == {"stateful": 1, "leaver": 1} and f1.state is not f2.state
    assert f1.cands is NO_STATE and not NO_STATE  # no verdict yet: nothing made
    e.process(udp(1.1, b"no", sport=5001))  # both Stateful classifiers reject on f1
    assert [c.name for c in f1.active] == ["counting"] and f1.state is NO_STATE  # emptied: dropped
    assert e._by_proto[UDP] is transport and len(transport) == 3  # the shared tuple never changes
    f3 = e.process(udp(1.2, b"no", sport=5003))
    assert f3.active is f1.active  # the same survivors: one tuple for both
    e.process(udp(1.3, b"x", sport=5002))
    e.process(udp(1.4, b"x", sport=5002))  # budget: f2 is decided
    assert f2.done and f2.state is NO_STATE and f2.cands is NO_STATE and f2.active == ()
    assert not NO_STATE and leaver.calls == 6  # f1 2 (then REJECT: not asked again), f3 1, f2 3
    with pytest.raises(TypeError):
        NO_STATE["x"] = 1
    assert f1.pkts_dir == (2, 0) and f1.payload_pkts == (2, 0) and f1.bytes_dir == (2 * 30, 0)


def test_a_classifier_that_raises_is_dropped_with_its_state_and_keeps_its_verdict() -> None:
    class SaysThenBreaks(Stateful):
        name: ClassVar[str] = "says"

        def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
            self.calls += 1
            if self.calls == 1:
                flow.put_state(self.name, 1)
                return self.verdict("counted", "heuristic", "first")
            raise ValueError("bug")

    c = SaysThenBreaks()
    other = Counting()
    e = Engine([c, other], budget=10)
    f = e.process(udp(1.0))
    e.process(udp(1.1))
    assert e.classifier_errors == 1 and f.active == (other,) and "says" not in f.state
    assert f.best is not None and f.best.protocol == "counted"  # like DONE: the verdict stays
