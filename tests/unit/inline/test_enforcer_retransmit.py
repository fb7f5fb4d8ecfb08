"""Cheap paths of the Enforcer (issue 13): an exact TCP retransmission is answered with the flow's mark
without being classified again, a same-sequence segment with other bytes (a decoy) still is; the work
between packets runs at most every TICK_S; decisions nobody reports or shows are only tallied."""

from __future__ import annotations

import os
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP

from tunnelwatch.config.runconfig import parse_config
from tunnelwatch.inline import enforcer as enforcer_mod
from tunnelwatch.inline import firewall
from tunnelwatch.inline.enforcer import QUIET_S, TICK_S, Enforcer
from tunnelwatch.policy.registry import Registry
from tunnelwatch.record import FlowRecord

C, S = "198.51.100.2", "203.0.113.2"
SID_C, SID_S = bytes.fromhex("1122334455667788"), bytes.fromhex("99aabbccddeeff00")
CLIENT_RESET = b"\x38" + SID_C + b"\x00" + b"\x00\x00\x00\x00"
SERVER_RESET = b"\x40" + SID_S + b"\x01" + b"\x00\x00\x00\x00" + SID_C + b"\x00\x00\x00\x00"
ENFORCE = "policy: {klass: {vpn_tunnel: enforce}}\n"


def _tcp(src: str, dst: str, sp: int, dp: int, seq: int, pay: bytes, ttl: int = 64) -> bytes:
    return bytes(IP(src=src, dst=dst, ttl=ttl) / TCP(sport=sp, dport=dp, flags="PA", seq=seq, ack=1) / pay)


def _enforcer() -> tuple[Enforcer, list[FlowRecord]]:
    records: list[FlowRecord] = []
    return Enforcer(parse_config(ENFORCE), Registry(), records.append), records


def _ovpn(pay: bytes) -> bytes:
    return len(pay).to_bytes(2, "big") + pay  # OpenVPN over TCP: a length prefix per packet


def test_a_retransmitted_reply_is_not_classified_counted_or_reopened() -> None:
    enf, records = _enforcer()
    data = os.urandom(16)
    request = _tcp(C, S, 40000, 5001, 1000, data)
    reply = _tcp(S, C, 5001, 40000, 9000, data)
    assert enf.handle(request) == 0 and enf.handle(reply) == 0
    flow = next(iter(enf.engine.table))
    assert enf.handle(reply) == 0  # the echo again: held in the queue while the FIN overtook it
    assert (enf.retransmits, enf.engine.packets, flow.packets, flow.payload_pkts) == (1, 2, 2, (1, 1))
    enf.engine.decide_quiet(time.time() + QUIET_S + 1, QUIET_S)  # unknown: watched, not allowed for good
    assert enf.marks[flow.key] == firewall.MARK_WATCH and [r.klass for r in records] == ["unknown"]
    # a watched flow is re-opened by a new segment, but not by a retransmission of the last one
    assert enf.handle(reply) == firewall.MARK_WATCH
    assert enf.engine.reopened == 0 and flow.done and enf.retransmits == 2 and flow.packets == 2
    assert enf.handle(_tcp(S, C, 5001, 40000, 9016, os.urandom(16))) == firewall.MARK_WATCH
    assert enf.engine.reopened == 1 and flow.packets == 3
    assert enf.flow_stats()["retransmits"] == 2


def test_a_same_sequence_segment_with_other_bytes_is_classified() -> None:
    enf, _ = _enforcer()
    reset = _ovpn(CLIENT_RESET)
    decoy = os.urandom(len(reset))  # e.g. with a TTL that dies at the next hop: same seq, same length
    assert enf.handle(_tcp(C, S, 40001, 443, 5000, decoy, ttl=1)) == 0
    enf.handle(_tcp(C, S, 40001, 443, 5000, reset))
    flow = next(iter(enf.engine.table))
    assert enf.retransmits == 0 and enf.engine.packets == 2 and flow.payload_pkts[0] == 2
    # the other end's segment with the same sequence number and bytes is not a retransmission either
    enf.handle(_tcp(S, C, 443, 40001, 5000, reset))
    assert enf.retransmits == 0 and enf.engine.packets == 3


def test_a_tunnel_behind_a_retransmitted_segment_is_still_blocked() -> None:
    enf, records = _enforcer()
    reset = _tcp(C, S, 40002, 443, 7000, _ovpn(CLIENT_RESET))
    assert enf.handle(reset) == 0 and enf.handle(reset) == 0 and enf.retransmits == 1
    assert enf.handle(_tcp(S, C, 443, 40002, 3000, _ovpn(SERVER_RESET))) == firewall.MARK_DROP
    # no longer the flow's last segment: classified again (cheap answers are for the last one only),
    # and a blocked flow stays blocked
    assert enf.handle(reset) == firewall.MARK_DROP and enf.retransmits == 1
    assert enf.handle(reset) == firewall.MARK_DROP and enf.retransmits == 2
    assert [r.action for r in records] == ["block"]


def test_udp_datagrams_repeated_are_classified_each_time() -> None:
    enf, _ = _enforcer()
    up = bytes(IP(src=C, dst=S) / UDP(sport=40003, dport=5002) / os.urandom(16))
    enf.handle(up)
    enf.handle(up)
    assert enf.retransmits == 0 and enf.engine.packets == 2


def test_the_work_between_packets_runs_at_most_every_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    enf, records = _enforcer()
    clock = [1000.0]
    monkeypatch.setattr(enforcer_mod.time, "monotonic", lambda: clock[0])
    enf.tick()  # the first call does its work at once
    enf.handle(_tcp(C, S, 40004, 5001, 1, os.urandom(16)))
    later = time.time() + QUIET_S + 1
    monkeypatch.setattr(enforcer_mod.time, "time", lambda: later)
    clock[0] += TICK_S / 2
    enf.tick()
    assert records == []  # quiet for long enough, but not due yet: tick() was called moments ago
    clock[0] += TICK_S
    enf.tick()
    assert [r.klass for r in records] == ["unknown"]


def test_decisions_nobody_reports_or_shows_are_tallied_without_a_record() -> None:
    enf, records = _enforcer()
    tallied: list[tuple[str, str]] = []
    enf.tally = lambda klass, action: tallied.append((klass, action))
    enf.handle(_tcp(C, S, 40005, 5001, 1, os.urandom(16)))
    enf.engine.decide_quiet(time.time() + QUIET_S + 1, QUIET_S)
    assert tallied == [("unknown", "allow")] and records == []
    reset = _tcp(C, S, 40006, 443, 7000, _ovpn(CLIENT_RESET))
    enf.handle(reset)
    enf.handle(_tcp(S, C, 443, 40006, 3000, _ovpn(SERVER_RESET)))
    assert [r.action for r in records] == ["block"] and len(tallied) == 1  # a block is a record
    assert enf.counts == {"allow": 1, "block": 1}
