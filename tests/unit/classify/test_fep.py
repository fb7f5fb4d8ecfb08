"""Fully encrypted first packets: Wu et al.'s exemptions (each one a near-miss), both directions required.

Each flow runs in both views: offline (the engine sees every packet of the capture) and inline (kernelview:
what the kernel queues to the daemon, no handshake and no pure ACKs); the verdict must be the same. The
guard against flows whose start is not in view is tested in each view."""

from __future__ import annotations

import datetime as dt
import random
import socket

import pytest
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from support import one_verdict
from tunnelwatch.classify.base import DONE, REJECT, Context, Verdict
from tunnelwatch.classify.fep import MIN_LEN, PAYLOAD_ONLY_PKTS, FullyEncrypted, exemption, popcount_mean
from tunnelwatch.classify.flow import Flow, flow_key
from tunnelwatch.classify.packet import TCP as TCP_PROTO
from tunnelwatch.classify.packet import Packet, parse_ip
from tunnelwatch.config.runconfig import parse_config
from tunnelwatch.offline.kernelview import inline_records
from tunnelwatch.policy.policy import Policy
from tunnelwatch.policy.registry import Registry

C, S = "192.0.2.10", "198.51.100.7"
NAMES = ["fully_encrypted", "common"]


def rand(n: int, seed: int) -> bytes:
    """Uniformly random bytes from a fixed seed (checked to pass every exemption)."""
    b = random.Random(seed).randbytes(n)
    assert exemption(b) == "", (seed, exemption(b))
    return b


def t(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags="PA") / Raw(b)


def handshake(port: int = 8388) -> list[IP]:
    return [IP(src=C, dst=S) / TCP(sport=40000, dport=port, flags="S"),
            IP(src=S, dst=C) / TCP(sport=port, dport=40000, flags="SA"),
            IP(src=C, dst=S) / TCP(sport=40000, dport=port, flags="A")]


def flow(c2s: bytes, s2c: bytes, port: int = 8388) -> list[IP]:
    return [*handshake(port), t(C, S, 40000, port, c2s), t(S, C, port, 40000, s2c)]


def ack(src: str, dst: str, sp: int, dp: int) -> IP:
    return IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags="A")


def inline_klass(pkts: list[IP]) -> tuple[str, str]:
    """(klass, protocol) of the single connection as the daemon decides it from what the kernel queues."""
    parsed = [parse_ip(bytes(p), 1000.0 + i * 0.01) for i, p in enumerate(pkts)]
    assert all(x is not None for x in parsed)
    [rec] = inline_records("x.pcap", [x for x in parsed if x is not None])
    return rec["klass"], rec["protocol"]


def both_views(pkts: list[IP]) -> tuple[str, str]:
    """(klass, protocol) offline, asserted equal to the inline one."""
    v = one_verdict(pkts, names=NAMES)
    assert inline_klass(pkts) == (v.klass, v.protocol), "offline and inline views disagree"
    return v.klass, v.protocol


def test_random_both_ways_is_heuristic_fully_encrypted() -> None:
    v = one_verdict(flow(rand(300, 1), rand(1200, 2)), names=NAMES)
    assert (v.klass, v.protocol, v.confidence) == ("proxy_obfuscated", "fully_encrypted", "heuristic")
    assert any("300 bytes" in e for e in v.evidence)


def test_the_daemon_sees_no_handshake_and_still_flags_it() -> None:
    # Inline the kernel queues neither the handshake nor pure ACKs: the client's first data is the first
    # packet the engine sees. Realistic shape: ACKs between the exchanges.
    pkts = [*handshake(), t(C, S, 40000, 8388, rand(300, 1)), ack(S, C, 8388, 40000),
            t(S, C, 8388, 40000, rand(1200, 2)), ack(C, S, 40000, 8388), t(S, C, 8388, 40000, rand(1400, 3))]
    assert inline_klass(pkts) == ("proxy_obfuscated", "fully_encrypted")
    assert both_views(pkts) == ("proxy_obfuscated", "fully_encrypted")


def test_capture_begun_mid_flow_is_not_judged_once_an_ack_shows() -> None:
    # The same two data packets as the daemon's view, but the capture shows payload-less segments, so it
    # would have shown the SYN: the start of this flow is not in it. Before the reply, or after it (the
    # verdict is withdrawn).
    before = [t(C, S, 40000, 8388, rand(300, 1)), ack(S, C, 8388, 40000), t(S, C, 8388, 40000, rand(1200, 2))]
    after = [t(C, S, 40000, 8388, rand(300, 1)), t(S, C, 8388, 40000, rand(1200, 2)), ack(C, S, 40000, 8388),
             t(S, C, 8388, 40000, rand(1400, 3))]
    for pkts in (before, after):
        assert one_verdict(pkts, names=NAMES).klass == "unknown"


def test_a_capture_of_data_only_is_the_daemons_view() -> None:
    # Two data packets and nothing else cannot be told from what the kernel queues: judged (see fep.py).
    pkts = [t(C, S, 40000, 8388, rand(300, 1)), t(S, C, 8388, 40000, rand(1200, 2))]
    assert both_views(pkts) == ("proxy_obfuscated", "fully_encrypted")


def test_data_in_the_syn_is_the_start_in_every_view() -> None:  # TCP Fast Open
    pkts = [IP(src=C, dst=S) / TCP(sport=40000, dport=8388, flags="S") / Raw(rand(300, 1)),
            IP(src=S, dst=C) / TCP(sport=8388, dport=40000, flags="SA"), ack(C, S, 40000, 8388),
            t(S, C, 8388, 40000, rand(1200, 2)), ack(C, S, 40000, 8388)]
    assert both_views(pkts) == ("proxy_obfuscated", "fully_encrypted")


def _pkt(src: str, dst: str, sp: int, dp: int, payload: bytes, flags: int = 0x18) -> Packet:
    return Packet(0.0, 4, socket.inet_aton(src), socket.inet_aton(dst), TCP_PROTO, sp, dp, 40 + len(payload),
                  payload, flags)


def _feed(f: Flow, c: FullyEncrypted, pkt: Packet, d: int) -> object:
    f.packets += 1
    if d:
        f.pkts1 += 1
        f.pay1 += 1
    else:
        f.pkts0 += 1
        f.pay0 += 1
    return c.inspect(f, pkt, d, Context())


def test_a_reopened_flow_is_not_judged() -> None:
    # A later window of a flow the daemon re-opened starts mid-session: its first packet is not the start.
    c = FullyEncrypted()
    first = _pkt(C, S, 40000, 8388, rand(300, 1))
    f = Flow(flow_key(first), first)
    f.reopens = 1
    assert _feed(f, c, first, 0) is REJECT


def test_payload_only_flow_stops_after_its_watch() -> None:
    c = FullyEncrypted()
    first = _pkt(C, S, 40000, 8388, rand(300, 1))
    f = Flow(flow_key(first), first)
    assert _feed(f, c, first, 0) is None
    assert isinstance(_feed(f, c, _pkt(S, C, 8388, 40000, rand(1200, 2)), 1), Verdict)
    results = [_feed(f, c, _pkt(S, C, 8388, 40000, rand(1400, 3)), 1) for _ in range(PAYLOAD_ONLY_PKTS)]
    assert DONE in results and all(r in (None, DONE) for r in results)  # bounded, never withdrawn


def test_later_packets_do_not_withdraw_the_verdict() -> None:
    # bulk data after the first exchange may look like anything (here: a length-prefixed frame)
    later = (600).to_bytes(2, "big") + rand(600, 23)[2:]
    pkts = [*flow(rand(300, 1), rand(1200, 2)), t(S, C, 8388, 40000, later)]
    assert both_views(pkts) == ("proxy_obfuscated", "fully_encrypted")


def test_never_confirmed_and_needs_the_server_reply() -> None:
    assert both_views([*handshake(), t(C, S, 40000, 8388, rand(300, 1))])[0] == "unknown"


@pytest.mark.parametrize("payload,rule", [
    (b"\x16\x03\x01\x02\x00\x01" + bytes(300), "Ex5 TLS"),
    (b"\x17\x03\x03" + random.Random(3).randbytes(300), "Ex5 TLS"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + random.Random(4).randbytes(100), "Ex5 HTTP"),
    (b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n" + random.Random(5).randbytes(100), "known protocol prefix"),
    (b"abcdef" + random.Random(6).randbytes(300), "Ex2 first 6 bytes printable"),
    (bytes(random.Random(7).randrange(0x20, 0x7F) for _ in range(300)), "Ex2 first 6 bytes printable"),
    (b"\x01" + b"xx\x01" * 100, "Ex3 more than half printable"),
    (b"\x80" + b"\x01" * 99 + random.Random(8).randbytes(200), "Ex1 popcount"),
    (b"\xff" * 100 + random.Random(9).randbytes(200), "Ex1 popcount"),
])
def test_each_exemption_applies(payload: bytes, rule: str) -> None:
    assert exemption(payload) == rule


def test_ex4_contiguous_printable_run() -> None:
    body = bytearray(rand(400, 10))
    body[100:121] = b"A" * 21  # 21 printable bytes in a row: exempt
    assert exemption(bytes(body)) == "Ex4 printable run > 20"
    body[120] = 0x01  # a run of exactly 20 is not (the rule is "more than 20")
    assert exemption(bytes(body)) == ""


def test_length_prefixed_and_short_packets_are_exempt() -> None:
    body = rand(200, 11)
    assert exemption(len(body).to_bytes(2, "big") + body[2:]) == "length-prefixed framing"
    assert exemption(len(body).to_bytes(2, "little") + body[2:]) == "length-prefixed framing"
    assert exemption(body[:MIN_LEN - 1]) == "short"


def test_popcount_mean() -> None:
    assert popcount_mean(b"\xff\x00") == 4.0
    assert popcount_mean(b"") == 0.0


@pytest.mark.parametrize("c2s,s2c", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + random.Random(12).randbytes(300), rand(900, 13)),
    (b"GET / HTTP/1.1\r\nHost: example\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n" + rand(900, 14)),
    (rand(300, 15), b"HTTP/1.1 400 Bad Request\r\n\r\n"),
    (rand(300, 16), b"\x16\x03\x03\x00\x7a\x02" + random.Random(17).randbytes(400)),
])
def test_near_misses_are_not_flagged(c2s: bytes, s2c: bytes) -> None:
    assert both_views(flow(c2s, s2c, port=443))[0] != "proxy_obfuscated"


def test_server_speaks_first_is_rejected() -> None:
    # SSH/SMTP-style: the server's banner comes first, so it cannot be a client-first proxy protocol.
    pkts = [t(S, C, 22, 40000, rand(200, 18)), t(C, S, 40000, 22, rand(300, 19)),
            t(S, C, 22, 40000, rand(300, 20))]
    pkts[0][TCP].flags = "S"  # the client still opened the connection
    pkts.insert(0, IP(src=C, dst=S) / TCP(sport=40000, dport=22, flags="S"))
    v = one_verdict(pkts, names=NAMES)
    assert v.klass != "proxy_obfuscated"
    # Inline the banner is the first packet the daemon sees, so the server counts as the initiator: a
    # printable banner is exempt there (a random-looking server-first protocol would not be, see fep.py).
    banner = [IP(src=C, dst=S) / TCP(sport=40000, dport=22, flags="S"),
              t(S, C, 22, 40000, b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n" + rand(200, 18)),
              t(C, S, 40000, 22, rand(300, 19)), t(S, C, 22, 40000, rand(300, 20))]
    assert inline_klass(banner)[0] != "proxy_obfuscated"


def test_random_printable_data_is_not_flagged() -> None:
    text = bytes(random.Random(21).randrange(0x20, 0x7F) for _ in range(600))
    assert both_views(flow(text, text[::-1]))[0] != "proxy_obfuscated"


def test_hostile_inputs_never_raise() -> None:
    rnd = random.Random(22)
    for n in range(0, 80):
        exemption(rnd.randbytes(n))


@pytest.mark.parametrize("config,lowered", [
    ("policy:\n  default: {mode: enforce}\n",
     "policy:\n  default: {mode: enforce, min_confidence: heuristic}\n"),
    ("policy:\n  klass: {proxy_obfuscated: enforce}\n",
     "policy:\n  klass: {proxy_obfuscated: {mode: enforce, min_confidence: heuristic}}\n"),
])
def test_heuristic_proxy_verdicts_are_reported_not_blocked_by_default(config: str, lowered: str) -> None:
    # Even in enforce mode, the default min_confidence (confirmed) keeps a heuristic proxy verdict at
    # "report"; only an operator who lowers min_confidence blocks on it.
    verdict = Verdict("proxy_obfuscated", "fully_encrypted", "heuristic", ("no exemption",))
    pkt = Packet(0.0, 4, socket.inet_aton(C), socket.inet_aton(S), TCP_PROTO, 40000, 8388, 100, b"x")
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    d = Policy.from_config(parse_config(config)).decide(Flow(flow_key(pkt), pkt), verdict, Registry(), now)
    assert d.action == "report"
    d = Policy.from_config(parse_config(lowered)).decide(Flow(flow_key(pkt), pkt), verdict, Registry(), now)
    assert d.action == "block"
