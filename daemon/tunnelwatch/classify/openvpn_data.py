"""OpenVPN's data channel seen without its handshake (a UDP flow first seen mid-session).

Owns the per-direction evidence read from P_DATA packets. P_DATA_V1 is one byte (opcode 6 << 3 | key id);
P_DATA_V2 (OpenVPN 2.4+) is four: opcode 9 << 3 | key id, then a 3-byte peer id the server assigned, which
both ends put on every packet (the lab's OpenVPN 2.6 sends the same four bytes both ways). With an AEAD
cipher (AES-GCM, ChaCha20-Poly1305: the default since 2.4) the 4-byte big-endian packet id follows in
clear, starting at 1 for each key and rising by one per packet; CBC ciphers put an HMAC and an IV there
(the packet id is encrypted), so only the constant header and block-aligned lengths are visible. A server
may answer a client's P_DATA_V2 with P_DATA_V1 (seen in nDPI's captures of server mode): the two
directions then share only the key id, which is enough for a heuristic verdict, never a confirmed one.

Random bytes, RTP/SRTP (first byte 0x80-0xBF), DTLS (20-26), STUN (0-1) cannot match the header; a QUIC
short header can (0x40-0x7F) but its first byte's low bits change per packet (header protection) and the
bytes where a packet id would be are its connection id, which never rises. Text protocols ('0'-'7',
'H'-'O' start a line) keep a constant header too, so a printable peer id is never confirmed.
"""

from __future__ import annotations

from typing import Final

P_DATA_V1: Final = 6
P_DATA_V2: Final = 9
#: a packet id rises by at most this much between two packets of one window
_MAX_STEP: Final = 1024
#: a packet id this small under the same opcode starts a new key (renegotiation): start over
_FRESH: Final = 4
_CBC_LEAST: Final = 4


class DataDir:
    """One direction's P_DATA packets: the header bytes, last packet id, packets and rising ids."""

    __slots__ = ("cbc", "head", "n", "pid", "rising")

    def __init__(self) -> None:
        self.head = b""
        self.pid = -1
        self.n = 0
        self.rising = 0
        #: packets whose length fits HMAC (SHA1 20, SHA256 32) + IV + blocks of 16 (AES) or 8 (BF-CBC, the
        #: pre-2.4 default: 20 + 8 + 8n), i.e. a body of 4 mod 8 or 0 mod 16 bytes
        self.cbc = 0

    def feed(self, p: bytes) -> bool:
        """Account one datagram; True when it is a P_DATA packet continuing this direction's channel."""
        op = p[0] >> 3 if p else 0
        if op == P_DATA_V2:
            hlen = 4
        elif op == P_DATA_V1:
            hlen = 1
        else:
            return False
        n = len(p)
        if n < hlen + 4 + 16 + 1:  # packet id + tag + at least one byte (CBC: HMAC + IV + a block)
            return False
        head = p[:hlen]
        pid = int.from_bytes(p[hlen:hlen + 4], "big")
        if self.n and head == self.head:
            step = pid - self.pid
            self.rising += 0 < step <= _MAX_STEP
        elif self.n >= 2 and not (head[1:] == self.head[1:] and pid <= _FRESH):
            return False  # an established channel is not replaced by one odd datagram (junk)
        else:
            self.head, self.n, self.rising, self.cbc = head, 0, 0, 0
        self.pid = pid
        self.n += 1
        body = n - hlen
        self.cbc += body % 8 == 4 or body % 16 == 0
        return True


def _text(head: bytes) -> bool:
    return len(head) > 1 and all(32 <= c < 127 for c in head[1:])


def data_evidence(a: DataDir, b: DataDir, least: int) -> tuple[bool, str]:
    """(confirmed?, evidence) when both directions show a data channel, else (False, '')."""
    if a.n < least or b.n < least or (a.head[0] & 7) != (b.head[0] & 7):
        return False, ""
    names = sorted({"P_DATA_V2" if len(h) == 4 else "P_DATA_V1" for h in (a.head, b.head)})
    name = "/".join(names)
    same = a.head == b.head  # V2 both ways with one peer id, or V1 both ways with one key id
    peer = ", one peer id both ways" if same and len(a.head) == 4 else ""
    if a.rising >= least - 1 and b.rising >= least - 1:
        ev = f"{name} both ways{peer}, packet ids rising ({a.n}+{b.n} packets, handshake not seen)"
        return bool(peer) and not _text(a.head), ev
    if min(a.n, b.n) >= _CBC_LEAST and a.cbc == a.n and b.cbc == b.n and (same or len(names) == 2):
        return False, f"{name} both ways{peer}, HMAC+IV+cipher blocks ({a.n}+{b.n} packets)"
    return False, ""
