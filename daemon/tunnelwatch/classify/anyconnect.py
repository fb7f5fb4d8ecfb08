"""Cisco AnyConnect / OpenConnect: the DTLS data channel, and the CSTP TLS channel only by association.

What can be seen: the client first opens a TLS connection (CSTP: HTTP CONNECT /CSCOSSLC/tunnel, all
inside TLS), receives a DTLS session id and secret in the encrypted reply, then opens the DTLS channel
on UDP (normally 443) that *resumes* that session. So:
- Legacy Cisco DTLS uses the pre-standard version 0x0100 ("DTLS 0.9") in every record header. A
  ClientHello of that version carrying a session id is heuristic; the server's ServerHello echoing
  the same session id (a session never negotiated in this flow) confirms it.
- DTLS 1.0/1.2 on UDP 443: a first-handshake ClientHello carrying a session id that the server's
  ServerHello echoes (out-of-band resumption) is heuristic, confirmed when the server endpoint is
  already known from a confirmed AnyConnect channel; OpenConnect's PSK-NEGOTIATE (session id = app id,
  only PSK cipher suites offered, a PSK suite chosen) is confirmed.
- Only 0x0100 records in both directions (capture started mid-session) are heuristic.
The CSTP channel itself is ordinary-looking TLS: it is only tagged when it goes to a server:port that
already ran a confirmed AnyConnect DTLS channel (announced through the context); the CSTP connection
that precedes the first DTLS channel cannot be told apart from HTTPS.
WebRTC DTLS (empty session id, full handshake) and plain TLS are not matched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, UDP, Packet

PROTOCOL: Final = "anyconnect"
DTLS_LEGACY: Final = 0x0100
_DTLS_STD: Final = frozenset({0xFEFF, 0xFEFD})
_DTLS_PORT: Final = 443
_CLIENT_HELLO, _SERVER_HELLO, _HELLO_VERIFY = 1, 2, 3
_MAX_RECORDS: Final = 8
_MID_SESSION_MIN: Final = 2
_MAX_BAD: Final = 2


def _psk_suite(cs: int) -> bool:
    """TLS PSK cipher suites (plain PSK, DHE/ECDHE/RSA-PSK, their GCM/CCM/ChaCha variants)."""
    return (0x008A <= cs <= 0x0095 or 0x00A8 <= cs <= 0x00B9 or 0xC0A4 <= cs <= 0xC0AB
            or 0xC033 <= cs <= 0xC03B or 0xCCAB <= cs <= 0xCCAE or 0xD001 <= cs <= 0xD005)


def dtls_records(p: bytes) -> list[tuple[int, int, int, int]] | None:
    """(content type, version, epoch, offset of body) for each record, when the records fill p exactly."""
    out: list[tuple[int, int, int, int]] = []
    pos, n = 0, len(p)
    for _ in range(_MAX_RECORDS):
        if pos == n and out:
            return out
        if n - pos < 13:
            return None
        ctype, version, epoch = unpack_from("!BHH", p, pos)
        length = unpack_from("!H", p, pos + 11)[0]
        if not 20 <= ctype <= 23 or (version != DTLS_LEGACY and version not in _DTLS_STD):
            return None
        if out and version != out[0][1]:
            return None
        if pos + 13 + length > n:
            return None
        out.append((ctype, version, epoch, pos + 13))
        pos += 13 + length
    return None


@dataclass(frozen=True, slots=True)
class Hello:
    """The parts of a Client/ServerHello we compare."""

    mtype: int
    version: int
    session_id: bytes
    suites: tuple[int, ...]


def parse_hello(p: bytes, off: int) -> Hello | None:
    """Parse a (first-fragment) DTLS Client/ServerHello/HelloVerifyRequest at p[off]; None otherwise."""
    if len(p) < off + 12:
        return None
    mtype = p[off]
    frag_off = int.from_bytes(p[off + 6:off + 9], "big")
    frag_len = int.from_bytes(p[off + 9:off + 12], "big")
    body = p[off + 12:off + 12 + frag_len]
    if frag_off or mtype not in (_CLIENT_HELLO, _SERVER_HELLO, _HELLO_VERIFY) or len(body) < 2:
        return None
    version = unpack_from("!H", body, 0)[0]
    if mtype == _HELLO_VERIFY:
        return Hello(mtype, version, b"", ())
    if len(body) < 35:
        return None
    sid_len = body[34]
    if sid_len > 32 or len(body) < 35 + sid_len:
        return None
    sid = body[35:35 + sid_len]
    pos = 35 + sid_len
    suites: tuple[int, ...] = ()
    if mtype == _CLIENT_HELLO:
        if len(body) < pos + 1 or len(body) < pos + 1 + body[pos] + 2:
            return None
        pos += 1 + body[pos]  # cookie
        cs_len = unpack_from("!H", body, pos)[0]
        pos += 2
        if cs_len % 2 or cs_len == 0 or len(body) < pos + cs_len:
            return None
        suites = tuple(unpack_from(f"!{cs_len // 2}H", body, pos))
    else:
        if len(body) < pos + 2:
            return None
        suites = (unpack_from("!H", body, pos)[0],)
    return Hello(mtype, version, sid, suites)


@dataclass(slots=True)
class _State:
    client_sid: bytes = b""
    client_dir: int = -1
    psk_only: bool = False
    legacy: bool = False
    records: list[int] = field(default_factory=lambda: [0, 0])
    handshake: bool = False
    bad: int = 0


class AnyConnect(Classifier):
    """Cisco AnyConnect / OpenConnect (DTLS channel; CSTP TLS only when paired with it)."""

    name: ClassVar[str] = "anyconnect"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({TCP, UDP})
    first_on: ClassVar[frozenset[int]] = frozenset({TCP, UDP})
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {TCP: frozenset({0x16}), UDP: frozenset(range(20, 24))}
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    ports: ClassVar[dict[tuple[int, int], str]] = {}

    def first(self, pkt: Packet, direction: int) -> bool:
        """On TCP a client TLS ClientHello (the engine asks only flows no one announced, which reject); on
        UDP a first DTLS record's header."""
        p = pkt.payload
        if pkt.proto != TCP:
            return len(p) >= 13 and 20 <= p[0] <= 23  # what dtls_records needs of a first record
        return direction == 0 and len(p) >= 6 and p[0] == 0x16 and p[1] == 3 and p[5] == 1

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """DTLS records on UDP; on TCP only a TLS ClientHello towards an announced AnyConnect server."""
        announced = flow.expected is not None and flow.expected.protocol == PROTOCOL
        if pkt.proto == TCP:
            if announced and self.first(pkt, direction):
                # CSTP itself is invisible inside TLS; what is cross-checked is the gateway endpoint.
                # (A heuristic verdict would lose to the benign "tls confirmed" of the common classifier.)
                return self.verdict(PROTOCOL, "confirmed", "TLS ClientHello to an AnyConnect gateway",
                                    "same server:port ran a confirmed AnyConnect DTLS channel")
            return REJECT
        st = flow.state.get(PROTOCOL)
        if st is None:
            st = flow.put_state(PROTOCOL, _State())
        recs = dtls_records(pkt.payload)
        if recs is None:
            if st.client_sid or any(st.records):
                st.bad += 1
                return None if st.bad <= _MAX_BAD else REJECT
            return REJECT
        version = recs[0][1]
        if version != DTLS_LEGACY and _DTLS_PORT not in (pkt.sport, pkt.dport):
            return REJECT
        st.legacy = version == DTLS_LEGACY
        st.records[direction] += 1
        ctype, _, epoch, off = recs[0]
        if ctype == 22 and epoch == 0:
            return self._handshake(st, pkt, off, direction, announced, ctx)
        if st.handshake:
            return None
        if st.legacy and min(st.records) >= _MID_SESSION_MIN:
            return self.verdict(PROTOCOL, "heuristic", "DTLS records of Cisco's pre-standard version 0x0100 "
                                "both ways")
        return None if st.legacy else REJECT

    def _handshake(self, st: _State, pkt: Packet, off: int, direction: int, announced: bool,
                   ctx: Context) -> InspectResult:
        hello = parse_hello(pkt.payload, off)
        if hello is None:
            return None if st.client_sid else REJECT
        st.handshake = True
        ver = "Cisco DTLS 0x0100" if st.legacy else f"DTLS 0x{hello.version:04x}"
        if hello.mtype == _CLIENT_HELLO:
            if not hello.session_id or (st.legacy and hello.version != DTLS_LEGACY):
                return REJECT  # a full handshake: ordinary DTLS (e.g. WebRTC), not a resumed VPN session
            st.client_sid, st.client_dir = hello.session_id, direction
            st.psk_only = all(_psk_suite(cs) for cs in hello.suites)
            ev = [f"{ver} ClientHello carrying a session id"]
            if st.psk_only:
                ev.append("only PSK cipher suites offered (OpenConnect PSK-NEGOTIATE)")
            if st.legacy or st.psk_only or announced:
                return self.verdict(PROTOCOL, "heuristic", *ev)
            return None
        if hello.mtype == _HELLO_VERIFY or direction == st.client_dir or not st.client_sid:
            return None
        ev = [f"{ver} ClientHello carrying a session id"]
        if st.psk_only and hello.suites and _psk_suite(hello.suites[0]):
            ev.append("server chose a PSK suite (OpenConnect PSK-NEGOTIATE)")
        elif hello.session_id == st.client_sid:
            ev.append("ServerHello resumes a session negotiated outside this flow")
            if not (st.legacy or announced):
                return self.verdict(PROTOCOL, "heuristic", *ev)
        else:
            return REJECT
        if announced:
            ev.append("server already known from AnyConnect traffic")
        # Announce the gateway so the client's later CSTP (TLS) and DTLS reconnections are recognised.
        for proto in (TCP, UDP):
            ctx.expect(pkt.src, pkt.sport, proto, PROTOCOL, self.klass, "AnyConnect gateway", pkt.ts)
        return self.verdict(PROTOCOL, "confirmed", *ev)
