"""SoftEther VPN: the parts of it that travel in clear.

SoftEther's own protocol runs inside TLS (TCP 443/992/1194/5555), where its HTTP-shaped handshake -
`POST /vpnsvc/connect.cgi` with `Content-Type: image/jpeg` and a body of "VPNCONNECT" or its GIF
watermark, answered by a PACK - is invisible. The same handshake in clear (a TLS-stripping middlebox,
or a client configured without it) is recognised here; TLS-wrapped SoftEther is left to endpoint lists.
What does travel in clear, and what nDPI's Softether dissector keys on:
- NAT traversal (UDP, the NAT-T servers on 5004): the client sends the single byte "A", the server
  answers "IP=<address>,PORT=<port>"; confirmed when the answer names the port the client sent from.
- PACK, SoftEther's serialisation (element count, then named, typed values: 0 int, 1 data, 2 str,
  3 unistr, 4 int64), in UDP datagrams to the NAT-T and DDNS servers: parsed element by element;
  confirmed when both directions carry one.
- DDNS registration over HTTP: `POST /ddns/ddns.aspx` whose body is "PACK" + 10 hex digits + a
  base64-encoded PACK (heuristic: it is the VPN server's control traffic, not the tunnel).
UDP acceleration packets (the data path beside a TLS session) are encrypted with a key exchanged inside
TLS and carry no fixed clear-text field; they are not matched.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, UDP, Packet

PROTOCOL: Final = "softether"
_SUPERSEDES: Final = frozenset({"http"})
_MAX_ELEMENTS: Final = 256
_MAX_VALUES: Final = 64
_MAX_BUF: Final = 8192
_SIGNATURE_PATHS: Final = (b"POST /vpnsvc/connect.cgi ", b"POST /vpnsvc/vpn.cgi ")
_DDNS_PATH: Final = b"POST /ddns/ddns.aspx"
_WATERMARK_MAGIC: Final = b"GIF89a"


def parse_pack(p: bytes, min_elements: int = 1) -> list[str] | None:
    """Element names of a SoftEther PACK that fills p exactly, else None. Names must be ASCII identifiers."""
    n = len(p)
    if n < 4:
        return None
    count = unpack_from("!I", p, 0)[0]
    if not min_elements <= count <= _MAX_ELEMENTS:
        return None
    pos = 4
    names: list[str] = []
    for _ in range(count):
        if pos + 4 > n:
            return None
        nlen = unpack_from("!I", p, pos)[0]  # the name's length + 1; only the name itself is written
        if not 2 <= nlen <= 64 or pos + 4 + nlen - 1 + 8 > n:
            return None
        name = p[pos + 4:pos + 3 + nlen]
        if not name.isascii() or not name.replace(b"_", b"a").isalnum():
            return None
        pos += 3 + nlen
        vtype, nvals = unpack_from("!II", p, pos)
        pos += 8
        if vtype > 4 or not 1 <= nvals <= _MAX_VALUES:
            return None
        for _ in range(nvals):
            if vtype == 0:
                pos += 4
            elif vtype == 4:
                pos += 8
            else:
                if pos + 4 > n:
                    return None
                pos += 4 + unpack_from("!I", p, pos)[0]
            if pos > n:
                return None
        names.append(name.decode())
    return names if pos == n else None


def _natt_reply(p: bytes) -> int:
    """The port named by a NAT-T server's "IP=a.b.c.d,PORT=n" answer, or -1."""
    if not p.startswith(b"IP=") or len(p) > 80:
        return -1
    i = p.find(b",PORT=")
    if i < 4:
        return -1
    digits = p[i + 6:]
    return int(digits) if digits.isdigit() and len(digits) <= 5 else -1


def ddns_pack(body: bytes) -> list[str] | None:
    """Element names of the PACK in a DDNS request body ("PACK" + 10 hex digits + base64)."""
    if not body.startswith(b"PACK") or len(body) < 24:
        return None
    head = body[4:14]
    if not all(c in b"0123456789abcdefABCDEF" for c in head):
        return None
    b64 = body[14:14 + 400]
    b64 = b64[:len(b64) // 4 * 4]
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    # a prefix of the PACK: check its count and first element name only
    if len(raw) < 12 or not 1 <= unpack_from("!I", raw, 0)[0] <= _MAX_ELEMENTS:
        return None
    nlen = unpack_from("!I", raw, 4)[0]
    name = raw[8:7 + nlen]
    if not 2 <= nlen <= 64 or len(name) != nlen - 1 or not name.replace(b"_", b"a").isalnum():
        return None
    return [name.decode()]


@dataclass(slots=True)
class _State:
    probe_port: int = -1
    pack: list[int] = field(default_factory=lambda: [0, 0])
    names: list[str] = field(default_factory=list)
    buf: list[bytes] = field(default_factory=lambda: [b"", b""])
    signature: str = ""


class SoftEther(Classifier):
    """SoftEther VPN (clear-text NAT-T probes, PACK datagrams, DDNS, and an unwrapped connect handshake)."""

    name: ClassVar[str] = "softether"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({TCP, UDP})
    first_on: ClassVar[frozenset[int]] = frozenset({TCP, UDP})
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {TCP: frozenset(b"P"), UDP: frozenset(b"AI\0")}
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    ports: ClassVar[dict[tuple[int, int], str]] = {}

    def first(self, pkt: Packet, direction: int) -> bool:
        """On TCP a client packet starting with a POST request; on UDP a NAT-T probe, reply or PACK."""
        p = pkt.payload
        if pkt.proto == TCP:
            return direction == 0 and p.startswith(b"POST /")
        return p == b"A" or p.startswith(b"IP=") or (len(p) >= 12 and p[:3] == b"\0\0\0")

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Cheap first-byte gates, then NAT-T / PACK parsing (UDP) or the HTTP signatures (TCP)."""
        p = pkt.payload
        st = flow.state.get(PROTOCOL)
        if st is None:
            if not self.first(pkt, direction):
                return REJECT
            st = flow.put_state(PROTOCOL, _State())
        if pkt.proto == TCP:
            return self._tcp(st, p, direction)
        return self._udp(st, pkt, p, direction)

    def _udp(self, st: _State, pkt: Packet, p: bytes, direction: int) -> InspectResult:
        if p == b"A":
            if direction == 0:
                st.probe_port = pkt.sport
                return None
            return REJECT
        if p.startswith(b"IP="):
            port = _natt_reply(p)
            if port < 0 or direction != 1:
                return REJECT
            if st.probe_port < 0:
                return self.verdict(PROTOCOL, "heuristic", "SoftEther NAT-T answer IP=...,PORT=...")
            ev = ["SoftEther NAT-T probe 'A' answered with IP=...,PORT=..."]
            if port == st.probe_port:
                ev.append("the answer names the client's source port")
            return self.verdict(PROTOCOL, "confirmed", *ev)
        names = parse_pack(p)
        if names is None:
            return REJECT if not any(st.pack) and st.probe_port < 0 else None
        st.pack[direction] += 1
        for n in names[:3]:
            if n not in st.names and len(st.names) < 6:
                st.names.append(n)
        what = f"SoftEther PACK ({len(names)} elements: {', '.join(st.names[:4])})"
        if min(st.pack) >= 1:
            return self.verdict(PROTOCOL, "confirmed", what, "PACK messages both ways")
        return self.verdict(PROTOCOL, "heuristic", what)

    def _tcp(self, st: _State, p: bytes, direction: int) -> InspectResult:
        buf = st.buf[direction] + p
        if len(buf) > _MAX_BUF:
            return REJECT if not st.signature else None
        st.buf[direction] = buf
        hdr_end = buf.find(b"\r\n\r\n")
        if hdr_end < 0:
            return None
        head, body = buf[:hdr_end].lower(), buf[hdr_end + 4:]
        if direction == 0 and not st.signature:
            return self._request(st, buf, head, body)
        if direction == 1 and st.signature == "connect":
            if not buf.startswith(b"HTTP/1.1 200") or b"application/octet-stream" not in head:
                return REJECT
            names = parse_pack(body[:_MAX_BUF]) if body else None
            ev = ["SoftEther signature POST /vpnsvc/connect.cgi (image/jpeg)", "answered 200 with a PACK"]
            if names:
                ev.append(f"server hello PACK ({', '.join(names[:4])})")
            elif body:
                return None  # the PACK may continue in the next segment
            return self.verdict(PROTOCOL, "confirmed", *ev, supersedes=_SUPERSEDES)
        return None

    def _request(self, st: _State, buf: bytes, head: bytes, body: bytes) -> InspectResult:
        if buf.startswith(_SIGNATURE_PATHS):
            if buf.startswith(_SIGNATURE_PATHS[0]):
                if b"content-type: image/jpeg" not in head:
                    return REJECT
                if body and not (body.startswith(b"VPNCONNECT") or body.startswith(_WATERMARK_MAGIC)):
                    return REJECT
                st.signature = "connect"
                return self.verdict(PROTOCOL, "heuristic", "SoftEther signature POST /vpnsvc/connect.cgi "
                                    "(image/jpeg, VPNCONNECT or watermark)", supersedes=_SUPERSEDES)
            st.signature = "vpn"
            return self.verdict(PROTOCOL, "heuristic", "SoftEther POST /vpnsvc/vpn.cgi",
                                supersedes=_SUPERSEDES)
        if buf.startswith(_DDNS_PATH):
            if len(body) < 24:
                return None
            first = ddns_pack(body)
            if first is None:
                return REJECT
            st.signature = "ddns"
            return self.verdict(PROTOCOL, "heuristic", "SoftEther DDNS registration: POST /ddns/ddns.aspx "
                                f"with a base64 PACK ({first[0]}, ...)", "the VPN server's control traffic",
                                supersedes=_SUPERSEDES)
        return REJECT
