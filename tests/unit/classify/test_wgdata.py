"""WireGuard-family transport data without its handshake: the header fields, one direction's session
(a constant type and receiver index, a counter rising by small steps, 16-aligned lengths or one MTU cut),
rekeys, and junk that cannot replace an established session."""

from __future__ import annotations

import random

from support.wgcraft import le, rnd, wg_data
from tunnelwatch.classify.wgdata import MIN_DATA, DataDir, both_ways, data_fields

RNG = random.Random(3)


def _feed(d: DataDir, p: bytes) -> bool:
    f = data_fields(p)
    assert f is not None
    return d.feed(*f, len(p))


def test_data_fields_reads_type_receiver_and_counter() -> None:
    p = wg_data(RNG, 4, 0xDEADBEEF, 7)
    assert data_fields(p) == (4, 0xDEADBEEF, 7)
    assert data_fields(b"\x00" * 3 + p, 3) == (4, 0xDEADBEEF, 7)
    assert data_fields(p[:MIN_DATA - 1]) is None
    assert data_fields(le(4) + le(1) + le(1 << 48, 8) + bytes(32)) is None  # a counter never that high


def test_a_session_both_ways_is_recognised() -> None:
    up, down = DataDir(), DataDir()
    for ctr in range(3):
        assert _feed(up, wg_data(RNG, 4, 111, ctr))
        assert _feed(down, wg_data(RNG, 4, 222, ctr + 10))
    assert up.n == down.n == 3
    assert both_ways((up, down), 3) and not both_ways((up, down), 4)


def test_one_receiver_index_both_ways_or_two_types_is_not_a_session() -> None:
    a, b = DataDir(), DataDir()
    for ctr in range(2):
        _feed(a, wg_data(RNG, 4, 111, ctr))
        _feed(b, wg_data(RNG, 4, 111, ctr))
    assert not both_ways((a, b), 2)
    c = DataDir()
    for ctr in range(2):
        _feed(c, wg_data(RNG, 5, 222, ctr))
    assert not both_ways((a, c), 2)


def test_a_counter_that_does_not_rise_starts_over() -> None:
    d = DataDir()
    assert _feed(d, wg_data(RNG, 4, 111, 5))
    assert _feed(d, wg_data(RNG, 4, 111, 5))  # not rising: a lone earlier one that led nowhere
    assert d.n == 1
    assert _feed(d, wg_data(RNG, 4, 111, 5 + (1 << 16) + 1)) and d.n == 1  # too big a step


def test_junk_cannot_replace_an_established_session_but_a_rekey_can() -> None:
    d = DataDir()
    for ctr in range(3):
        assert _feed(d, wg_data(RNG, 4, 111, ctr))
    assert not _feed(d, wg_data(RNG, 4, 999, 123456))  # one odd datagram
    assert not _feed(d, wg_data(RNG, 7, 999, 0))  # another type
    assert (d.rx, d.n) == (111, 3)
    assert _feed(d, wg_data(RNG, 4, 333, 0))  # a fresh key pair: same type, new index, counter 0
    assert (d.rx, d.n) == (333, 1)


def test_lengths_must_be_aligned_except_one_full_size_cut() -> None:
    d = DataDir()
    assert not d.feed(4, 111, 0, MIN_DATA + 17)  # small and unaligned: not WireGuard
    assert d.feed(4, 111, 0, MIN_DATA + 16)
    assert d.feed(4, 111, 1, 1420)  # 1388-byte body: a full-size packet cut at the MTU
    assert d.feed(4, 111, 2, 1420)
    assert not d.feed(4, 111, 3, 1404)  # a second unaligned full size: not one MTU
    assert d.feed(4, 111, 3, MIN_DATA)  # a keepalive


def test_random_datagrams_do_not_make_a_session() -> None:
    sessions = 0
    for _ in range(200):
        a, b = DataDir(), DataDir()
        for _ in range(3):
            for d in (a, b):
                p = rnd(RNG, 16 * RNG.randint(2, 40))
                f = data_fields(p)
                if f is not None:
                    d.feed(*f, len(p))
        sessions += both_ways((a, b), 3)
    assert sessions == 0
