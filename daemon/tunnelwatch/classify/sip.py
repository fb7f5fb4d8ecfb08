"""SIP over UDP and TCP (any port); announces SDP media endpoints to the context for RTP/RTCP.

A message is a request line ("INVITE sip:... SIP/2.0") or status line ("SIP/2.0 200 OK") plus the
mandatory headers Via, Call-ID, CSeq, From and To (full or compact names). A request answered in the
other direction by a response with the same Call-ID and CSeq is confirmed; for INVITE the final
response is awaited (a provisional one only cross-checks), so that the SDP answer is read too. One-way
well-formed messages are heuristic. SDP bodies in offers and answers announce their audio/video RTP
ports (and RTCP, port+1 or a=rtcp, unless a=rtcp-mux) so that the media flows are recognised as
announced. Over TCP a segment may end inside a message: headers are handled as soon as they are
complete, the body once it has arrived.

SIP over TLS (RFC 3261 "sips", TCP 5061) shows no SIP at all, only a TLS handshake: a TLS ClientHello on
a connection to or from port 5061 is reported as "sip_tls", heuristic (the attribution rests on the port;
the handshake itself is parsed), and a ServerHello answering it is added to the evidence. The verdict
supersedes common.py's confirmed benign "tls" for that flow, so the operator sees SIP-TLS, but heuristic
verdicts are not blocked unless the operator lowers min_confidence. (The name uses "_" so that it can be
a `policy.protocol` key.)
"""

from __future__ import annotations

import re
import socket
import zlib
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import ClassVar, Final, NamedTuple

from tunnelwatch.classify.base import DONE, REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.common import tls_client_hello
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, UDP, Packet
from tunnelwatch.text import digits

METHODS: Final = frozenset({b"INVITE", b"REGISTER", b"OPTIONS", b"ACK", b"BYE", b"CANCEL", b"SUBSCRIBE",
                            b"NOTIFY", b"MESSAGE", b"INFO", b"PRACK", b"UPDATE", b"REFER", b"PUBLISH"})
_REQUEST_RE: Final = re.compile(rb"^([A-Z]{3,9}) (sips?:|tel:)[^ \r\n]{1,512} SIP/2\.0\r?$")
_STATUS_RE: Final = re.compile(rb"^SIP/2\.0 ([1-6][0-9][0-9])(?: [^\r\n]{0,256})?\r?$")
_CSEQ_RE: Final = re.compile(r"^\s*([0-9]{1,10})\s+([A-Za-z]{3,16})\s*$")
_COMPACT: Final = {"v": "via", "i": "call-id", "f": "from", "t": "to", "l": "content-length",
                   "c": "content-type", "m": "contact"}
MANDATORY: Final = ("via", "call-id", "cseq", "from", "to")
_MAX_HEADERS: Final = 80
_MAX_PENDING: Final = 32
_MAX_TCP_BUF: Final = 16384
_MAX_BODY: Final = 8192
_PROVISIONAL_PATIENCE: Final = 16  # packets to wait for an INVITE's final response after a 1xx
_MAX_BAD: Final = 3
SIPS_PORT: Final = 5061
SIP_TLS: Final = "sip_tls"
_TLS_CARRIER: Final = frozenset({"tls"})


class Message(NamedTuple):
    """The facts of one SIP message that the cross-checks use."""

    method: str  # request method, or "" for a response
    code: int  # status code, or 0 for a request
    call_id: str
    cseq: int
    cseq_method: str
    content_length: int  # -1 when absent


class StartLine(NamedTuple):
    """A parsed request or status line."""

    method: str
    code: int


def start_line(line: bytes) -> StartLine | None:
    """Parse a SIP request or status line (trailing CR allowed)."""
    m = _REQUEST_RE.match(line)
    if m is not None:
        return StartLine(m.group(1).decode(), 0) if m.group(1) in METHODS else None
    m = _STATUS_RE.match(line)
    return StartLine("", int(m.group(1))) if m is not None else None


def sip_prefix(data: bytes) -> bool:
    """True when data starts like a SIP request or status line (needs about 10 bytes)."""
    return data.startswith(b"SIP/2.0 ") or data.split(b" ", 1)[0] in METHODS


def parse_head(head: bytes) -> Message | None:
    """Parse a start line plus header block (no body); None unless all mandatory headers are sane."""
    lines = head.split(b"\n")
    sl = start_line(lines[0])
    if sl is None or len(lines) > _MAX_HEADERS + 1:
        return None
    hdr: dict[str, str] = {}
    for raw in lines[1:]:
        line = raw.rstrip(b"\r").decode("latin-1")
        if not line:
            break
        name, sep, value = line.partition(":")
        if not sep or not name or name[0] in " \t":
            continue  # folded continuation lines or junk: the mandatory headers are single lines
        key = name.strip().lower()
        key = _COMPACT.get(key, key)
        hdr.setdefault(key, value.strip())
    if any(not hdr.get(h) for h in MANDATORY) or not hdr["via"].upper().startswith("SIP/2.0/"):
        return None
    cs = _CSEQ_RE.match(hdr["cseq"])
    if cs is None:
        return None
    clen = hdr.get("content-length", "")
    return Message(sl.method, sl.code, hdr["call-id"], int(cs.group(1)), cs.group(2).upper(),
                   int(clen) if digits(clen) and len(clen) < 7 else -1)


def call_tag(call_id: str) -> str:
    """A short stable name for a call that does not reveal its Call-ID."""
    return f"call {zlib.crc32(call_id.encode('latin-1', 'replace')):08x}"


@dataclass(slots=True)
class _Media:
    addr: bytes
    port: int
    rtcp: int
    rtp: bool


def sdp_media(body: bytes) -> list[tuple[bytes, int, int]]:
    """(address, RTP port, RTCP port or 0 when muxed) for each RTP media section of an SDP body."""
    session_addr = b""
    media: list[_Media] = []
    for raw in body.split(b"\n")[:200]:
        line = raw.strip().decode("latin-1")
        if line.startswith("c=IN "):
            parts = line[5:].split()
            addr = _addr(parts[0], parts[1].split("/")[0]) if len(parts) >= 2 else b""
            if media:
                media[-1].addr = addr
            else:
                session_addr = addr
        elif line.startswith("m="):
            parts = line[2:].split()
            if len(parts) < 3:
                continue
            port_text = parts[1].split("/")[0]
            port = int(port_text) if digits(port_text) and len(port_text) <= 5 else 0
            # RTP profiles only (RTP/AVP, RTP/SAVP, UDP/TLS/RTP/SAVPF): T.38 udptl and TCP media are not RTP.
            is_rtp = parts[0] in ("audio", "video") and "RTP/" in parts[2] and not parts[2].startswith("TCP")
            media.append(_Media(session_addr, port, port + 1, is_rtp))
        elif media and line == "a=rtcp-mux":
            media[-1].rtcp = 0
        elif media and line.startswith("a=rtcp:") and media[-1].rtcp:
            words = line[7:].split()
            if words and digits(words[0]) and len(words[0]) <= 5:
                media[-1].rtcp = int(words[0])
    return [(m.addr, m.port, m.rtcp if m.rtcp < 65536 else 0) for m in media
            if m.rtp and m.addr and 0 < m.port < 65536]


def _addr(family: str, text: str) -> bytes:
    fam = {"IP4": socket.AF_INET, "IP6": socket.AF_INET6}.get(family)
    if fam is None:
        return b""
    try:
        raw = socket.inet_pton(fam, text)
    except (OSError, ValueError):
        return b""
    return b"" if not any(raw) else raw


@dataclass(slots=True)
class _State:
    pending: dict[tuple[str, int, str], int] = field(default_factory=dict)
    seen: int = 0
    first: str = ""
    bad: int = 0
    confirmed: str = ""
    provisional: str = ""
    provisional_at: int = 0
    announced: int = 0
    tcp_buf: list[bytes] = field(default_factory=lambda: [b"", b""])
    tcp_head_done: list[bool] = field(default_factory=lambda: [False, False])
    tls: int = 0  # 1 ClientHello seen on a port-5061 connection, 2 answered by a ServerHello, 3 reported


def _bad_partial(buf: bytes) -> bool:
    """A TCP stream's message head, not complete yet, that is already no SIP."""
    nl = buf.find(b"\n")
    return ((nl >= 0 and start_line(buf[:nl]) is None) or len(buf) > _MAX_TCP_BUF
            or (len(buf) >= 10 and not sip_prefix(buf)))


def _bad_start(p: bytes) -> bool:
    """Whether a fresh TCP stream's first segment makes _tcp count it bad (so the flow is rejected)."""
    buf = p.lstrip(b"\r\n")
    if not buf:
        return False
    end = buf.find(b"\r\n\r\n")
    return _bad_partial(buf) if end < 0 else parse_head(buf[:end]) is None


class SIP(Classifier):
    """SIP signalling: requests cross-checked with their responses; SDP media announced."""

    name: ClassVar[str] = "sip"
    klass: ClassVar[Klass] = "voip"
    transports: ClassVar[frozenset[int]] = frozenset({TCP, UDP})
    first_on: ClassVar[frozenset[int]] = frozenset({TCP})
    protocols: ClassVar[tuple[str, ...]] = ("sip", SIP_TLS)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 5060): "sip", (TCP, 5060): "sip",
                                                   (TCP, SIPS_PORT): SIP_TLS}
    # Calls are often set up long after a REGISTER exchange confirmed the flow: keep reading SDP.
    follow: ClassVar[int] = 512

    def first(self, pkt: Packet, direction: int) -> bool:
        """On TCP: a stream start that is SIP, or TLS on the SIPS port (what _tcp would not count bad)."""
        p = pkt.payload
        return (p[:1] == b"\x16" and SIPS_PORT in (pkt.dport, pkt.sport)) or not _bad_start(p)

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Parse SIP messages, match responses to requests and announce SDP media."""
        st = flow.state.get("sip")
        if type(st) is not _State:
            if pkt.proto == UDP:
                p = pkt.payload
                if not 0x41 <= p[0] <= 0x5A and not _keepalive(p):
                    # no start line begins so (methods and "SIP/2.0" start with a capital): a bad datagram,
                    # counted in an int until one is worth the whole state (most UDP flows are no SIP)
                    bad = (st or 0) + 1
                    if bad >= _MAX_BAD:
                        return REJECT
                    flow.put_state("sip", bad)
                    return None
            elif not self.first(pkt, direction):
                return REJECT  # what _tcp concludes on a fresh stream, before any state is made
            st = flow.put_state("sip", _State(bad=st or 0))
        if pkt.proto == TCP:
            if st.tls or (not st.seen and not st.bad and pkt.payload[:1] == b"\x16"
                          and SIPS_PORT in (pkt.dport, pkt.sport)):
                return self._tls(st, pkt.payload, direction)
            self._tcp(st, pkt, direction, ctx)
        else:
            self._datagram(st, pkt, direction, ctx)
        if st.provisional and not st.provisional_at:
            st.provisional_at = flow.packets
        if st.confirmed or (st.provisional and flow.packets - st.provisional_at >= _PROVISIONAL_PATIENCE):
            return self._verdict(st, "confirmed")
        if st.seen:
            return self._verdict(st, "heuristic")
        if st.bad >= _MAX_BAD or (st.bad and pkt.proto == TCP):
            return REJECT
        return None

    def _tls(self, st: _State, p: bytes, d: int) -> InspectResult:
        """The TLS handshake of a port-5061 connection (nothing of SIP itself is visible)."""
        if st.tls == 0:
            if d != 0 or not tls_client_hello(p):
                return REJECT
            st.tls = 1
        elif st.tls == 1 and d == 1 and len(p) >= 6 and p[0] == 0x16 and p[1] == 3 and p[5] == 2:
            st.tls = 2
        elif st.tls == 3:
            return DONE
        ev = ["TLS ClientHello on a connection to port 5061 (SIP over TLS by port)"]
        if st.tls == 2:
            ev.append("answered by a TLS ServerHello")
            st.tls = 3
        return self.verdict(SIP_TLS, "heuristic", *ev, supersedes=_TLS_CARRIER)

    def _datagram(self, st: _State, pkt: Packet, d: int, ctx: Context) -> None:
        p = pkt.payload
        if _keepalive(p):
            return
        end = p.find(b"\r\n\r\n")
        head, body = (p[:end], p[end + 4:]) if end >= 0 else (p, b"")
        m = parse_head(head)
        if m is None:
            st.bad += 1
            return
        if m.content_length >= 0:
            body = body[:m.content_length]
        self._message(st, m, d)
        self._sdp(st, m, body, pkt, ctx)

    def _tcp(self, st: _State, pkt: Packet, d: int, ctx: Context) -> None:
        buf = st.tcp_buf[d] + pkt.payload
        for _ in range(8):  # a few pipelined messages per segment at most
            stripped = buf.lstrip(b"\r\n")
            if not stripped:
                buf = b""
                break
            buf = stripped
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if _bad_partial(buf):
                    st.bad += 1
                    buf = b""
                break  # headers continue in the next segment
            m = parse_head(buf[:end])
            if m is None:
                st.bad += 1
                buf = b""
                break
            if not st.tcp_head_done[d]:
                self._message(st, m, d)
                st.tcp_head_done[d] = True
            clen = max(m.content_length, 0)
            if clen > _MAX_BODY:
                buf = b""
                st.tcp_head_done[d] = False
                break
            if len(buf) < end + 4 + clen:
                break  # body continues in the next segment
            self._sdp(st, m, buf[end + 4:end + 4 + clen], pkt, ctx)
            buf = buf[end + 4 + clen:]
            st.tcp_head_done[d] = False
        st.tcp_buf[d] = buf

    def _message(self, st: _State, m: Message, d: int) -> None:
        st.seen += 1
        if not st.first:
            st.first = f"{m.method} request" if m.method else f"{m.code} response to {m.cseq_method}"
        if m.method:
            if m.method != "ACK" and len(st.pending) < _MAX_PENDING:
                st.pending[(m.call_id, m.cseq, m.method)] = d
            return
        req = st.pending.get((m.call_id, m.cseq, m.cseq_method))
        if req is None or req == d or st.confirmed:
            return
        ev = f"{m.code} response matches {m.cseq_method} request (Call-ID and CSeq)"
        if m.cseq_method == "INVITE" and m.code < 200:
            st.provisional = st.provisional or ev
        else:
            st.confirmed = ev

    def _sdp(self, st: _State, m: Message, body: bytes, pkt: Packet, ctx: Context) -> None:
        if b"v=0" not in body[:64] or len(body) > _MAX_BODY:
            return
        what = m.method or f"{m.code} response"
        ev = f"announced in SDP of {what} ({call_tag(m.call_id)})"
        for addr, port, rtcp in sdp_media(body):
            targets = [addr]
            # Behind NAT the SDP names a private address; media usually comes from the signalling host.
            if addr != pkt.src and len(addr) == len(pkt.src) and ip_address(addr).is_private:
                targets.append(pkt.src)
            for a in targets:
                ctx.expect(a, port, UDP, "rtp", "voip", ev, pkt.ts)
                if rtcp:
                    ctx.expect(a, rtcp, UDP, "rtcp", "voip", ev, pkt.ts)
            st.announced += 1

    def _verdict(self, st: _State, confidence: str) -> InspectResult:
        ev = [st.first]
        if st.confirmed:
            ev.append(st.confirmed)
        elif st.provisional:
            ev.append(st.provisional)
        else:
            ev.append(f"{st.seen} well-formed message(s) with mandatory headers, not yet answered")
        if st.announced:
            ev.append(f"{st.announced} SDP media stream(s) announced")
        return self.verdict("sip", "confirmed" if confidence == "confirmed" else "heuristic", *ev)


def _keepalive(p: bytes) -> bool:
    """NAT keepalives (CRLF, NUL, short 'hello'-style probes) carry no SIP message."""
    return not p.strip(b"\r\n\x00 ") or (len(p) < 16 and b"SIP/2.0" not in p)
