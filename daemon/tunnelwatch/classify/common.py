"""Ordinary traffic recognised positively: DNS/mDNS/LLMNR, TLS, DTLS, HTTP, QUIC, NTP, DHCP, SSDP, SSH.

A benign verdict never ends inspection (a tunnel may still be confirmed in the same flow, e.g. WebRTC's
STUN before DTLS). A confirmed benign verdict outranks heuristic and port-only tunnel/VoIP guesses, so
recognised ordinary traffic is not flagged on a hunch; only a confirmed tunnel/VoIP verdict beats it.
"""

from __future__ import annotations

from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.base import DONE, REJECT, Classifier, Context, InspectResult, Klass, Verdict
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, UDP, Packet

_HTTP_METHODS: Final = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ",
                        b"CONNECT ", b"HTTP/1.", b"PROPFIND ")
_QUIC_VERSIONS: Final = frozenset({0x00000001, 0x6B3343CF, 0xFF00001D, 0xFF00001B, 0xFF000020,
                                   0x51303530, 0x51303436, 0x51303433, 0x54303531, 0x00000000})
_DNS_PORTS: Final = frozenset({53, 5353, 5355})


def tls_client_hello(p: bytes) -> bool:
    """True for a TLS record holding the start of a ClientHello."""
    return len(p) >= 6 and p[0] == 0x16 and p[1] == 3 and p[2] <= 4 and p[5] == 1


def tls_record(p: bytes) -> bool:
    """True when the data starts with a plausible TLS record header."""
    return (len(p) >= 5 and 20 <= p[0] <= 24 and p[1] == 3 and p[2] <= 4
            and unpack_from("!H", p, 3)[0] <= 18432)


def dtls_record(p: bytes) -> bool:
    """True when the datagram starts with a plausible DTLS record header (13 bytes)."""
    return (len(p) >= 13 and 20 <= p[0] <= 26 and p[1] == 0xFE and p[2] in (0xFF, 0xFD, 0xFC)
            and unpack_from("!H", p, 11)[0] <= len(p) - 13)


def dns_message(p: bytes) -> bool:
    """A DNS header with sane counts and a parsable first question (or an answer-only reply)."""
    if len(p) < 12:
        return False
    flags, qd, an, ns, ar = unpack_from("!HHHHH", p, 2)
    opcode = (flags >> 11) & 0xF
    if opcode not in (0, 4, 5) or qd > 8 or an > 64 or ns > 64 or ar > 64 or qd + an == 0:
        return False
    if qd == 0:
        return bool(flags & 0x8000)  # mDNS announcements: responses without questions
    pos, labels = 12, 0
    while pos < len(p):
        ln = p[pos]
        if ln == 0:
            return pos + 5 <= len(p)
        if ln & 0xC0 == 0xC0:
            return pos + 6 <= len(p)
        if ln > 63 or labels > 127:
            return False
        pos += ln + 1
        labels += 1
    return False


class Common(Classifier):
    """Benign protocols, recognised by structure (not port alone)."""

    name: ClassVar[str] = "common"
    klass: ClassVar[Klass] = "benign"
    transports: ClassVar[frozenset[int]] = frozenset({TCP, UDP})
    protocols: ClassVar[tuple[str, ...]] = ("dns", "mdns", "llmnr", "tls", "dtls", "http", "quic", "ntp",
                                            "dhcp", "ssdp", "ssh")

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Recognise one of the common protocols from the flow's first payload packets."""
        if "common" in flow.state:
            return DONE  # recognised already: later packets (encrypted records, ...) change nothing
        v = self._recognise(flow, pkt, direction)
        if isinstance(v, Verdict):
            flow.put_state("common", v.protocol)
        return v

    def _recognise(self, flow: Flow, pkt: Packet, direction: int) -> InspectResult:
        p = pkt.payload
        ports = (pkt.sport, pkt.dport)
        if pkt.proto == TCP:
            if tls_client_hello(p) or (direction == 1 and tls_record(p) and p[0] == 0x16):
                return self.verdict("tls", "confirmed", "TLS handshake record")
            if p.startswith(_HTTP_METHODS):
                return self.verdict("http", "confirmed", "HTTP request/response line")
            if p.startswith(b"SSH-") and b"-" in p[4:12]:
                return self.verdict("ssh", "confirmed", "SSH version banner")
            if 53 in ports and len(p) > 14 and dns_message(p[2:]):
                return self.verdict("dns", "confirmed", "DNS over TCP")
            return REJECT if flow.pay0 + flow.pay1 >= 4 else None
        # UDP
        if (ports[0] in _DNS_PORTS or ports[1] in _DNS_PORTS) and dns_message(p):
            proto = "mdns" if 5353 in ports else "llmnr" if 5355 in ports else "dns"
            return self.verdict(proto, "confirmed", "DNS message structure")
        if 123 in ports and len(p) >= 48 and (p[0] & 7) in (1, 2, 3, 4, 5) and 1 <= (p[0] >> 3) & 7 <= 4:
            return self.verdict("ntp", "confirmed", "NTP header")
        if (67 in ports or 68 in ports) and len(p) >= 240 and p[236:240] == b"\x63\x82\x53\x63":
            return self.verdict("dhcp", "confirmed", "DHCP magic cookie")
        if 1900 in ports and p.startswith((b"M-SEARCH ", b"NOTIFY ", b"HTTP/1.1 200")):
            return self.verdict("ssdp", "confirmed", "SSDP request line")
        if (len(p) >= 7 and p[0] & 0xC0 == 0xC0 and unpack_from("!I", p, 1)[0] in _QUIC_VERSIONS
                and (len(p) >= 1200 or direction == 1 or unpack_from("!I", p, 1)[0] == 0)):
            # Clients pad Initial packets to 1200 bytes; version 0 is version negotiation.
            return self.verdict("quic", "confirmed", "QUIC long header, known version")
        if p[:1] == b"Q" and len(p) > 9 and p[1:4] in (b"050", b"046", b"043"):
            return self.verdict("quic", "heuristic", "gQUIC version tag")
        if dtls_record(p):
            return self.verdict("dtls", "heuristic", "DTLS record header")
        return REJECT if flow.pay0 + flow.pay1 >= 4 else None
