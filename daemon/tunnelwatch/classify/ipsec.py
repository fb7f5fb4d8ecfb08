"""IPsec: IKEv1/IKEv2 on UDP (500, and 4500 behind the NAT-T non-ESP marker), ESP-in-UDP, ESP and AH.

IKE is recognised by its fixed 28-byte header: a non-zero initiator SPI, a known version and exchange
type, legal flags, a length field equal to the datagram, and a well-formed first payload header. A
flow is confirmed when the other side answers with the same initiator SPI and a non-zero responder
SPI. ESP and AH (IP protocols 50/51, or ESP-in-UDP on 4500) carry an SPI and a sequence number in
clear. ESP-in-UDP is confirmed when both directions show their own stable SPI with rising sequence
numbers. NAT-T keepalives (a single 0xff byte) are ignored.

On IP protocols 50 and 51 the packet needs no guessing: the IP header itself says ESP or AH (IANA
assignments that nothing else uses), so a single packet with a valid SPI (not 1-255) and a non-zero
sequence number is confirmed, and both directions name their SPIs in the evidence. A packet on those
protocols whose header is not valid (reserved SPI, sequence 0, malformed AH) is still reported, as
heuristic: the protocol number claims IPsec, the header does not back the claim. Single-packet flows
(a probe, a capture cut short) are therefore tagged, never left unknown.

Vendor IDs in clear IKE messages (ikevendor.py) name the gateway's or client's vendor in the evidence;
the protocol stays `ike` (ikevendor.py says why).

Palo Alto GlobalProtect's IPsec mode is ESP-in-UDP with no IKE: the gateway's reply to POST
/ssl-vpn/getconfig.esp over HTTPS carries <ipsec><udp-port>4501</udp-port><ipsec-mode>esp-tunnel</...>
and a different SPI and key per direction (c2s-spi, s2c-spi); the client starts with three ESP-wrapped
ICMP echoes ("monitor\0\0pan ha ...") and repeats them as keepalives (OpenConnect's PAN GlobalProtect
protocol notes; infradead.org/openconnect/globalprotect.html). So nothing but the ESP header is in clear.
The same SPI+sequence checks as on 4500 apply on 4501 and report `globalprotect`: confirmed only when
both directions show their own stable SPI with rising sequence numbers (the pings and their replies
give that within the first packets). A gateway that hands out another port is plain unknown ESP-in-UDP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.ikevendor import vendors
from tunnelwatch.classify.packet import AH, ESP, UDP, Packet

NAT_T_PORT: Final = 4500
GP_PORT: Final = 4501
_PORTS: Final = frozenset({500, NAT_T_PORT, GP_PORT})  # where a UDP datagram that is no IKE may still count
IKE_HEADER: Final = 28
_V1_EXCHANGES: Final = {1: "Base", 2: "Main Mode", 3: "Auth Only", 4: "Aggressive Mode", 5: "Informational",
                        6: "Transaction", 32: "Quick Mode", 33: "New Group Mode"}
_V2_EXCHANGES: Final = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL",
                        43: "IKE_INTERMEDIATE", 44: "IKE_FOLLOWUP_KE"}
_V2_FLAG_RESPONSE: Final = 0x20
_V1_FLAG_ENCRYPTED: Final = 0x01
# Sequence numbers start at 1 and grow by one per packet; allow for capture loss, not for noise.
_MAX_SEQ_STEP: Final = 4096
_MAX_SPIS: Final = 8
_UDP_ESP_MIN: Final = 2
_MAX_BAD: Final = 2


def _next_payload_ok(major: int, np: int) -> bool:
    if major == 1:
        return np <= 21 or np >= 128
    return np == 0 or 33 <= np <= 54 or np >= 128


@dataclass(frozen=True, slots=True)
class IkeHeader:
    """The facts of one IKE header."""

    ispi: bytes
    rspi: bytes
    major: int
    exchange: int
    flags: int
    msgid: int

    @property
    def name(self) -> str:
        """E.g. 'IKEv2 IKE_SA_INIT request'."""
        table = _V1_EXCHANGES if self.major == 1 else _V2_EXCHANGES
        kind = ""
        if self.major == 2:
            kind = " response" if self.flags & _V2_FLAG_RESPONSE else " request"
        return f"IKEv{self.major} {table.get(self.exchange, str(self.exchange))}{kind}"


def parse_ike(d: bytes) -> IkeHeader | None:
    """Parse an IKE message that fills the whole buffer; None unless every header check passes."""
    n = len(d)
    if n < IKE_HEADER:
        return None
    ispi, rspi = d[0:8], d[8:16]
    np, ver, exch, flags, msgid, length = unpack_from("!BBBBII", d, 16)
    major, minor = ver >> 4, ver & 0x0F
    if ispi == bytes(8) or minor != 0 or length != n:
        return None
    if major == 1:
        if exch not in _V1_EXCHANGES or flags & ~0x07:
            return None
    elif major == 2:
        if exch not in _V2_EXCHANGES or flags & ~0x38:
            return None
        if exch == 34 and msgid != 0:
            return None
        if not flags & _V2_FLAG_RESPONSE and exch == 34 and rspi != bytes(8):
            return None
        if exch != 34 and rspi == bytes(8):
            return None
    else:
        return None
    if not _next_payload_ok(major, np):
        return None
    if np and not (major == 1 and flags & _V1_FLAG_ENCRYPTED):
        # The first payload's generic header is always in clear (even IKEv2's SK payload).
        if n < IKE_HEADER + 4:
            return None
        plen = unpack_from("!H", d, IKE_HEADER + 2)[0]
        if plen < 4 or IKE_HEADER + plen > n:
            return None
    return IkeHeader(ispi, rspi, major, exch, flags, msgid)


@dataclass(slots=True)
class _State:
    ispi: bytes = b""
    rspi: bytes = b""
    ike_dirs: list[bool] = field(default_factory=lambda: [False, False])
    ike_first: str = ""
    vendors: list[str] = field(default_factory=list)
    nat_t: bool = False
    bad: int = 0
    # per direction: SPI -> last sequence number
    sa: list[dict[int, int]] = field(default_factory=lambda: [{}, {}])
    sa_pkts: list[int] = field(default_factory=lambda: [0, 0])


class IPsec(Classifier):
    """IKE (v1/v2, NAT-T), ESP (IP protocol 50 and UDP 4500) and AH (IP protocol 51)."""

    name: ClassVar[str] = "ipsec"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP, ESP, AH})
    protocols: ClassVar[tuple[str, ...]] = ("ike", "esp", "ah", "globalprotect")
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 500): "ike", (UDP, 4500): "ike",
                                                   (UDP, GP_PORT): "globalprotect"}

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Parse IKE headers or ESP/AH SPI+sequence and cross-check them between the two directions."""
        st = flow.state.get("ipsec")
        p = pkt.payload
        if st is None:
            if (pkt.proto == UDP and p[:4] != b"\x00\x00\x00\x00" and p != b"\xff"
                    and pkt.sport not in _PORTS and pkt.dport not in _PORTS and parse_ike(p) is None):
                return REJECT  # what the UDP path below concludes on a fresh flow, without making the state
            st = flow.put_state("ipsec", _State())
        if pkt.proto == ESP:
            return self._sa(st, "esp", p, direction, over_udp=False)
        if pkt.proto == AH:
            body = _ah_body(p)
            if body is None:
                return None if st.sa_pkts[0] + st.sa_pkts[1] else self._claim("ah", "malformed AH header")
            return self._sa(st, "ah", body, direction, over_udp=False)
        if p == b"\xff":
            return None  # NAT-T keepalive
        ends = (pkt.sport, pkt.dport)
        if GP_PORT in ends and NAT_T_PORT not in ends and 500 not in ends:
            return self._sa(st, "globalprotect", p, direction, over_udp=True)
        marker = len(p) >= 4 and p[:4] == b"\x00\x00\x00\x00"
        msg = p[4:] if marker else p
        hdr = parse_ike(msg)
        if hdr is not None:
            st.nat_t = st.nat_t or marker
            self._vendors(st, msg, direction)
            return self._ike(st, hdr, direction)
        if not marker and NAT_T_PORT in (pkt.sport, pkt.dport) and not st.ike_first:
            return self._sa(st, "esp", p, direction, over_udp=True)
        if st.ike_first:
            # ESP after IKE on 4500 or an odd datagram on 500: the IKE evidence still stands.
            return None
        if marker or 500 in (pkt.sport, pkt.dport):
            # One malformed message must not hide a well-formed exchange that follows.
            st.bad += 1
            return None if st.bad <= _MAX_BAD else REJECT
        return REJECT

    def _ike(self, st: _State, hdr: IkeHeader, direction: int) -> InspectResult:
        if hdr.ispi != st.ispi:
            # First message, or a new IKE SA negotiated over the same socket pair.
            st.ispi, st.rspi, st.ike_dirs, st.ike_first = hdr.ispi, b"", [False, False], hdr.name
        st.ike_dirs[direction] = True
        if hdr.rspi != bytes(8):
            if st.rspi and hdr.rspi != st.rspi:
                return None
            st.rspi = hdr.rspi
        ev = [st.ike_first]
        if st.nat_t:
            ev.append("NAT-T non-ESP marker")
        ev.extend(st.vendors)
        if all(st.ike_dirs) and st.rspi:
            ev.append("reply carries the same initiator SPI and a non-zero responder SPI")
            return self.verdict("ike", "confirmed", *ev)
        return self.verdict("ike", "heuristic", *ev)

    @staticmethod
    def _vendors(st: _State, msg: bytes, direction: int) -> None:
        """Note the vendors a clear IKE message declares (bounded: a few per side)."""
        side = "responder" if direction else "initiator"
        for v in vendors(msg):
            note = f"vendor ID: {v} ({side})"
            if note not in st.vendors and len(st.vendors) < _MAX_SPIS:
                st.vendors.append(note)

    def _sa(self, st: _State, proto: str, p: bytes, direction: int, *, over_udp: bool) -> InspectResult:
        """ESP or AH: SPI + sequence number per direction."""
        seen = st.sa_pkts[0] + st.sa_pkts[1]
        if len(p) < (16 if over_udp else 8):
            if seen or over_udp:
                return None if seen else REJECT
            return self._claim(proto, "too short for SPI and sequence")
        spi, seq = unpack_from("!II", p, 0)
        if spi < 256 or seq == 0:  # SPIs 1-255 are reserved; sequence numbers start at 1
            if over_udp:
                return REJECT
            return None if seen else self._claim(proto, "reserved SPI or sequence number 0")
        sas = st.sa[direction]
        last = sas.get(spi)
        if last is None:
            if over_udp and sas:
                return REJECT  # ESP-in-UDP: one SA per direction in a flow's first packets
            if len(sas) >= _MAX_SPIS:
                return None
        elif not last < seq <= last + _MAX_SEQ_STEP:
            if over_udp:
                return REJECT
            return None  # replay or reordering: not counted
        sas[spi] = seq
        st.sa_pkts[direction] += 1
        name = "ESP" if proto == "globalprotect" else proto.upper()
        where = (f"in UDP {GP_PORT} (GlobalProtect)" if proto == "globalprotect"
                 else "in UDP 4500" if over_udp else f"IP protocol {50 if proto == 'esp' else 51}")
        other = st.sa[1 - direction]
        both = bool(other) and not (set(sas) & set(other))
        if over_udp:
            if both and min(st.sa_pkts) >= _UDP_ESP_MIN:
                return self.verdict(proto, "confirmed", f"{name} {where}",
                                    "own stable SPI each way, sequence numbers rising")
            if max(st.sa_pkts) >= _UDP_ESP_MIN:
                return self.verdict(proto, "heuristic", f"{name} {where}",
                                    "stable SPI, sequence numbers rising")
            return None
        if both:
            return self.verdict(proto, "confirmed", f"{name} {where}",
                                "distinct SPI per direction, valid sequence numbers")
        # The IP protocol number is the protocol: one valid header is enough (module docstring).
        return self.verdict(proto, "confirmed", f"{name} {where}", "valid SPI and sequence number")

    def _claim(self, proto: str, why: str) -> InspectResult:
        """ESP/AH by IP protocol number whose header does not parse: reported, but only heuristic."""
        number = 50 if proto == "esp" else 51
        return self.verdict(proto, "heuristic", f"IP protocol {number} ({proto.upper()})",
                            f"header not valid: {why}")


_AH_NEXT: Final = frozenset({0, 1, 2, 4, 6, 17, 41, 43, 44, 47, 50, 58, 59, 60, 132, 135, 136, 137})


def _ah_body(p: bytes) -> bytes | None:
    """Check the AH header (next header, length, reserved) and return SPI+seq onward, or None."""
    if len(p) < 12:
        return None
    nxt, plen, reserved = p[0], p[1], unpack_from("!H", p, 2)[0]
    hlen = (plen + 2) * 4
    if nxt not in _AH_NEXT or reserved or plen < 1 or hlen > len(p):
        return None
    if nxt in (4, 41) and len(p) > hlen and p[hlen] >> 4 != (4 if nxt == 4 else 6):
        return None  # tunnel mode: the inner IP version must match the next-header value
    return p[4:]
