"""Mumble over UDP: the connectionless ping (legacy format) answered by the server.

A client asks a Mumble server (UDP 64738 by default, any port checked) for its status with a 12-byte
datagram: four zero bytes (request type 0) then an 8-byte identifier it chose (a timestamp). The server
answers in 24 bytes: its version (a zero byte then major, minor, patch), the same identifier, then users,
maximum users and allowed bandwidth (32 bits each). Twelve bytes starting with zeros prove little alone,
so only the answer echoing the identifier flags the flow (confirmed). The voice that follows is
encrypted (OCB-AES); the control channel is TLS on TCP, recognisable only by name (not done here).
"""

from __future__ import annotations

from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.callecho import EchoClassifier, Opener
from tunnelwatch.classify.packet import UDP, Packet

PROTOCOL: Final = "mumble"
_ZERO4: Final = b"\x00\x00\x00\x00"


class Mumble(EchoClassifier):
    """Mumble's UDP ping: a 12-byte request answered by a 24-byte reply echoing its identifier."""

    name: ClassVar[str] = "mumble"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    # the only opener is a ping request, which starts with its zero request type
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {UDP: frozenset(_ZERO4[:1])}
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 64738): PROTOCOL}

    def opener(self, p: bytes, pkt: Packet) -> Opener | None:
        """A ping request: type 0 and an 8-byte identifier."""
        if len(p) != 12 or p[:4] != _ZERO4 or p[4:] == bytes(8):
            return None
        return Opener(PROTOCOL, "12-byte ping request (type 0, 8-byte identifier)", p[4:], lone=False)

    def answer(self, p: bytes, op: Opener, direction: int) -> str | None:
        """A 24-byte ping reply: version, the same identifier, users <= maximum."""
        if direction != 1 or len(p) != 24 or p[0] != 0 or p[4:12] != op.key:
            return None
        users, most = unpack_from("!II", p, 12)
        if users > most:
            return None
        return f"server ping reply (version {p[1]}.{p[2]}.{p[3]}, {users}/{most} users) echoes the identifier"
