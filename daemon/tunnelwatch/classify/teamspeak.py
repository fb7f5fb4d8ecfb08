"""TeamSpeak 3 over UDP: the voice connection's Init1 handshake and the server-list announcement.

Voice (server port 9987 by default, any port checked): every packet starts with an 8-byte MAC, a 2-byte
packet id and, from the client only, a 2-byte client id, then a type/flags byte. The low-level handshake
(Init1, type 8 with the "unencrypted" flag 0x80) is the one part in clear: its MAC is the literal
"TS3INIT1", its packet id 101 and the client id 0; the client's steps carry a 4-byte version then step
0, 2 or 4, the server's answer step 1, 3 (or 127, "start over"). A client Init1 is heuristic; the server
answering with its own Init1 is confirmed.

Server list (UDP 2010, weblist.teamspeak.com): a TeamSpeak server announces itself with 4-byte requests
0x01, sequence, 0x84, step 1; the list answers the same four bytes plus a 4-byte cookie, which the
server's step 2 repeats. Only the answer ties it together, so a lone request is not flagged. The
announcement is a voice server's own traffic (nDPI reports it as TeamSpeak too).
"""

from __future__ import annotations

from typing import ClassVar, Final

from tunnelwatch.classify.callecho import EchoClassifier, Opener
from tunnelwatch.classify.packet import UDP, Packet

PROTOCOL: Final = "teamspeak"
INIT_MAC: Final = b"TS3INIT1"
_INIT_PID: Final = b"\x00\x65"
_CLIENT_STEPS: Final = frozenset({0, 2, 4})
_SERVER_STEPS: Final = frozenset({1, 3, 127})


def client_init(p: bytes) -> int | None:
    """The step of a client Init1 packet (MAC, packet id 101, client id 0, type 8, version, step)."""
    if len(p) < 18 or p[:8] != INIT_MAC or p[8:10] != _INIT_PID or p[10:12] != b"\x00\x00":
        return None
    if p[12] & 0x0F != 8 or p[17] not in _CLIENT_STEPS:
        return None
    return p[17]


def server_init(p: bytes) -> int | None:
    """The step of a server Init1 packet (MAC, packet id 101, type 8, step)."""
    if len(p) < 12 or p[:8] != INIT_MAC or p[8:10] != _INIT_PID or p[10] & 0x0F != 8:
        return None
    return p[11] if p[11] in _SERVER_STEPS else None


class TeamSpeak(EchoClassifier):
    """TeamSpeak 3: the Init1 handshake of a voice connection, and the server-list announcement."""

    name: ClassVar[str] = "teamspeak"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    # an opener is a server-list request (type 0x01) or a client Init1 (its MAC is the literal "TS3INIT1")
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {UDP: frozenset({0x01, INIT_MAC[0]})}
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 9987): PROTOCOL}

    def opener(self, p: bytes, pkt: Packet) -> Opener | None:
        """A client Init1, or a server-list request."""
        if len(p) == 4 and p[0] == 1 and p[2] == 0x84 and p[3] == 1:
            return Opener(PROTOCOL, "server-list request (0x01, sequence, 0x84, step 1)", p, lone=False)
        step = client_init(p)
        if step is None:
            return None
        return Opener(PROTOCOL, f"client Init1 step {step} (MAC 'TS3INIT1', packet id 101, client id 0)")

    def answer(self, p: bytes, op: Opener, direction: int) -> str | None:
        """The server's Init1, or the list's answer repeating the request plus a cookie."""
        if direction != 1:
            return None
        if op.key:
            return "answer repeats the request and adds a 4-byte cookie" if (
                len(p) == 8 and p[:4] == op.key) else None
        step = server_init(p)
        return None if step is None else f"server answers with Init1 step {step}"
