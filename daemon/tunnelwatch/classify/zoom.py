"""Zoom media over UDP: the server join exchange, Zoom's STUN-like probe, and peer-to-peer hellos.

Server (UDP 8801-8810): the client's first datagram is type 0x01, a zero byte, a one-byte value, then a
16-byte token; the server answers type 0x02 with the same token (then 0x03/0x04 and media in type 0x05
frames). Two bytes are too little alone, so only the answer flags the flow (confirmed).
Probe (UDP 3478/3479 of Zoom's servers): a classic-STUN-shaped Binding request (type 0x0001, body 24,
a 16-byte transaction id, one attribute 0x0101 of 20 bytes) answered by type 0x0002, a message type
no STUN specification defines, with the same transaction id: confirmed, never alone.
Peer to peer: datagrams open with 0x1f 0x02 0x01 0x00 and carry, at offset 24, a 32-bit length then the
dotted-quad text of an address; when that text is this packet's own destination address the shape is
specific (heuristic); a reply of the same shape from the peer confirms.
"""

from __future__ import annotations

import socket
from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.callecho import EchoClassifier, Opener
from tunnelwatch.classify.packet import UDP, Packet

PROTOCOL: Final = "zoom"
_PROBE: Final = b"\x00\x01\x00\x18"
_PROBE_ATTR: Final = b"\x01\x01\x00\x14"
_P2P: Final = b"\x1f\x02\x01\x00"
_P2P_TEXT: Final = 24


def p2p_address(p: bytes) -> str | None:
    """The dotted-quad text a peer-to-peer hello carries, or None."""
    if len(p) < _P2P_TEXT + 11 or p[:4] != _P2P:
        return None
    n = unpack_from("!I", p, _P2P_TEXT)[0]
    if not 7 <= n <= 15 or len(p) < _P2P_TEXT + 4 + n:
        return None
    text = p[_P2P_TEXT + 4:_P2P_TEXT + 4 + n]
    try:
        socket.inet_aton(text.decode("ascii"))
    except (UnicodeDecodeError, OSError):
        return None
    return text.decode("ascii") if text.count(b".") == 3 else None


class Zoom(EchoClassifier):
    """Zoom: join token echoed by the server, the STUN-like probe, peer-to-peer hellos."""

    name: ClassVar[str] = "zoom"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    # each opener starts with a fixed byte: the join request's type 0x01, the probe's, the hello's
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {UDP: frozenset({0x01, _PROBE[0], _P2P[0]})}
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 8801): PROTOCOL}

    def opener(self, p: bytes, pkt: Packet) -> Opener | None:
        """A join request, a probe or a peer-to-peer hello naming its destination."""
        if len(p) >= 40 and p[0] == 0x01 and p[1] == 0x00:
            return Opener(PROTOCOL, "join request (type 0x01, 16-byte token)", b"J" + p[3:19], lone=False)
        if len(p) == 44 and p[:4] == _PROBE and p[20:24] == _PROBE_ATTR:
            return Opener(PROTOCOL, "STUN-shaped probe with attribute 0x0101", b"P" + p[4:20], lone=False)
        text = p2p_address(p)
        if text is not None and len(pkt.dst) == 4 and text == socket.inet_ntoa(pkt.dst):
            return Opener(PROTOCOL, "peer-to-peer hello 0x1f020100 naming its destination address", b"H")
        return None

    def answer(self, p: bytes, op: Opener, direction: int) -> str | None:
        """The token or transaction id echoed under type 0x02, or the peer's own hello."""
        if direction != 1:
            return None
        kind, key = op.key[:1], op.key[1:]
        if kind == b"J":
            return "server answers type 0x02 with the same token" if (
                len(p) >= 19 and p[0] == 0x02 and p[3:19] == key) else None
        if kind == b"P":
            return "answer type 0x0002 with the same transaction id" if (
                len(p) >= 20 and p[:2] == b"\x00\x02" and p[4:20] == key) else None
        return "the peer answers with its own hello" if p2p_address(p) is not None else None
