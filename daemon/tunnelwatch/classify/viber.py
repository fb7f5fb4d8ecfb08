"""Viber calls over UDP: the relay's session messages, tied together by a session prefix and an id.

Every datagram of a Viber relay session starts with the same two bytes (chosen per session) then a
one-byte message type and a zero byte. The client's join (type 0x01) carries an 8-byte session id at
offset 6, its media-path probe (type 0x19) the same id at offset 4; the relay answers 0x0c resp. 0x1a
with the same prefix and the id at the same place. Two bytes of fixed shape are too little alone, so
only the answer flags the flow, then confirmed (the id ties it to the request). Port numbers (7985,
7987 on Viber's relays) are not used.
"""

from __future__ import annotations

from typing import ClassVar, Final

from tunnelwatch.classify.callecho import EchoClassifier, Opener
from tunnelwatch.classify.packet import UDP, Packet

PROTOCOL: Final = "viber"
#: request type -> (its answer type, offset of the 8-byte session id in both)
REQUESTS: Final = {0x01: (0x0C, 6), 0x19: (0x1A, 4)}


class Viber(EchoClassifier):
    """Viber relay sessions: a join or probe answered with the same prefix and session id."""

    name: ClassVar[str] = "viber"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)

    def opener(self, p: bytes, pkt: Packet) -> Opener | None:
        """A join (0x01) or probe (0x19) message with its session id."""
        if len(p) < 20 or p[3] != 0 or p[2] not in REQUESTS:
            return None
        off = REQUESTS[p[2]][1]
        sid = p[off:off + 8]
        if sid == bytes(8):
            return None
        return Opener(PROTOCOL, f"relay message type 0x{p[2]:02x} with an 8-byte session id",
                      p[:3] + sid, lone=False)

    def answer(self, p: bytes, op: Opener, direction: int) -> str | None:
        """The relay's answer type with the same prefix and session id."""
        want, off = REQUESTS[op.key[2]]
        if direction == 1 and len(p) >= off + 8 and p[:2] == op.key[:2] and p[2] == want and p[3] == 0 \
                and p[off:off + 8] == op.key[3:]:
            return f"relay answers type 0x{want:02x} with the same prefix and session id"
        return None
