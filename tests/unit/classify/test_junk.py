"""Junk before a handshake: only strong signatures name another protocol, the wait ends only when both
directions' first datagrams are one and the same other protocol, or after MAX_JUNK junk datagrams."""

from __future__ import annotations

import random
import struct

import pytest

from tunnelwatch.classify.junk import MAX_JUNK, JunkGate, other_protocol

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
