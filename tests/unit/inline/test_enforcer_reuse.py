"""A new connection on the 5-tuple of a finally decided flow is classified afresh, not given the old
decision; packets of the same connection queued before the decision reached the kernel keep it."""

from __future__ import annotations

import struct
import time

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP

from tunnelwatch.config.runconfig import parse_config
from tunnelwatch.inline import enforcer as enforcer_mod
from tunnelwatch.inline import firewall
from tunnelwatch.inline.enforcer import Enforcer
from tunnelwatch.policy.registry import Registry, parse_registry

C, S = "198.51.100.2", "203.0.113.2"
SID_C, SID_S = bytes.fromhex("1122334455667788"), bytes.fromhex("99aabbccddeeff00")
CLIENT_RESET = b"\x38" + SID_C + b"\x00" + b"\x00\x00\x00\x00"
SERVER_RESET = b"\x40" + SID_S + b"\x01" + b"\x00\x00\x00\x00" + SID_C + b"\x00\x00\x00\x00"
GET = b"GET / HTTP/1.1\r\nHost: example.test\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nhi"


def _tcp(src: str, dst: str, sp: int, dp: int, seq: int, ack: int, pay: bytes) -> bytes:
    return bytes(IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags="PA", seq=seq, ack=ack) / pay)


def _enforcer() -> Enforcer:
    return Enforcer(parse_config("policy: {klass: {vpn_tunnel: enforce}}\n"), Registry(), lambda r: None)


def _http(enf: Enforcer, seq_c: int, seq_s: int) -> int:
    enf.handle(_tcp(C, S, 40000, 443, seq_c, seq_s, GET))
    return enf.handle(_tcp(S, C, 443, 40000, seq_s, seq_c + len(GET), OK))


def test_a_reused_tcp_tuple_is_classified_afresh_and_blocked() -> None:
    enf = _enforcer()
    assert _http(enf, 1000, 5000) == firewall.MARK_ALLOW  # plain HTTP: allowed for good
    # the client closes and reopens the same 5-tuple (new ISNs) for OpenVPN over TCP
    reset = struct.pack("!H", len(CLIENT_RESET)) + CLIENT_RESET
    reply = struct.pack("!H", len(SERVER_RESET)) + SERVER_RESET
    first = enf.handle(_tcp(C, S, 40000, 443, 3_000_000_000, 0, reset))
    assert first != firewall.MARK_ALLOW and enf.reused == 1
    last = enf.handle(_tcp(S, C, 443, 40000, 7_000_000, 3_000_000_000 + len(reset), reply))
    assert last == firewall.MARK_DROP


def test_packets_queued_before_the_decision_keep_it() -> None:
    enf = _enforcer()
    assert _http(enf, 1000, 5000) == firewall.MARK_ALLOW
    # more of the same connection (next segments, a retransmission) that were already in the queue
    more = _tcp(C, S, 40000, 443, 1000 + len(GET), 5000 + len(OK), b"x" * 100)
    assert enf.handle(more) == firewall.MARK_ALLOW
    assert enf.handle(_tcp(S, C, 443, 40000, 5000, 1000 + len(GET), OK)) == firewall.MARK_ALLOW
    assert enf.reused == 0


def test_a_reused_udp_tuple_after_a_pause_is_classified_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    enf = _enforcer()
    up = bytes(IP(src=C, dst=S) / UDP(sport=40001, dport=1194) / CLIENT_RESET)
    down = bytes(IP(src=S, dst=C) / UDP(sport=1194, dport=40001) / SERVER_RESET)
    enf.handle(up)
    assert enf.handle(down) == firewall.MARK_DROP
    assert enf.handle(up) == firewall.MARK_DROP and enf.reused == 0  # moments later: the same flow
    later = time.time() + 5  # conntrack forgot the blocked flow; the client uses the tuple for DNS
    monkeypatch.setattr(enforcer_mod.time, "time", lambda: later)
    query = bytes(IP(src=C, dst=S) / UDP(sport=40001, dport=1194) / DNS(id=7, qd=DNSQR(qname="example.test")))
    assert enf.handle(query) != firewall.MARK_DROP and enf.reused == 1


def _wg(rng_seed: int, sport: int = 40002, dport: int = 51820) -> tuple[bytes, bytes]:
    """A WireGuard handshake initiation (148 bytes) and its response (92 bytes) on UDP sport -> dport."""
    import random

    rng = random.Random(rng_seed)
    init = b"\x01\x00\x00\x00" + rng.randbytes(4) + rng.randbytes(140)
    resp = b"\x02\x00\x00\x00" + rng.randbytes(4) + init[4:8] + rng.randbytes(80)
    up = bytes(IP(src=C, dst=S) / UDP(sport=sport, dport=dport) / init)
    down = bytes(IP(src=S, dst=C) / UDP(sport=dport, dport=sport) / resp)
    return up, down


def test_a_registered_tunnels_rehandshake_is_renewed_without_a_second_report() -> None:
    records: list[object] = []
    reg = Registry(parse_registry("registrations:\n  - id: R-1\n    customer: lab\n"
                                  "    protocols: [wireguard]\n"
                                  f"    servers:\n      - {{address: {S}, ports: [51820]}}\n", "reg.yaml"))
    enf = Enforcer(parse_config("policy: {klass: {vpn_tunnel: enforce}}\n"), reg, records.append)
    up, down = _wg(1)
    enf.handle(up)
    assert enf.handle(down) == firewall.MARK_ALLOW and len(records) == 1  # registered: allowed for good
    # two minutes later wireguard-go re-handshakes: the kernel queues the handshake-sized datagrams of the
    # allowed connection; they are looked at afresh (a tunnel could have replaced the old flow) ...
    up2, down2 = _wg(2)
    enf.handle(up2)
    assert enf.handle(down2) == firewall.MARK_ALLOW and enf.reused == 1
    # ... and the same decision is not logged or reported a second time
    assert len(records) == 1


def test_wireguard_after_dns_on_an_allowed_tuple_is_blocked_and_reported() -> None:
    records: list[object] = []
    enf = Enforcer(parse_config("policy: {klass: {vpn_tunnel: enforce}}\n"), Registry(), records.append)
    for i in range(20):  # plain DNS from the port until the flow is decided and allowed
        q = DNS(id=i, qd=DNSQR(qname="example.test"))
        enf.handle(bytes(IP(src=C, dst=S) / UDP(sport=40002, dport=53) / q))
        enf.handle(bytes(IP(src=S, dst=C) / UDP(sport=53, dport=40002) / DNS(id=i, qr=1, qd=q.qd)))
    assert enf.marks[next(iter(enf.marks))] == firewall.MARK_ALLOW
    up, down = _wg(3, dport=53)
    enf.handle(up)
    assert enf.handle(down) == firewall.MARK_DROP and enf.reused == 1
    assert [getattr(r, "action", None) for r in records][-1] == "block"
