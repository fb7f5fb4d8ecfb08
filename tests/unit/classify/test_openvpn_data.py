"""OpenVPN's data channel without its handshake: P_DATA_V1/V2 headers, rising AEAD packet ids (confirmed
only with one peer id both ways), CBC-shaped lengths (never confirmed), and junk that cannot replace an
established channel."""

from __future__ import annotations

import random

from tunnelwatch.classify.openvpn_data import P_DATA_V1, P_DATA_V2, DataDir, data_evidence

RNG = random.Random(9)
PEER = b"\x00\x00\x07"


def v2(pid: int, key: int = 0, peer: bytes = PEER, body: int = 64) -> bytes:
    return bytes([P_DATA_V2 << 3 | key]) + peer + pid.to_bytes(4, "big") + RNG.randbytes(body)


def v1(pid: int, key: int = 0, body: int = 64) -> bytes:
    return bytes([P_DATA_V1 << 3 | key]) + pid.to_bytes(4, "big") + RNG.randbytes(body)


def _dirs(up: list[bytes], down: list[bytes]) -> tuple[DataDir, DataDir]:
    a, b = DataDir(), DataDir()
    for p in up:
        assert a.feed(p)
    for p in down:
        assert b.feed(p)
    return a, b


def test_v2_with_one_peer_id_and_rising_ids_both_ways_is_confirmed() -> None:
    a, b = _dirs([v2(i) for i in range(1, 4)], [v2(i) for i in range(1, 4)])
    ok, ev = data_evidence(a, b, 3)
    assert ok and ev.startswith("P_DATA_V2 both ways, one peer id both ways, packet ids rising (3+3")


def test_v1_replies_to_v2_are_a_guess_only() -> None:
    a, b = _dirs([v2(i) for i in range(1, 4)], [v1(i) for i in range(1, 4)])
    ok, ev = data_evidence(a, b, 3)
    assert not ok and ev.startswith("P_DATA_V1/P_DATA_V2 both ways, packet ids rising")


def test_too_few_packets_or_different_key_ids_give_nothing() -> None:
    a, b = _dirs([v2(i) for i in range(1, 3)], [v2(i) for i in range(1, 4)])
    assert data_evidence(a, b, 3) == (False, "")
    a, b = _dirs([v2(i, key=1) for i in range(1, 4)], [v2(i, key=2) for i in range(1, 4)])
    assert data_evidence(a, b, 3) == (False, "")


def test_a_printable_peer_id_is_never_confirmed() -> None:
    a, b = _dirs([v2(i, peer=b"ABC") for i in range(1, 4)], [v2(i, peer=b"ABC") for i in range(1, 4)])
    ok, ev = data_evidence(a, b, 3)
    assert not ok and "packet ids rising" in ev


def test_cbc_lengths_without_rising_ids_are_a_guess() -> None:
    # HMAC-SHA1 (20) + IV (16) + two AES blocks: body 68 bytes = 4 mod 8; packet ids encrypted (random)
    up = [v1(RNG.getrandbits(32), body=64) for _ in range(4)]
    down = [v1(RNG.getrandbits(32), body=64) for _ in range(4)]
    a, b = DataDir(), DataDir()
    for p, q in zip(up, down, strict=True):
        assert a.feed(p) and b.feed(q)  # random ids: the header stays, so every packet continues
    ok, ev = data_evidence(a, b, 3)
    assert not ok and ev == "P_DATA_V1 both ways, HMAC+IV+cipher blocks (4+4 packets)"


def test_other_first_bytes_and_short_packets_are_not_data() -> None:
    d = DataDir()
    assert not d.feed(b"")
    assert not d.feed(bytes([0x80]) + bytes(60))  # RTP
    assert not d.feed(bytes([0x38]) + bytes(60))  # P_CONTROL_HARD_RESET_CLIENT_V2 (opcode 7)
    assert not d.feed(v2(1, body=16))  # no room for a tag and a byte
    assert d.n == 0


def test_junk_cannot_replace_an_established_channel_but_a_new_key_can() -> None:
    d = DataDir()
    for i in range(1, 4):
        assert d.feed(v2(i))
    assert not d.feed(v2(500, key=3, peer=b"\x01\x02\x03"))
    assert d.head == bytes([P_DATA_V2 << 3]) + PEER and d.n == 3
    assert d.feed(v2(1, key=1))  # renegotiation: same peer id, new key id, packet id restarts
    assert d.head[0] & 7 == 1 and d.n == 1
