"""The Enforcer's WATCH / re-open logic: crafted packets through Enforcer.handle, no kernel involved."""

from __future__ import annotations

import os
import time

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP

from tunnelwatch.config.runconfig import parse_config
from tunnelwatch.inline import firewall
from tunnelwatch.inline.enforcer import QUIET_S, Enforcer
from tunnelwatch.policy.registry import Registry, parse_registry
from tunnelwatch.record import FlowRecord

C, S = "198.51.100.2", "203.0.113.2"
SID_C, SID_S = bytes.fromhex("1122334455667788"), bytes.fromhex("99aabbccddeeff00")
CLIENT_RESET = b"\x38" + SID_C + b"\x00" + b"\x00\x00\x00\x00"
SERVER_RESET = b"\x40" + SID_S + b"\x01" + b"\x00\x00\x00\x00" + SID_C + b"\x00\x00\x00\x00"
ENFORCE = "policy: {klass: {vpn_tunnel: enforce}}\n"


def _up(pay: bytes, sport: int = 40000, dport: int = 1194) -> bytes:
    return bytes(IP(src=C, dst=S) / UDP(sport=sport, dport=dport) / pay)


def _down(pay: bytes, sport: int = 40000, dport: int = 1194) -> bytes:
    return bytes(IP(src=S, dst=C) / UDP(sport=dport, dport=sport) / pay)


def _enforcer(text: str = ENFORCE, registry: Registry | None = None
              ) -> tuple[Enforcer, list[dict[str, object]]]:
    records: list[FlowRecord] = []
    return Enforcer(parse_config(text), registry or Registry(), records.append), records


def _quiet(enf: Enforcer) -> None:
    """Decide flows as if QUIET_S had passed without a packet (what tick() does after 2 s)."""
    enf.engine.decide_quiet(time.time() + QUIET_S + 1, QUIET_S)


def test_a_slow_reply_after_the_quiet_decision_still_ends_blocked() -> None:
    enf, records = _enforcer()
    assert enf.handle(_up(CLIENT_RESET)) == 0  # undecided: no mark yet
    _quiet(enf)
    # heuristic only (below min_confidence confirmed): reported, yet not allowed for good
    assert enf.marks and set(enf.marks.values()) == {firewall.MARK_WATCH}
    assert [r.action for r in records] == ["report"]
    # the server answers late: the same classifiers resume with their state and confirm it
    assert enf.handle(_down(SERVER_RESET)) == firewall.MARK_DROP
    assert [(r.action, r.confidence) for r in records] == [("report", "heuristic"),
                                                                   ("block", "confirmed")]
    assert enf.late_blocks == 1 and enf.flow_stats()["reopened"] == 1
    # blocked for good: later packets are not re-opened any more
    assert enf.handle(_up(b"\x48" + os.urandom(60))) == firewall.MARK_DROP
    assert enf.engine.reopened == 1


def test_unknown_flows_are_watched_and_reopened_without_being_reported_again() -> None:
    enf, records = _enforcer()
    for _ in range(16):  # the whole budget of random datagrams
        bits = enf.handle(_up(os.urandom(80), dport=4000))
    assert bits == firewall.MARK_WATCH
    assert [(r.klass, r.action) for r in records] == [("unknown", "allow")]
    # a later window: a fresh look with a small budget, still unknown: still WATCH, not reported twice
    for _ in range(8):
        assert enf.handle(_up(os.urandom(80), dport=4000)) == firewall.MARK_WATCH
    assert enf.engine.reopened >= 1 and len(records) == 1


def test_a_tunnel_recognised_in_a_later_window_is_blocked_then() -> None:
    enf, records = _enforcer()
    for _ in range(16):  # junk first: nothing to recognise within the budget
        enf.handle(_up(os.urandom(40)))
    assert enf.marks[next(iter(enf.marks))] == firewall.MARK_WATCH
    assert enf.handle(_up(CLIENT_RESET)) == firewall.MARK_WATCH  # re-opened: heuristic so far
    assert enf.handle(_down(SERVER_RESET)) == firewall.MARK_DROP
    assert records[-1].action == "block" and records[-1].protocol == "openvpn"


def test_confirmed_benign_and_registered_flows_are_allowed_for_good() -> None:
    enf, _ = _enforcer()
    q = bytes(DNS(id=7, rd=1, qd=DNSQR(qname="example.com")))
    enf.handle(_up(q, dport=53))
    for _ in range(20):
        bits = enf.handle(_down(q, dport=53))
    assert bits == firewall.MARK_ALLOW
    reg = Registry(parse_registry("registrations:\n  - id: R-1\n    customer: lab\n    protocols: [openvpn]\n"
                         f"    servers:\n      - {{address: {S}, ports: [1194]}}\n"))
    enf, records = _enforcer(registry=reg)
    enf.handle(_up(CLIENT_RESET))
    _quiet(enf)  # heuristic openvpn to a registered server: allowed, nothing to watch for
    assert set(enf.marks.values()) == {firewall.MARK_ALLOW}
    assert records[0].registration_id == "R-1"


@pytest.mark.parametrize("mode", ["monitor", "enforce"])
def test_a_watched_flow_whose_reopens_are_used_up_is_allowed(mode: str) -> None:
    enf, _ = _enforcer(f"policy: {{klass: {{vpn_tunnel: {mode}}}}}\n")
    enf.engine.reopens = 1
    enf.handle(_up(os.urandom(50), dport=5000))
    _quiet(enf)
    assert set(enf.marks.values()) == {firewall.MARK_WATCH}
    enf.handle(_up(os.urandom(50), dport=5000))  # the one re-open
    _quiet(enf)
    assert set(enf.marks.values()) == {firewall.MARK_ALLOW}
    assert enf.engine.reopened == 1


def test_offline_engine_decides_once_and_reopen_is_visible_to_classifiers() -> None:
    from tunnelwatch.classify.engine import Engine
    from tunnelwatch.classify.packet import parse_ip

    decided: list[str] = []
    offline = Engine(on_decided=lambda f, v: decided.append(v.klass))  # reopens=0: `classify` as before
    for _ in range(30):
        flow = offline.process(parse_ip(_up(os.urandom(60), dport=4000), time.time()))
    assert decided == ["unknown"] and flow.done and flow.watch == 0 and offline.reopened == 0
    inline = Engine(reopens=2, reopen_budget=4, on_decided=lambda f, v: decided.append(v.klass))
    for _ in range(inline.budget):
        flow = inline.process(parse_ip(_up(os.urandom(60), dport=4000), time.time()))
    assert flow.done and flow.watch == 2 and flow.reopens == 0
    flow = inline.process(parse_ip(_up(os.urandom(60), dport=4000), time.time()))
    # re-opened: a fresh look with every UDP classifier, a budget of 4 more packets, one re-open used
    assert not flow.done and flow.reopens == 1 and flow.watch == 1 and flow.limit == flow.packets + 3
    assert {c.transports for c in flow.active} and inline.reopened == 1


def _sip(first: str, call: str, cseq: int, method: str, body: str = "") -> bytes:
    via = "Via: SIP/2.0/UDP 198.51.100.2:5060;branch=z9hG4bK1"
    head = [first, via, "From: <sip:a@lab>;tag=1", "To: <sip:b@lab>", f"Call-ID: {call}",
            f"CSeq: {cseq} {method}", f"Content-Length: {len(body)}"]
    if body:
        head.append("Content-Type: application/sdp")
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def test_sdp_in_a_later_sip_message_keeps_the_signalling_queued_until_it_is_read() -> None:
    enf, records = _enforcer("policy: {default: monitor}\n")
    up = lambda p: _up(p, sport=5060, dport=5060)  # noqa: E731
    down = lambda p: _down(p, sport=5060, dport=5060)  # noqa: E731
    # REGISTER answered: SIP confirmed on the second packet
    enf.handle(up(_sip("REGISTER sip:lab SIP/2.0", "reg-1", 1, "REGISTER")))
    bits = enf.handle(down(_sip("SIP/2.0 200 OK", "reg-1", 1, "REGISTER")))
    assert [r.protocol for r in records] == ["sip"] and records[0].confidence == "confirmed"
    # settled, yet still queued: the classifier follows the signalling for SDP (announced media)
    assert bits == firewall.MARK_WATCH
    sdp = f"v=0\r\no=- 1 1 IN IP4 {C}\r\ns=-\r\nc=IN IP4 {C}\r\nt=0 0\r\nm=audio 16000 RTP/AVP 0\r\n"
    enf.handle(up(_sip("INVITE sip:b@lab SIP/2.0", "call-1", 1, "INVITE", sdp)))
    # the daemon saw it (the kernel still queues a WATCH connection): the announced media is expected
    assert len(enf.engine.ctx) >= 1
    assert enf.marks[next(iter(enf.marks))] == firewall.MARK_WATCH


def test_quiet_flows_are_decided_a_batch_per_tick_without_the_loop_sleeping_on_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """At 2,000 new flows/s a tick had ~200 quiet flows to decide at once: a stall of the queue."""
    from tunnelwatch.inline import enforcer as enforcer_mod

    enf, _ = _enforcer()
    n = enforcer_mod.QUIET_BATCH * 2 + 5
    for i in range(n):
        enf.handle(_up(b"\x00" * 24, sport=20000 + i, dport=9999))
    assert len(enf.engine._undecided) == n
    later = time.time() + QUIET_S + 1
    monkeypatch.setattr(enforcer_mod.time, "time", lambda: later)
    sizes = []
    enf.next_tick = 0.0  # the first tick is due; each later one must make itself due
    while True:
        before = len(enf.engine._undecided)
        enf.tick()
        sizes.append(before - len(enf.engine._undecided))
        if not enf.quiet_backlog:
            break
        assert enf.next_tick <= enforcer_mod.time.monotonic()  # due again at the next wake-up
    assert sizes == [enforcer_mod.QUIET_BATCH, enforcer_mod.QUIET_BATCH, 5]
    assert not enf.engine._undecided
