"""Telegram calls through Telegram's UDP reflectors (tgcalls), outside STUN/TURN.

Every datagram to or from a reflector starts with the call's 16-byte peer tag; the reflector's own
messages (pings, peer information) follow it with twelve 0xff bytes, where relayed media has encrypted
data. A client's first datagram of that shape is heuristic (28 bytes with 12 fixed ones); the
reflector answering with the same peer tag and marker is confirmed. Reported as "telegram_call", the
name the STUN classifier gives Telegram's TURN relays.
"""

from __future__ import annotations

from typing import ClassVar, Final

from tunnelwatch.classify.callecho import EchoClassifier, Opener
from tunnelwatch.classify.packet import UDP, Packet

PROTOCOL: Final = "telegram_call"
TAG_LEN: Final = 16
MARKER: Final = b"\xff" * 12


class Telegram(EchoClassifier):
    """Telegram reflector traffic: a peer tag then the 12-byte 0xff marker, echoed by the reflector."""

    name: ClassVar[str] = "telegram"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)

    def opener(self, p: bytes, pkt: Packet) -> Opener | None:
        """A reflector message: peer tag, twelve 0xff bytes, at least a 4-byte type."""
        if len(p) < 32 or p[16:28] != MARKER or p[:TAG_LEN] == MARKER[:1] * TAG_LEN:
            return None
        return Opener(PROTOCOL, "reflector message (16-byte peer tag, twelve 0xff bytes)", p[:TAG_LEN])

    def answer(self, p: bytes, op: Opener, direction: int) -> str | None:
        """The reflector's answer with the same peer tag and marker."""
        if direction == 1 and len(p) >= 32 and p[:TAG_LEN] == op.key and p[16:28] == MARKER:
            return "the reflector answers with the same peer tag"
        return None
