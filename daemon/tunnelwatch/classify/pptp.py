"""PPTP: the control connection (TCP, normally 1723) and GRE (IP protocol 47), enhanced and plain.

Every PPTP control message carries its length, message type 1 and the magic cookie 0x1A2B3C4D; each
control message type has a fixed length, which is checked too. Valid messages from both ends confirm
the flow (an SCCRQ answered by an SCCRP, or an Outgoing-Call-Reply echoing the request's call id, is
named in the evidence); a single valid message is heuristic. GRE: PPTP's enhanced GRE (version 1,
protocol 0x880B, key = payload length + call id) and plain GRE (version 0) with a known payload type.
A GRE flow is confirmed when both directions are seen or when the encapsulated packet's own header
agrees with the GRE framing (e.g. the inner IPv4 total length fills the rest of the packet).

Any other packet on IP protocol 47 is still reported as GRE, heuristic, from its first packet: the
protocol number is GRE by IANA assignment, and GRE is encapsulation by definition (whatever it carries,
WCCP redirection, keepalives, a payload type we do not list, it is a tunnel between two routers or
hosts), so leaving it unknown would hide a tunnel. It stays heuristic because the header did not parse
as a GRE we know: the operator decides whether that is enough to act on (policy's min_confidence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import GRE, TCP, Packet

PPTP_PORT: Final = 1723
MAGIC: Final = 0x1A2B3C4D
# control message type -> (name, fixed length)
CONTROL: Final = {
    1: ("Start-Control-Connection-Request", 156), 2: ("Start-Control-Connection-Reply", 156),
    3: ("Stop-Control-Connection-Request", 16), 4: ("Stop-Control-Connection-Reply", 16),
    5: ("Echo-Request", 16), 6: ("Echo-Reply", 20), 7: ("Outgoing-Call-Request", 168),
    8: ("Outgoing-Call-Reply", 32), 9: ("Incoming-Call-Request", 220), 10: ("Incoming-Call-Reply", 24),
    11: ("Incoming-Call-Connected", 28), 12: ("Call-Clear-Request", 16), 13: ("Call-Disconnect-Notify", 148),
    14: ("WAN-Error-Notify", 32), 15: ("Set-Link-Info", 24),
}
_SCCRQ, _SCCRP, _OCRQ, _OCRP = 1, 2, 7, 8
_MAX_BUF: Final = 2048
GRE_PPP: Final = 0x880B
GRE_TYPES: Final = {0x0800: "IPv4", 0x86DD: "IPv6", 0x6558: "Ethernet", 0x88BE: "ERSPAN",
                    0x22EB: "ERSPAN III", 0x8847: "MPLS", 0x8848: "MPLS", GRE_PPP: "PPP"}
_ETHERTYPES: Final = frozenset({0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8})
_PPP_PROTOS: Final = frozenset({0xC021, 0xC023, 0xC223, 0x8021, 0x8057, 0x80FD, 0x0021, 0x0057, 0x00FD})


@dataclass(slots=True)
class _State:
    buf: list[bytes] = field(default_factory=lambda: [b"", b""])
    msgs: list[list[str]] = field(default_factory=lambda: [[], []])
    sccrq_dir: int = -1
    call_id: int = -1
    paired: str = ""
    gre_dirs: list[bool] = field(default_factory=lambda: [False, False])


def _control_header(buf: bytes) -> bool:
    """Whether buf (>= 12 bytes) starts with a PPTP control message header: length, type 1, magic cookie,
    a known control type of that fixed length, reserved zero."""
    length, mtype, magic, ctype, reserved = unpack_from("!HHIHH", buf, 0)
    spec = CONTROL.get(ctype)
    return magic == MAGIC and mtype == 1 and not reserved and spec is not None and length == spec[1]


class PPTP(Classifier):
    """PPTP control connection and GRE tunnels (PPTP's enhanced GRE and plain GRE)."""

    name: ClassVar[str] = "pptp"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({TCP, GRE})
    first_on: ClassVar[frozenset[int]] = frozenset({TCP})
    protocols: ClassVar[tuple[str, ...]] = ("pptp", "gre")
    ports: ClassVar[dict[tuple[int, int], str]] = {(TCP, PPTP_PORT): "pptp"}

    def first(self, pkt: Packet, direction: int) -> bool:
        """On TCP: a stream start that may be PPTP control messages (short, or a control header)."""
        p = pkt.payload
        return len(p) <= _MAX_BUF and (len(p) < 12 or _control_header(p))

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """PPTP control messages on TCP (reassembled per direction), or one GRE header."""
        st = flow.state.get("pptp")
        if st is None:
            if pkt.proto == TCP and not self.first(pkt, direction):
                return REJECT  # what _tcp concludes on a fresh stream, before any state is made
            st = flow.put_state("pptp", _State())
        if pkt.proto == GRE:
            return self._gre(st, pkt.payload, direction)
        return self._tcp(st, pkt.payload, direction)

    def _tcp(self, st: _State, data: bytes, direction: int) -> InspectResult:
        buf = st.buf[direction] + data
        if len(buf) > _MAX_BUF:
            return REJECT
        while len(buf) >= 12:
            if not _control_header(buf):
                return REJECT if not any(st.msgs) else None
            length, ctype = unpack_from("!H", buf, 0)[0], unpack_from("!H", buf, 8)[0]
            if len(buf) < length:
                break
            msg, buf = buf[:length], buf[length:]
            self._message(st, msg, ctype, direction)
        st.buf[direction] = buf
        return self._verdict(st)

    def _message(self, st: _State, msg: bytes, ctype: int, direction: int) -> None:
        name = CONTROL[ctype][0]
        if len(st.msgs[direction]) < 4:
            st.msgs[direction].append(name)
        if ctype in (_SCCRQ, _SCCRP) and unpack_from("!H", msg, 12)[0] != 0x0100:
            return  # protocol version 1.0 is the only one
        if ctype == _SCCRQ:
            st.sccrq_dir = direction
        elif ctype == _SCCRP and st.sccrq_dir == 1 - direction and not st.paired:
            st.paired = "Start-Control-Connection-Request answered by Reply"
        elif ctype == _OCRQ:
            st.call_id = unpack_from("!H", msg, 12)[0]
        elif ctype == _OCRP and st.call_id >= 0 and unpack_from("!H", msg, 14)[0] == st.call_id:
            st.paired = "Outgoing-Call-Reply echoes the request's call id"

    def _verdict(self, st: _State) -> InspectResult:
        first = st.msgs[0][:1] + st.msgs[1][:1]
        if not first:
            return None
        ev = ["magic cookie 0x1a2b3c4d", *first]
        if all(st.msgs):
            if st.paired:
                ev.append(st.paired)
            return self.verdict("pptp", "confirmed", *ev, "valid control messages both ways")
        return self.verdict("pptp", "heuristic", *ev)

    def _gre(self, st: _State, p: bytes, direction: int) -> InspectResult:
        parsed = parse_gre(p)
        if parsed is None:
            if any(st.gre_dirs):
                return None
            # Protocol 47 is GRE whatever the header says (module docstring): tagged, heuristic only.
            what = (f"GRE version {p[1] & 7}, payload type 0x{unpack_from('!H', p, 2)[0]:04x}"
                    if len(p) >= 4 else "GRE packet too short for a header")
            return self.verdict("gre", "heuristic", f"IP protocol 47 (GRE): {what}",
                                "header not one we parse further")
        desc, inner_ok = parsed
        st.gre_dirs[direction] = True
        ev = [desc]
        if inner_ok:
            ev.append("inner header agrees with GRE framing")
        if all(st.gre_dirs):
            ev.append("seen both ways")
        if inner_ok or all(st.gre_dirs):
            return self.verdict("gre", "confirmed", *ev)
        return self.verdict("gre", "heuristic", *ev)


def parse_gre(p: bytes) -> tuple[str, bool] | None:
    """(description, inner header consistent) for a GRE header we recognise; None otherwise."""
    if len(p) < 4:
        return None
    word, ptype = unpack_from("!HH", p, 0)
    version = word & 0x0007
    if version == 1:
        # Enhanced GRE (RFC 2637): no checksum/routing/strict route/recursion/flags, key always present.
        if word & 0xCF78 or not word & 0x2000 or ptype != GRE_PPP:
            return None
        hlen = 8 + (4 if word & 0x1000 else 0) + (4 if word & 0x0080 else 0)
        if len(p) < hlen:
            return None
        plen = unpack_from("!H", p, 4)[0]
        rest = p[hlen:]
        if plen != len(rest) or (rest and not word & 0x1000):
            return None
        if not rest:
            return "PPTP enhanced GRE (ack only)", False
        proto, body = _ppp(rest)
        if proto is None:
            return None
        inner = proto in (0x0021, 0x0057) and _inner_ip(body, 4 if proto == 0x0021 else 6)
        return "PPTP enhanced GRE", inner
    if version != 0 or word & 0x4FF8 or ptype not in GRE_TYPES:
        return None
    hlen = 4 + (4 if word & 0x8000 else 0) + (4 if word & 0x2000 else 0) + (4 if word & 0x1000 else 0)
    if len(p) < hlen:
        return None
    body = p[hlen:]
    inner = False
    if ptype == 0x0800:
        inner = _inner_ip(body, 4)
    elif ptype == 0x86DD:
        inner = _inner_ip(body, 6)
    elif ptype == 0x6558:
        inner = len(body) >= 14 and unpack_from("!H", body, 12)[0] in _ETHERTYPES
    return f"GRE carrying {GRE_TYPES[ptype]}", inner


def _ppp(f: bytes) -> tuple[int | None, bytes]:
    if f[:2] == b"\xff\x03":
        f = f[2:]
    if len(f) >= 2 and unpack_from("!H", f, 0)[0] in _PPP_PROTOS:
        return unpack_from("!H", f, 0)[0], f[2:]
    if f[:1] in (b"\x21", b"\x57"):  # protocol-field compression
        return f[0], f[1:]
    return None, b""


def _inner_ip(b: bytes, version: int) -> bool:
    """True when b holds exactly one IP packet of that version (its length field fills b)."""
    if version == 4:
        return len(b) >= 20 and b[0] >> 4 == 4 and (b[0] & 0x0F) >= 5 and unpack_from("!H", b, 2)[0] == len(b)
    return len(b) >= 40 and b[0] >> 4 == 6 and unpack_from("!H", b, 4)[0] + 40 == len(b)
