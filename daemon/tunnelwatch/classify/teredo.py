"""Teredo (RFC 4380): IPv6 tunnelled in UDP through NATs, a tunnel to an IPv6 network.

A Teredo datagram is an IPv6 packet, optionally preceded by an authentication indicator (0x0001, client
id length, authentication value length, the id and value, an 8-byte nonce, a confirmation byte) and/or
an origin indication (0x0000, obfuscated port and IPv4 address, 8 bytes). The IPv6 header must have
version 6 and a payload length that fills the rest of the datagram exactly. Qualification starts with a
client's router solicitation to a Teredo server (UDP 3544); the server's router advertisement carries
the same nonce: confirmed. A lone well-formed datagram is heuristic when it involves port 3544 or
carries an indicator; bare IPv6-in-UDP elsewhere (between peers, through relays) needs the other side's
well-formed answer. Reported as a tunnel: it gives the host IPv6 connectivity around the operator.
"""

from __future__ import annotations

from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.base import Klass
from tunnelwatch.classify.callecho import EchoClassifier, Opener
from tunnelwatch.classify.packet import UDP, Packet

PROTOCOL: Final = "teredo"
PORT: Final = 3544
_NEXT: Final = frozenset({0, 6, 17, 43, 44, 58, 59, 60})


def parse(p: bytes) -> tuple[str, bytes] | None:
    """(description, nonce or b'') of a Teredo datagram, or None."""
    i, parts, nonce = 0, [], b""
    if p[:2] == b"\x00\x01":
        if len(p) < 13:
            return None
        i = 4 + p[2] + p[3]
        nonce = p[i:i + 8]
        i += 9
        parts.append("authentication indicator")
    if p[i:i + 2] == b"\x00\x00":
        i += 8
        parts.append("origin indication")
    v6 = p[i:]
    if len(v6) < 40 or v6[0] >> 4 != 6 or unpack_from("!H", v6, 4)[0] + 40 != len(v6) or v6[6] not in _NEXT:
        return None
    parts.append("IPv6 header whose payload length fills the datagram")
    return " + ".join(parts), nonce


class Teredo(EchoClassifier):
    """Teredo: IPv6 in UDP with optional authentication/origin indications."""

    name: ClassVar[str] = "teredo"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    # an indicator's type starts with a zero byte, a bare IPv6 header with version nibble 6 (opener())
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {UDP: frozenset({0, *range(0x60, 0x70)})}
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, PORT): PROTOCOL}

    def opener(self, p: bytes, pkt: Packet) -> Opener | None:
        """A Teredo datagram (cheap first test: an indicator type or IPv6 version nibble)."""
        if len(p) < 40 or not ((p[0] == 0 and p[1] in (0, 1)) or p[0] >> 4 == 6):
            return None
        got = parse(p)
        if got is None:
            return None
        desc, nonce = got
        lone = bool(nonce) or p[:2] == b"\x00\x00" or PORT in (pkt.sport, pkt.dport)
        return Opener(PROTOCOL, desc, nonce, lone=lone)

    def answer(self, p: bytes, op: Opener, direction: int) -> str | None:
        """A well-formed Teredo datagram the other way, with the same nonce if the opener had one."""
        if direction != 1:
            return None
        got = parse(p)
        if got is None or (op.key and got[1] != op.key):
            return None
        return "answer with the same nonce" if op.key else "well-formed Teredo datagram in reply"
