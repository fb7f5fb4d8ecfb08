"""IAX2 (Inter-Asterisk eXchange v2, RFC 5456) over UDP: full frames, cross-checked by call numbers.

A full frame is a 12-byte header: F bit + 15-bit source call number, R bit + 15-bit destination call
number, 32-bit timestamp, outbound and inbound sequence numbers, frame type and subclass. IAX control
frames (type 0x06) carry information elements (type, length, value) that must walk exactly to the end
of the datagram. A call starts with NEW (destination call number 0, both sequence numbers 0, carrying the
VERSION element = 2); the peer answers with a full frame whose destination call number is the caller's
source call number (ACK, ACCEPT, AUTHREQ, REJECT, CALLTOKEN ...): that echo both ways is confirmed.

Away from port 4569 only a NEW (or POKE/REGREQ) opening counts, so random UDP rarely qualifies; on port
4569 a capture may start mid-call, so any consistent IAX control frame is heuristic there and mini frames
(4-byte header, voice) are skipped for a few packets. The first payload packet that fits neither rule
rejects the flow, which keeps the cost on ordinary UDP to a few byte compares.
"""

from __future__ import annotations

from dataclasses import dataclass
from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import UDP, Packet

PROTOCOL: Final = "iax2"
PORT: Final = 4569
FULL_HEADER: Final = 12
TYPE_IAX: Final = 0x06
# IAX control subclasses (RFC 5456 section 8.4), the ones worth naming in evidence.
SUBCLASSES: Final = {0x01: "NEW", 0x02: "PING", 0x03: "PONG", 0x04: "ACK", 0x05: "HANGUP", 0x06: "REJECT",
                     0x07: "ACCEPT", 0x08: "AUTHREQ", 0x09: "AUTHREP", 0x0A: "INVAL", 0x0B: "LAGRQ",
                     0x0C: "LAGRP", 0x0D: "REGREQ", 0x0E: "REGAUTH", 0x0F: "REGACK", 0x10: "REGREJ",
                     0x11: "REGREL", 0x12: "VNAK", 0x1E: "POKE", 0x28: "CALLTOKEN"}
_MAX_SUBCLASS: Final = 0x2C
# What may open a flow away from port 4569: a call, a registration or a qualify probe, with no peer yet.
_OPENERS: Final = frozenset({0x01, 0x0D, 0x1E})
_IE_VERSION: Final = b"\x0b\x02\x00\x02"
_MAX_IES: Final = 64
_PATIENCE: Final = 6  # payload packets on port 4569 that may be mini/meta frames before giving up


class FullFrame:
    """The header facts of one IAX2 full frame (no payload is kept)."""

    __slots__ = ("dcall", "ftype", "iseq", "oseq", "scall", "subclass")

    def __init__(self, p: bytes) -> None:
        a, b = unpack_from("!HH", p, 0)
        self.scall = a & 0x7FFF
        self.dcall = b & 0x7FFF
        self.oseq = p[8]
        self.iseq = p[9]
        self.ftype = p[10]
        self.subclass = p[11]


def ies_walk(p: bytes, off: int = FULL_HEADER) -> bool:
    """True when the information elements from `off` end exactly at the end of the datagram."""
    n = len(p)
    for _ in range(_MAX_IES):
        if off == n:
            return True
        if n - off < 2:
            return False
        off += 2 + p[off + 1]
    return off == n


def full_frame(p: bytes) -> FullFrame | None:
    """Parse a full frame header; for IAX control frames also check the subclass and element walk."""
    if len(p) < FULL_HEADER or not p[0] & 0x80:
        return None
    ftype = p[10]
    if ftype == 0 or ftype > 0x0F:
        return None
    if ftype == TYPE_IAX and (p[11] == 0 or p[11] > _MAX_SUBCLASS or not ies_walk(p)):
        return None
    f = FullFrame(p)
    return f if f.scall else None


def opener(f: FullFrame, p: bytes) -> bool:
    """A NEW / REGREQ / POKE that starts a dialogue: no destination call yet, sequence numbers 0."""
    if f.ftype != TYPE_IAX or f.subclass not in _OPENERS or f.dcall or f.oseq or f.iseq:
        return False
    return f.subclass != 0x01 or _IE_VERSION in p[FULL_HEADER:]


@dataclass(slots=True)
class _State:
    calls: tuple[int, int] = (-1, -1)  # source call number seen in each direction
    frames: int = 0
    first: str = ""
    echoed: str = ""
    misses: int = 0


class IAX2(Classifier):
    """IAX2 signalling and media (full frames; call numbers echoed both ways confirm)."""

    name: ClassVar[str] = "iax2"
    klass: ClassVar[Klass] = "voip"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    first_on: ClassVar[frozenset[int]] = frozenset({UDP})
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, PORT): PROTOCOL}

    def first(self, pkt: Packet, direction: int) -> bool:
        """A full frame's header bit, or on the IAX port 4 bytes (the cheap part of the first look)."""
        p = pkt.payload
        if len(p) >= FULL_HEADER and p[0] & 0x80:
            return True
        return (pkt.sport == PORT or pkt.dport == PORT) and len(p) >= 4

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Check full frames and whether each side names the other's call number."""
        p = pkt.payload
        st: _State | None = flow.state.get(PROTOCOL)
        on_port = pkt.sport == PORT or pkt.dport == PORT
        if st is None:
            # the common path for every new UDP flow: one or two byte compares, then out
            if len(p) < FULL_HEADER or not p[0] & 0x80:
                if on_port and len(p) >= 4:
                    flow.put_state(PROTOCOL, _State(misses=1))
                    return None
                return REJECT
            f = full_frame(p)
            if f is None or not (opener(f, p) or (on_port and f.ftype == TYPE_IAX)):
                return REJECT
            st = flow.put_state(PROTOCOL, _State())
        else:
            f = full_frame(p)
        if f is None:
            st.misses += 1
            if not on_port or st.misses > _PATIENCE:
                return REJECT if not st.frames else None
            return None
        self._frame(st, f, direction)
        if not st.frames:
            return None
        if st.echoed:
            return self.verdict(PROTOCOL, "confirmed", st.first, st.echoed)
        return self.verdict(PROTOCOL, "heuristic", st.first,
                            f"{st.frames} consistent full frame(s), no reply naming the call yet")

    @staticmethod
    def _frame(st: _State, f: FullFrame, d: int) -> None:
        st.frames += 1
        if not st.first:
            name = SUBCLASSES.get(f.subclass, f"subclass 0x{f.subclass:02x}") if f.ftype == TYPE_IAX \
                else f"frame type 0x{f.ftype:02x}"
            st.first = f"IAX2 full frame {name}" + (" (opens a call)" if f.subclass == 1 and not f.dcall
                                                    and f.ftype == TYPE_IAX else "")
        calls = list(st.calls)
        if calls[d] < 0:
            calls[d] = f.scall
            st.calls = (calls[0], calls[1])
        other = calls[1 - d]
        if not st.echoed and other >= 0 and f.dcall == other and f.scall == calls[d]:
            st.echoed = f"full frames both ways; the reply names the caller's call number {other}"
