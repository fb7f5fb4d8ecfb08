"""Discord voice over UDP: the IP discovery exchange and the voice server's keep-alive echo.

Before sending media a Discord client asks the voice server (UDP 50000-50100 and others) which address
it is seen from: a 74-byte datagram, type 0x0001, length 70, the client's 32-bit SSRC, then 66 bytes of
address and port (zero in the request). The server answers with type 0x0002, the same length and SSRC
and the client's address filled in: confirmed. A request alone has four fixed bytes and an exact length:
heuristic. The client also sends 8-byte keep-alives, the constant 0x1337cafe then a 32-bit counter, that
the server echoes byte for byte: a lone one is heuristic, the echo confirmed. The media itself is RTP
(encrypted payload), recognised by the RTP classifier when the discovery was not seen.
"""

from __future__ import annotations

from typing import ClassVar, Final

from tunnelwatch.classify.callecho import EchoClassifier, Opener
from tunnelwatch.classify.packet import UDP, Packet

PROTOCOL: Final = "discord"
DISCOVERY_LEN: Final = 74
_REQUEST: Final = b"\x00\x01\x00\x46"
_RESPONSE: Final = b"\x00\x02\x00\x46"
KEEPALIVE_MAGIC: Final = b"\x13\x37\xca\xfe"


class Discord(EchoClassifier):
    """Discord voice: IP discovery request/response, and echoed 0x1337cafe keep-alives."""

    name: ClassVar[str] = "discord"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    # an opener starts with the keep-alive's constant or the discovery request's type: fixed first bytes
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {UDP: frozenset({KEEPALIVE_MAGIC[0], _REQUEST[0]})}
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)

    def opener(self, p: bytes, pkt: Packet) -> Opener | None:
        """An IP discovery request or a keep-alive."""
        if len(p) == 8 and p[:4] == KEEPALIVE_MAGIC:
            return Opener(PROTOCOL, "8-byte keep-alive 0x1337cafe + counter", p)
        if len(p) == DISCOVERY_LEN and p[:4] == _REQUEST:
            return Opener(PROTOCOL, "74-byte IP discovery request (type 1, length 70)", p[4:8])
        return None

    def answer(self, p: bytes, op: Opener, direction: int) -> str | None:
        """The keep-alive echoed, or the discovery response with the same SSRC."""
        if direction != 1:
            return None
        if len(op.key) == 8:
            return "the server echoes the keep-alive" if p == op.key else None
        if len(p) == DISCOVERY_LEN and p[:4] == _RESPONSE and p[4:8] == op.key:
            return "IP discovery response (type 2) with the same SSRC"
        return None
