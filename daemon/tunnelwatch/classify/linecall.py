"""LINE calls over UDP: the media relay's framing, a heuristic only.

LINE's call datagrams to its relays begin with a byte 0xd8-0xdb, a byte, a 16-bit per-direction counter
and the two bytes 0x06 0x02 (facts from nDPI's line.c, which found them by reverse engineering; nDPI
also requires a LINE server address, which is not used here). The first datagram must have that shape
and at least 150 bytes. Nothing in the answer is tied to the request, so even both directions of that
shape stay heuristic: it never reaches `confirmed`.
"""

from __future__ import annotations

from typing import ClassVar, Final

from tunnelwatch.classify.callecho import EchoClassifier, Opener
from tunnelwatch.classify.packet import UDP, Packet

PROTOCOL: Final = "line_call"
_MIN_LEN: Final = 150


def framed(p: bytes, min_len: int = _MIN_LEN) -> bool:
    """Whether `p` has the relay framing: 0xd8-0xdb, byte, counter, 0x06 0x02."""
    return len(p) >= min_len and 0xD8 <= p[0] <= 0xDB and p[4] == 0x06 and p[5] == 0x02


class LineCall(EchoClassifier):
    """LINE call relay framing (heuristic)."""

    name: ClassVar[str] = "linecall"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    # the relay framing's first byte is 0xd8-0xdb (framed())
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {UDP: frozenset(range(0xD8, 0xDC))}
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    patience: ClassVar[int] = 1

    def opener(self, p: bytes, pkt: Packet) -> Opener | None:
        """A first datagram with the relay framing."""
        if not framed(p):
            return None
        return Opener(PROTOCOL, "relay framing (0xd8-0xdb, counter, 0x0602; nDPI's LINE pattern)")

    def answer(self, p: bytes, op: Opener, direction: int) -> str | None:
        """Never: nothing ties an answer to the request."""
        return None
