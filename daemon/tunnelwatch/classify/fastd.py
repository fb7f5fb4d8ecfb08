"""fastd over UDP: its cleartext handshake packets (a TLV list) and the keys they exchange.

A handshake packet is type byte 1, a reserved zero byte and the big-endian length of the TLV records
that follow; each record is a little-endian 16-bit type and length then the value. Record 0 is the
handshake type (1 init, 2 response, 3 finish); others carry the protocol name ("ec25519-fhmqvc"), the
mode, the version and the sender's and recipient's public keys. fastd v22 may also send the handshake
behind a 12-byte L2TPv3 control header (for its kernel offload). An init answered by a response that
names the initiator's key as recipient is confirmed. Data packets have no fixed cleartext layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import UDP, Packet

PROTOCOL: Final = "fastd"
PACKET_HANDSHAKE: Final = 1
REC_HANDSHAKE_TYPE: Final = 0
REC_PROTOCOL_NAME: Final = 5
REC_SENDER_KEY: Final = 6
REC_RECIPIENT_KEY: Final = 7
_L2TP_WRAP: Final = b"\xc8\x03\x00\x0c" + bytes(8)
_MAX_RECORDS: Final = 32
_TYPES: Final = {1: "init", 2: "response", 3: "finish"}


@dataclass(frozen=True, slots=True)
class Handshake:
    """The facts of one fastd handshake packet."""

    htype: int
    sender_key: bytes
    recipient_key: bytes
    proto_name: bool
    wrapped: bool


def parse(p: bytes) -> Handshake | None:
    """Parse a fastd handshake packet (plain or L2TP-wrapped); None when the datagram is not one."""
    wrapped = p[:12] == _L2TP_WRAP
    off = 12 if wrapped else 0
    n = len(p)
    if n < off + 9 or p[off] != PACKET_HANDSHAKE or p[off + 1] != 0:
        return None
    end = off + 4 + ((p[off + 2] << 8) | p[off + 3])
    if end > n:
        return None
    i = off + 4
    htype = 0
    sender = recipient = b""
    proto_name = False
    for k in range(_MAX_RECORDS):
        if i == end:
            break
        if i + 4 > end:
            return None
        rtype = p[i] | (p[i + 1] << 8)
        rlen = p[i + 2] | (p[i + 3] << 8)
        val = p[i + 4:i + 4 + rlen]
        if i + 4 + rlen > end:
            return None
        if k == 0 and (rtype != REC_HANDSHAKE_TYPE or rlen != 1 or val[0] not in _TYPES):
            return None  # the handshake type always comes first
        if k == 0:
            htype = val[0]
        elif rtype == REC_SENDER_KEY:
            sender = val
        elif rtype == REC_RECIPIENT_KEY:
            recipient = val
        elif rtype == REC_PROTOCOL_NAME:
            proto_name = val.startswith(b"ec25519")
        i += 4 + rlen
    else:
        return None
    return Handshake(htype, sender, recipient, proto_name, wrapped) if htype else None


@dataclass(slots=True)
class _State:
    init_key: bytes = b""
    init_dir: int = -1


class Fastd(Classifier):
    """fastd (Fast and Secure Tunnelling Daemon)."""

    name: ClassVar[str] = "fastd"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    first_on: ClassVar[frozenset[int]] = frozenset({UDP})
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {UDP: frozenset({0x01, 0xC8})}
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    ports: ClassVar[dict[tuple[int, int], str]] = {}

    def first(self, pkt: Packet, direction: int) -> bool:
        """A handshake packet's first bytes, bare or L2TP-wrapped."""
        p = pkt.payload
        return p[:2] == b"\x01\x00" or p[:12] == _L2TP_WRAP

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Parse handshake packets; match the response's recipient key to the init's sender key."""
        p = pkt.payload
        st = flow.state.get(PROTOCOL)
        if st is None and p[:2] != b"\x01\x00" and p[:12] != _L2TP_WRAP:  # cheap first look
            return REJECT
        h = parse(p)
        if h is None:
            # data packets follow the handshake; only a flow that opened with one is still fastd
            return None if st is not None else REJECT
        if st is None:
            st = flow.put_state(PROTOCOL, _State())
        ev = f"handshake {_TYPES[h.htype]}{' (L2TP-wrapped)' if h.wrapped else ''}"
        if h.htype == 1 and len(h.sender_key) == 32:
            st.init_key, st.init_dir = h.sender_key, direction
        elif (h.htype == 2 and st.init_key and direction != st.init_dir
              and h.recipient_key == st.init_key):
            return self.verdict(PROTOCOL, "confirmed", "handshake init",
                                f"{ev} names the initiator's key as recipient")
        extra = ("protocol ec25519-fhmqvc",) if h.proto_name else ()
        return self.verdict(PROTOCOL, "heuristic", f"{ev} TLV records", *extra)
