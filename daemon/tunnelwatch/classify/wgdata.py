"""WireGuard-family transport data seen without its handshake (a flow first seen mid-session).

Owns the per-direction evidence both the wireguard and the amneziawg classifiers read from data messages:
a 4-byte message type (4 in WireGuard, H4 in AmneziaWG: constant per session), the receiver's 4-byte
index (constant per direction while a key pair lives), an 8-byte little-endian counter that starts at 0
with each key pair and rises by one per message, then ChaCha20-Poly1305 ciphertext: the plaintext is
padded to a multiple of 16 (but never past the tunnel MTU) and a 16-byte tag follows, so a message is
32 + 16n bytes long, except full-size packets cut at an MTU that is not a multiple of 16, which all have
one and the same length. Random bytes, RTP/SRTP, QUIC short headers and DTLS records fail these checks
within two or three packets: a constant 32-bit field, a second one per direction and a counter whose top
16 bits are zero and that rises by small steps.
"""

from __future__ import annotations

from struct import unpack_from
from typing import Final

#: shortest transport message: 16-byte header + 16-byte tag (a keepalive)
MIN_DATA: Final = 32
#: below this an unaligned length is not a full-size packet cut at the MTU (IPv6's minimum MTU is 1280)
_MTU_CUT_MIN: Final = 576
#: a counter rises by at most this much between two packets of one window (losses, unqueued packets)
_MAX_STEP: Final = 1 << 16
#: counters restart at 0 with every key pair (at least every 2-3 minutes): 2^48 is never reached
_CTR_LIMIT: Final = 1 << 48
#: a new receiver index with a counter this small is a fresh key pair (rekey), not junk
_FRESH: Final = 8


def data_fields(p: bytes, off: int = 0) -> tuple[int, int, int] | None:
    """(message type, receiver index, counter) of a data-shaped message at `off`, else None."""
    n = len(p) - off
    if n < MIN_DATA:
        return None
    mtype, rx, ctr = unpack_from("<IIQ", p, off)
    if ctr >= _CTR_LIMIT:
        return None
    return mtype, rx, ctr


class DataDir:
    """One direction's transport messages: the type, receiver index, last counter and how many fit."""

    __slots__ = ("ctr", "cut", "mtype", "n", "rx")

    def __init__(self) -> None:
        self.mtype = -1
        self.rx = -1
        self.ctr = -1
        self.n = 0
        self.cut = 0  # the one unaligned length allowed (full-size packets at a non-16-aligned MTU)

    def feed(self, mtype: int, rx: int, ctr: int, length: int) -> bool:
        """Account one data-shaped message; True when it continues this direction's session."""
        body = length - MIN_DATA
        if body % 16 and (body < _MTU_CUT_MIN or (self.cut and self.cut != length)):
            return False
        if self.n and mtype == self.mtype and rx == self.rx and 0 < ctr - self.ctr <= _MAX_STEP:
            self.ctr = ctr
            self.n += 1
            if body % 16:
                self.cut = length
            return True
        if self.n >= 2 and not (mtype == self.mtype and rx != self.rx and ctr < _FRESH):
            return False  # an established session is not replaced by one odd datagram (junk)
        # first message, a lone earlier one that led nowhere, or a rekey: start over from this one
        self.mtype, self.rx, self.ctr, self.n = mtype, rx, ctr, 1
        self.cut = length if body % 16 else 0
        return True


def both_ways(dirs: tuple[DataDir, DataDir], least: int) -> bool:
    """True when each direction has `least` messages of one session, one type both ways, two indices."""
    a, b = dirs
    return a.n >= least and b.n >= least and a.mtype == b.mtype and a.rx != b.rx
