"""Crafting WireGuard, AmneziaWG and junk datagrams from the protocol descriptions (tests only)."""

from __future__ import annotations

import random

from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

C, S = "192.0.2.10", "198.51.100.7"
CP, SP = 40000, 51820


def le(n: int, size: int = 4) -> bytes:
    return n.to_bytes(size, "little")


def rnd(rng: random.Random, n: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(n))


def u(b: bytes, up: bool = True, cp: int = CP, sp: int = SP) -> IP:
    """A datagram client -> server (`up`) or back."""
    if up:
        return IP(src=C, dst=S) / UDP(sport=cp, dport=sp) / Raw(b)
    return IP(src=S, dst=C) / UDP(sport=sp, dport=cp) / Raw(b)


def junk(rng: random.Random, count: int, lo: int = 1, hi: int = 1400) -> list[bytes]:
    """`count` random datagrams of lo..hi bytes (the first one always `lo` bytes, the second `hi`)."""
    sizes = [lo, hi] + [rng.randint(lo, hi) for _ in range(max(0, count - 2))]
    return [rnd(rng, n) for n in sizes[:count]]


def wg_data(rng: random.Random, mtype: int, receiver: int, counter: int, plain: int = 84,
            pad: int = 0) -> bytes:
    """A transport message: [pad][type][receiver][counter LE] + 16-aligned ciphertext + 16-byte tag."""
    body = -(-plain // 16) * 16 + 16
    return rnd(rng, pad) + le(mtype) + le(receiver) + le(counter, 8) + rnd(rng, body)


def awg_session(rng: random.Random, *, jc: int, jmin: int, jmax: int, s1: int, s2: int,
                h: tuple[int, int, int, int], s4: int = 0, data: int = 3) -> list[IP]:
    """An AmneziaWG start: jc junk datagrams, padded initiation/response with types h, then data both ways."""
    i_idx, r_idx = rng.getrandbits(32), rng.getrandbits(32)
    pkts = [u(j) for j in junk(rng, jc, jmin, jmax)]
    pkts.append(u(rnd(rng, s1) + le(h[0]) + le(i_idx) + rnd(rng, 140)))
    pkts.append(u(rnd(rng, s2) + le(h[1]) + le(r_idx) + le(i_idx) + rnd(rng, 80), up=False))
    for i in range(data):
        pkts.append(u(wg_data(rng, h[3], r_idx, i, pad=s4)))
        pkts.append(u(wg_data(rng, h[3], i_idx, i, pad=s4), up=False))
    return pkts


def wg_session(rng: random.Random, junk_count: int = 0, data: int = 2) -> list[IP]:
    """Plain WireGuard: junk, initiation (148), response (92), data both ways."""
    return awg_session(rng, jc=junk_count, jmin=1, jmax=1400, s1=0, s2=0, h=(1, 2, 3, 4), data=data)
