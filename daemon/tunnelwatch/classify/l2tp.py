"""L2TP over UDP (normally 1701): L2TPv2 and L2TPv3 control channels, L2TPv2 data messages.

A control message has fixed flags (T, L, S set; version 2 or 3), a length equal to the datagram, and
a chain of AVPs whose first one is the Message Type and whose lengths add up exactly to the message.
A flow is confirmed when an SCCRQ is answered by an SCCRP addressed to the tunnel (v2) or control
connection (v3) id that the SCCRQ assigned, or when each side acknowledges the other's control
message (Nr = peer's Ns + 1). A lone control message is heuristic. L2TPv2 data messages (T clear)
carrying PPP are accepted after control traffic, and on port 1701 alone they give a heuristic
verdict once both tunnel ids stay stable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import UDP, Packet

L2TP_PORT: Final = 1701
SCCRQ: Final = 1
SCCRP: Final = 2
MESSAGE_TYPES: Final = {
    1: "SCCRQ", 2: "SCCRP", 3: "SCCCN", 4: "StopCCN", 6: "HELLO", 7: "OCRQ", 8: "OCRP", 9: "OCCN",
    10: "ICRQ", 11: "ICRP", 12: "ICCN", 14: "CDN", 15: "WEN", 16: "SLI", 20: "ACK",
}
_CONTROL_FLAGS: Final = {0xC802: 2, 0xC803: 3}
_AVP_ASSIGNED_TUNNEL: Final = 9
_AVP_ASSIGNED_CCID: Final = 61
_MAX_AVPS: Final = 64
_MAX_BAD: Final = 2
_DATA_MIN: Final = 2
# L2TPv2 data header flags that must be clear: T (a control message), the reserved bits
_DATA_CLEAR: Final = 0xB4F0
# PPP protocol numbers seen first in an L2TP session: LCP, PAP, CHAP, IPCP, IPV6CP, CCP, IPv4, IPv6.
_PPP_PROTOS: Final = frozenset({0xC021, 0xC023, 0xC223, 0x8021, 0x8057, 0x80FD, 0x0021, 0x0057, 0x00FD})


@dataclass(frozen=True, slots=True)
class Control:
    """Facts of one L2TP control message (ZLB acks have mtype 0)."""

    version: int
    conn_id: int
    session: int
    ns: int
    nr: int
    mtype: int
    assigned: int

    @property
    def name(self) -> str:
        """E.g. 'L2TPv2 SCCRQ'."""
        return f"L2TPv{self.version} {MESSAGE_TYPES.get(self.mtype, 'ZLB ack' if not self.mtype else '?')}"


def parse_control(p: bytes) -> Control | None:
    """Parse an L2TPv2/v3 control message filling the whole datagram; None unless it is well formed."""
    n = len(p)
    if n < 12:
        return None
    flags, length = unpack_from("!HH", p, 0)
    version = _CONTROL_FLAGS.get(flags)
    if version is None or length != n:
        return None
    if version == 2:
        conn_id, session, ns, nr = unpack_from("!HHHH", p, 4)
    else:
        conn_id, ns, nr = unpack_from("!IHH", p, 4)
        session = 0
    if n == 12:
        return Control(version, conn_id, session, ns, nr, 0, 0)
    if n < 20:
        return None
    first, vendor, atype, mtype = unpack_from("!HHHH", p, 12)
    # Message Type must come first: mandatory, never hidden, 8 bytes, IETF vendor 0, attribute 0.
    if first != 0x8008 or vendor or atype or mtype not in MESSAGE_TYPES or (version == 2 and mtype > 16):
        return None
    pos, assigned = 20, 0
    for _ in range(_MAX_AVPS):
        if pos == n:
            return Control(version, conn_id, session, ns, nr, mtype, assigned)
        if n - pos < 6:
            return None
        hdr, vendor, atype = unpack_from("!HHH", p, pos)
        alen = hdr & 0x03FF
        if hdr & 0x3C00 or alen < 6 or pos + alen > n:
            return None
        hidden = bool(hdr & 0x4000)
        if vendor == 0 and not hidden:
            if version == 2 and atype == _AVP_ASSIGNED_TUNNEL and alen == 8:
                assigned = unpack_from("!H", p, pos + 6)[0]
            elif version == 3 and atype == _AVP_ASSIGNED_CCID and alen == 10:
                assigned = unpack_from("!I", p, pos + 6)[0]
        pos += alen
    return None


def parse_data_v2(p: bytes) -> tuple[int, int] | None:
    """(tunnel id, session id) of an L2TPv2 data message carrying PPP; None otherwise."""
    n = len(p)
    if n < 8:
        return None
    flags = unpack_from("!H", p, 0)[0]
    # T clear, reserved bits clear, version 2.
    if flags & _DATA_CLEAR or flags & 0x000F != 2:
        return None
    pos = 2
    if flags & 0x4000:
        if unpack_from("!H", p, 2)[0] != n:
            return None
        pos += 2
    if n < pos + 4:
        return None
    tunnel, session = unpack_from("!HH", p, pos)
    pos += 4
    if flags & 0x0800:
        pos += 4
    if flags & 0x0200:
        if n < pos + 2:
            return None
        pos += 2 + unpack_from("!H", p, pos)[0]
    if tunnel == 0 or not _ppp_frame(p[pos:pos + 4]):
        return None
    return tunnel, session


def _ppp_frame(f: bytes) -> bool:
    if f[:2] == b"\xff\x03":
        f = f[2:]
    if len(f) >= 2 and unpack_from("!H", f, 0)[0] in _PPP_PROTOS:
        return True
    return len(f) >= 1 and f[0] in (0x21, 0x57)  # protocol-field compression


@dataclass(slots=True)
class _State:
    sccrq_dir: int = -1
    sccrq_assigned: int = 0
    sccrq_version: int = 0
    last_ns: list[int] = field(default_factory=lambda: [-1, -1])
    first: str = ""
    data_tunnel: list[int] = field(default_factory=lambda: [0, 0])
    data: list[int] = field(default_factory=lambda: [0, 0])
    bad: int = 0


class L2TP(Classifier):
    """L2TP v2/v3 over UDP: control channel handshake and v2 data messages."""

    name: ClassVar[str] = "l2tp"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    first_on: ClassVar[frozenset[int]] = frozenset({UDP})
    # the flags' high byte: a control message's fixed one, or (port 1701) a data header's with T and the
    # reserved bits clear, so most random datagrams are ruled out before any parsing
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {UDP: frozenset(
        {f >> 8 for f in _CONTROL_FLAGS} | {b for b in range(256) if not (b << 8) & _DATA_CLEAR})}
    protocols: ClassVar[tuple[str, ...]] = ("l2tp",)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, L2TP_PORT): "l2tp"}

    def first(self, pkt: Packet, direction: int) -> bool:
        """A control message, or on the L2TP port a v2 data message (else a fresh flow is rejected)."""
        p = pkt.payload
        return parse_control(p) is not None or (
            L2TP_PORT in (pkt.sport, pkt.dport) and parse_data_v2(p) is not None)

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Parse control messages (and v2 data); pair SCCRQ with SCCRP or Ns with Nr across directions."""
        st = flow.state.get("l2tp")
        if st is None:
            st = flow.put_state("l2tp", _State())
        p = pkt.payload
        ctl = parse_control(p)
        if ctl is not None:
            return self._control(st, ctl, direction)
        on_port = L2TP_PORT in (pkt.sport, pkt.dport)
        ids = parse_data_v2(p) if on_port or st.first else None
        if ids is not None:
            return self._data(st, ids[0], direction)
        if st.first or any(st.data):
            st.bad += 1
            return None if st.bad <= _MAX_BAD else REJECT
        return REJECT

    def _control(self, st: _State, c: Control, direction: int) -> InspectResult:
        other = 1 - direction
        if c.mtype and not st.first:
            st.first = c.name
        confirmed = ""
        peer_ns = st.last_ns[other]
        if c.mtype == SCCRQ and c.assigned:
            st.sccrq_dir, st.sccrq_assigned, st.sccrq_version = direction, c.assigned, c.version
        elif c.mtype == SCCRP and st.sccrq_dir == other:
            # The reply to an SCCRQ is judged on the id it echoes, nothing else.
            if c.version == st.sccrq_version and c.conn_id == st.sccrq_assigned:
                confirmed = "SCCRP addressed to the id assigned in SCCRQ"
        elif peer_ns >= 0 and c.nr == (peer_ns + 1) & 0xFFFF:
            confirmed = "control message acknowledged by the peer (Nr = Ns + 1)"
        if c.mtype:
            st.last_ns[direction] = c.ns
        if confirmed:
            return self.verdict("l2tp", "confirmed", st.first or c.name, confirmed)
        if st.first:
            return self.verdict("l2tp", "heuristic", st.first, "AVP chain well formed")
        return None  # a lone ZLB ack proves little

    def _data(self, st: _State, tunnel: int, direction: int) -> InspectResult:
        if st.data_tunnel[direction] and st.data_tunnel[direction] != tunnel:
            return None if st.first else REJECT
        st.data_tunnel[direction] = tunnel
        st.data[direction] += 1
        if st.first:
            return None  # control evidence already reported; data only has to look right
        if sum(st.data) >= _DATA_MIN and all(st.data) and st.data_tunnel[0] != st.data_tunnel[1]:
            return self.verdict("l2tp", "heuristic", "L2TPv2 data messages carrying PPP both ways",
                                "stable tunnel ids")
        return None
