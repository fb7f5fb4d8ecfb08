"""Junk before a handshake: only strong signatures name another protocol, the wait ends only when both
directions' first datagrams are one and the same other protocol, or after MAX_JUNK junk datagrams."""

from __future__ import annotations

import random
import struct
from types import SimpleNamespace
from typing import Any

import pytest

from support.wgcraft import u
from tunnelwatch.classify.junk import MAX_JUNK, SHARED, JunkGate, SharedGate, other_protocol

DNS_QUERY = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00" + \
    struct.pack("!HH", 1, 1)
DNS_ANSWER = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0) + b"\x07example\x03com\x00" + \
    struct.pack("!HH", 1, 1) + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1])
QUIC_INITIAL = bytes([0xC3]) + struct.pack("!I", 1) + bytes(60)
STUN = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + bytes(12)
DISCO = "TS💬".encode() + bytes(40)
TEXT = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(("payload", "name"), [
    (QUIC_INITIAL, "quic"), (STUN, "stun"), (DISCO, "tailscale"), (TEXT, "text"), (DNS_QUERY, "dns"),
    (DNS_ANSWER, "dns"), (b"\x01\x00\x00\x00" + bytes(144), ""), (b"short", ""),
])
def test_other_protocol_names_only_clear_signatures(payload: bytes, name: str) -> None:
    assert other_protocol(payload) == name


@pytest.mark.parametrize(("head", "name"), [
    (b"HELLO\tWORLD\r\n", "text"), (b"HELLO WORLD\x7f", ""), (b"HELLO WORLD\x00", ""),
    (b"HELLO\xa0WORLD!", ""),
])
def test_text_means_printable_ascii_tab_cr_lf_only(head: bytes, name: str) -> None:
    assert other_protocol(head + bytes(20)) == name


def test_the_answer_kept_for_the_last_datagram_is_never_stale() -> None:
    # three classifiers ask about one datagram in turn: the answer is kept, but only for that object
    assert other_protocol(TEXT) == "text"
    assert other_protocol(TEXT) == "text"
    assert other_protocol(STUN) == "stun"
    assert other_protocol(bytes(TEXT)) == "text"
    buf = bytearray(TEXT)
    assert other_protocol(buf) == "text"
    buf[:4] = b"\x00\x01\x00\x00"
    assert other_protocol(buf) == ""  # same object, other bytes: asked again


def test_random_bytes_are_almost_never_named() -> None:
    rng = random.Random(11)
    named = sum(bool(other_protocol(bytes(rng.randrange(256) for _ in range(rng.randint(8, 200)))))
                for _ in range(2000))
    assert named < 20


def test_one_direction_alone_never_ends_the_wait() -> None:
    g = JunkGate()
    assert not g.first_look(QUIC_INITIAL, 0)  # a junk datagram imitating QUIC
    assert not g.first_look(DNS_ANSWER, 1)  # the other side says something else
    g2 = JunkGate()
    assert not g2.first_look(DNS_QUERY, 0)
    assert not g2.first_look(b"\x02\x00\x00\x00" + bytes(88), 1)  # a tunnel's reply: nothing clear


def test_both_directions_speaking_one_protocol_end_the_wait_in_either_order() -> None:
    g = JunkGate()
    assert not g.first_look(DNS_QUERY, 0)
    assert g.first_look(DNS_ANSWER, 1)
    g2 = JunkGate()
    assert not g2.first_look(DNS_ANSWER, 1)
    assert g2.first_look(DNS_QUERY, 0)


def test_only_the_first_datagram_of_each_direction_counts() -> None:
    g = JunkGate()
    assert not g.first_look(b"\x01\x00\x00\x00" + bytes(144), 0)
    assert not g.first_look(DNS_QUERY, 0)  # the second one from the client: ignored
    assert not g.first_look(DNS_ANSWER, 1)
    assert (g.first0, g.first1) == ("", "dns")


def test_junk_count_gives_up_after_max_junk() -> None:
    g = JunkGate()
    assert not any(g.junk_seen() for _ in range(MAX_JUNK))
    assert g.junk_seen() and g.junk == MAX_JUNK + 1


def test_shared_gate_answers_each_classifier_alike_on_one_datagram() -> None:
    """The three junk-tolerant classifiers ask the flow's one shared gate about each datagram in turn: all
    three get the answer the first one got, and only on the direction's first datagram."""
    f: Any = SimpleNamespace(pay0=1, pay1=0)
    g = SharedGate()
    assert [g.first_look(f, DNS_QUERY, 0) for _ in range(3)] == [False] * 3
    f.pay1 = 1
    assert [g.first_look(f, DNS_ANSWER, 1) for _ in range(3)] == [True] * 3
    f.pay1 = 2
    assert not g.first_look(f, DNS_ANSWER, 1)  # a later datagram: not that direction's first


def test_shared_gate_counts_datagrams_and_hands_over_a_private_gate() -> None:
    """Every datagram on the shared gate was junk to all three, so its count is the datagrams seen since
    it was made; a classifier that leaves it takes the first looks and the junk before this datagram."""
    f: Any = SimpleNamespace(pay0=5, pay1=2)  # a flow re-opened after 5 + 2 datagrams: counts start here
    g = SharedGate()
    for i in range(3):
        f.pay0 += 1
        assert g.before(f, 0) == i  # asked before the first look: the same
        g.first_look(f, b"\x39" + bytes(20), 0)
        assert g.before(f, 0) == i and g.seen(f) == i + 1
    f.pay1 += 1
    assert g.before(f, 1) == 3
    g.first_look(f, DNS_ANSWER, 1)
    assert g.before(f, 1) == 3 and g.seen(f) == 4
    mine = g.private(f, 1)
    assert (mine.first0, mine.first1, mine.junk) == ("", "dns", 3)
    fresh = SharedGate()
    f.pay0 += 1
    fresh.first_look(f, DNS_QUERY, 0)
    assert (fresh.private(f, 0).first0, fresh.private(f, 0).first1) == ("dns", None)  # reply not seen


def test_the_three_share_one_gate_and_each_gives_up_after_max_junk() -> None:
    """WireGuard, AmneziaWG and OpenVPN on one flow of junk: one shared gate and no state of their own,
    all three still there after MAX_JUNK junk datagrams and all three gone after one more."""
    from tunnelwatch.classify import load_classifiers
    from tunnelwatch.classify.engine import Engine
    from tunnelwatch.classify.packet import parse_ip

    names = ("wireguard", "amneziawg", "openvpn")
    e = Engine([c for c in load_classifiers() if c.name in names], budget=4 * MAX_JUNK)
    junk = b"\x39" + bytes(range(0x80, 0x94))  # key id 1, 21 bytes: junk to all three, no other protocol
    assert other_protocol(junk) == ""
    ip = bytes(u(junk))
    for i in range(MAX_JUNK + 1):
        pkt = parse_ip(ip, 1.0 + i / 1000)
        assert pkt is not None
        flow = e.process(pkt)
        if i < MAX_JUNK:
            assert sorted(c.name for c in flow.active) == sorted(names)
            assert list(flow.state) == [SHARED] and flow.state[SHARED].seen(flow) == i + 1
    assert not flow.active
