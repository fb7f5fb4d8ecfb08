"""SCCP / Skinny (Cisco's IP phone control protocol) on TCP port 2000: message framing both ways.

Every message is a little-endian 32-bit length (of what follows the 8-byte header), a 32-bit header
version (0 for the basic format; 0x11, 0x12, 0x14 and 0x16 for the CallManager 7+ formats) and a
32-bit message id. Message ids are small: phone to CallManager below 0x80 (KeepAlive 0x0000, Register
0x0001, IpPort 0x0002, ...), CallManager to phone from 0x80 (RegisterAck 0x0081, KeepAliveAck 0x0100,
...), with a few newer ones up to 0x1FF. Several messages may share a segment and a message may span
segments. Well-framed messages with known-range ids in both directions are confirmed; one direction is
heuristic. Only flows to or from port 2000 are looked at: the framing is too generic to judge on any
port, and this keeps every other TCP flow to one comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, Packet

PROTOCOL: Final = "sccp"
PORT: Final = 2000
HEADER: Final = 12
VERSIONS: Final = frozenset({0x00, 0x11, 0x12, 0x14, 0x16})
NAMES: Final = {0x0000: "KeepAlive", 0x0001: "Register", 0x0002: "IpPort", 0x0026: "SoftKeyEvent",
                0x002D: "RegisterAvailableLines", 0x0081: "RegisterAck", 0x009B: "CapabilitiesReq",
                0x0100: "KeepAliveAck", 0x0111: "CallState"}
_MAX_ID: Final = 0x1FF
_MAX_LEN: Final = 8192
_MAX_BUF: Final = 16384


def header(p: bytes, off: int = 0) -> tuple[int, int] | None:
    """(total message size including the 8-byte length/version prefix, message id), or None."""
    if len(p) - off < HEADER:
        return None
    length, version, mid = unpack_from("<III", p, off)
    if version not in VERSIONS or not 4 <= length <= _MAX_LEN or mid > _MAX_ID:
        return None
    return length + 8, mid


@dataclass(slots=True)
class _State:
    msgs: list[int] = field(default_factory=lambda: [0, 0])
    buf: list[bytes] = field(default_factory=lambda: [b"", b""])
    skip: list[int] = field(default_factory=lambda: [0, 0])
    first: str = ""


class SCCP(Classifier):
    """Cisco Skinny call control: consistent message framing from both ends of a port-2000 connection."""

    name: ClassVar[str] = "sccp"
    klass: ClassVar[Klass] = "voip"
    transports: ClassVar[frozenset[int]] = frozenset({TCP})
    first_on: ClassVar[frozenset[int]] = frozenset({TCP})
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    ports: ClassVar[dict[tuple[int, int], str]] = {(TCP, PORT): PROTOCOL}

    def first(self, pkt: Packet, direction: int) -> bool:
        """The Skinny port, and a message header if there are enough bytes for one."""
        p = pkt.payload
        return (pkt.dport == PORT or pkt.sport == PORT) and (len(p) < HEADER or header(p) is not None)

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Walk the messages of each direction; any framing error rejects the flow."""
        st: _State | None = flow.state.get(PROTOCOL)
        if st is None:
            if not self.first(pkt, direction):
                return REJECT
            st = flow.put_state(PROTOCOL, _State())
        if not self._walk(st, pkt.payload, direction):
            return REJECT
        if not st.first:
            return None
        if st.msgs[0] and st.msgs[1]:
            return self.verdict(PROTOCOL, "confirmed", st.first,
                                f"consistent Skinny framing both ways ({st.msgs[0]} + {st.msgs[1]} messages)")
        return self.verdict(PROTOCOL, "heuristic", st.first, f"{sum(st.msgs)} message(s) in one direction")

    def _walk(self, st: _State, data: bytes, d: int) -> bool:
        skip = st.skip[d]
        if skip:
            st.skip[d] = max(0, skip - len(data))
            data = data[skip:]
        buf = st.buf[d] + data
        pos = 0
        for _ in range(32):
            left = len(buf) - pos
            if left == 0:
                break
            h = header(buf, pos)
            if h is None:
                if left >= HEADER:
                    return False
                break  # the header continues in the next segment
            size, mid = h
            st.msgs[d] += 1
            if not st.first:
                name = NAMES.get(mid, f"message 0x{mid:04x}")
                st.first = f"Skinny {name} ({'phone' if mid < 0x80 else 'CallManager'} message id)"
            if left < size:
                st.skip[d] = size - left
                pos = len(buf)
                break
            pos += size
        st.buf[d] = buf[pos:pos + _MAX_BUF]
        return True
