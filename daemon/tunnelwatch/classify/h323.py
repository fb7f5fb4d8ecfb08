"""H.323: H.225 call signalling (Q.931 in TPKT over TCP), H.245 control (TPKT) and H.225 RAS (UDP).

Call signalling (TCP 1720 usually) is TPKT (RFC 1006: version 3, reserved 0, 16-bit length) carrying a
Q.931 message: protocol discriminator 0x08, a call reference (length 0-2, then the value; the flag bit is
set in messages from the side that did not allocate it), a known message type (SETUP, CALL PROCEEDING,
ALERTING, CONNECT, RELEASE COMPLETE, FACILITY ...). Both directions sharing the call reference value with
opposite flags is confirmed; one direction is heuristic. H.245 (negotiated ports) is TPKT too: its
terminal capability set names the H.245 object identifier 0.0.8.245.0.N; seen both ways, confirmed.

RAS (UDP 1719) messages are PER-encoded; the first byte holds the message choice, the next two the
request sequence number, then the H.225 protocol identifier OID 0.0.8.2250.0.N (bytes 06 00 08 91 4a 00
N). A confirm or reject (choice + 1 or + 2) with the request's sequence number, coming back, is confirmed.
TPKT alone is not enough (RDP and ISO-TSAP use it too): Q.931 or the H.245 OID must follow. A TPKT header
sent alone in its own segment (seen from some stacks) is waited for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, UDP, Packet

PROTOCOL: Final = "h323"
Q931_PD: Final = 0x08
Q931_TYPES: Final = {0x01: "ALERTING", 0x02: "CALL PROCEEDING", 0x03: "PROGRESS", 0x05: "SETUP",
                     0x07: "CONNECT", 0x0D: "SETUP ACKNOWLEDGE", 0x0F: "CONNECT ACKNOWLEDGE",
                     0x45: "DISCONNECT", 0x4D: "RELEASE", 0x5A: "RELEASE COMPLETE", 0x62: "FACILITY",
                     0x6E: "NOTIFY", 0x75: "STATUS ENQUIRY", 0x7B: "INFORMATION", 0x7D: "STATUS"}
H225_OID: Final = b"\x06\x00\x08\x91\x4a\x00"  # BER: length 6, 0.0.8.2250.0 (then the version)
H245_OID: Final = b"\x00\x08\x81\x75\x00"  # 0.0.8.245.0 (then the version)
RAS_CHOICES: Final = {0: "GatekeeperRequest", 1: "GatekeeperConfirm", 3: "RegistrationRequest",
                      4: "RegistrationConfirm", 6: "UnregistrationRequest", 9: "AdmissionRequest",
                      10: "AdmissionConfirm", 12: "BandwidthRequest", 15: "DisengageRequest",
                      18: "LocationRequest", 21: "InfoRequest"}
_RAS_REQUESTS: Final = frozenset({0, 3, 6, 9, 12, 15, 18})
_MAX_PENDING: Final = 16
_MAX_BAD: Final = 2
_MAX_BUF: Final = 32768


def tpkt_length(p: bytes, off: int = 0) -> int:
    """The length of a TPKT packet at p[off:] (header included), or -1 when it is not a TPKT header."""
    if len(p) - off < 4 or p[off] != 3 or p[off + 1] != 0:
        return -1
    n: int = unpack_from("!H", p, off + 2)[0]
    return n if 7 <= n <= 16384 else -1


def q931(msg: bytes) -> tuple[int, int, bool] | None:
    """(message type, call reference value, flag) of a Q.931 message, or None."""
    if len(msg) < 3 or msg[0] != Q931_PD:
        return None
    crl = msg[1] & 0x0F
    if crl > 2 or msg[1] & 0xF0 or len(msg) < 3 + crl:
        return None
    ref, flag = 0, False
    if crl:
        flag = bool(msg[2] & 0x80)
        ref = msg[2] & 0x7F
        if crl == 2:
            ref = (ref << 8) | msg[3]
    mtype = msg[2 + crl]
    if mtype not in Q931_TYPES:
        return None
    return mtype, ref, flag


def ras(p: bytes) -> tuple[int, int] | None:
    """(message choice, request sequence number) of an H.225 RAS message, or None."""
    if len(p) < 11 or p[4:10] != H225_OID or not 1 <= p[10] <= 9 or p[0] & 0x80:
        return None
    return (p[0] >> 2) & 0x1F, unpack_from("!H", p, 2)[0]


@dataclass(slots=True)
class _State:
    refs: list[set[tuple[int, bool]]] = field(default_factory=lambda: [set(), set()])
    h245: list[bool] = field(default_factory=lambda: [False, False])
    ras_pending: dict[int, tuple[int, int]] = field(default_factory=dict)  # seq -> (direction, choice)
    buf: list[bytes] = field(default_factory=lambda: [b"", b""])
    skip: list[int] = field(default_factory=lambda: [0, 0])
    seen: int = 0
    first: str = ""
    confirmed: str = ""
    bad: int = 0


class H323(Classifier):
    """H.323 (H.225 call signalling and RAS, H.245): cross-checked call references and RAS sequences."""

    name: ClassVar[str] = "h323"
    klass: ClassVar[Klass] = "voip"
    transports: ClassVar[frozenset[int]] = frozenset({TCP, UDP})
    first_on: ClassVar[frozenset[int]] = frozenset({TCP, UDP})
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {TCP: frozenset({3})}
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    ports: ClassVar[dict[tuple[int, int], str]] = {(TCP, 1720): PROTOCOL, (UDP, 1719): PROTOCOL}

    def first(self, pkt: Packet, direction: int) -> bool:
        """On TCP a TPKT header (version 3, reserved 0); on UDP the cheap part of a RAS message's look."""
        p = pkt.payload
        if pkt.proto == UDP:
            return len(p) >= 11 and p[4] == 6
        return len(p) >= 4 and p[0] == 3 and p[1] == 0

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """TPKT + Q.931/H.245 over TCP, RAS over UDP."""
        p = pkt.payload
        st: _State | None = flow.state.get(PROTOCOL)
        if st is None:
            if pkt.proto == UDP:
                if len(p) < 11 or p[4] != 6 or ras(p) is None:
                    return REJECT
            elif not self.first(pkt, direction):
                return REJECT
            st = flow.put_state(PROTOCOL, _State())
        if pkt.proto == UDP:
            self._ras(st, p, direction)
        else:
            self._tcp(st, p, direction)
        if st.bad >= _MAX_BAD and not st.seen:
            return REJECT
        if not st.seen:
            return None
        if st.confirmed:
            return self.verdict(PROTOCOL, "confirmed", st.first, st.confirmed)
        return self.verdict(PROTOCOL, "heuristic", st.first, f"{st.seen} message(s) in one direction so far")

    def _ras(self, st: _State, p: bytes, d: int) -> None:
        m = ras(p)
        if m is None:
            st.bad += 1
            return
        choice, seq = m
        st.seen += 1
        name = RAS_CHOICES.get(choice, f"RAS message {choice}")
        if not st.first:
            st.first = f"H.225 RAS {name} with the H.225 protocol identifier"
        if choice in _RAS_REQUESTS:
            if len(st.ras_pending) < _MAX_PENDING:
                st.ras_pending[seq] = (d, choice)
            return
        req = st.ras_pending.get(seq)
        if req is not None and req[0] != d and choice in (req[1] + 1, req[1] + 2) and not st.confirmed:
            st.confirmed = f"{name} answers {RAS_CHOICES.get(req[1], 'a request')} (same sequence number)"

    def _tcp(self, st: _State, data: bytes, d: int) -> None:
        skip = st.skip[d]
        if skip:
            # the tail of a long message judged from its first segment
            st.skip[d] = max(0, skip - len(data))
            data = data[skip:]
        buf = st.buf[d] + data
        pos = 0
        for _ in range(16):
            left = len(buf) - pos
            if left < 4:
                break
            n = tpkt_length(buf, pos)
            if n < 0:
                st.bad += 1
                pos = len(buf)
                break
            if left < n:
                if left > 4:
                    # only the start of a message is needed: judge it now, skip the rest when it arrives
                    self._message(st, buf[pos + 4:], d)
                    st.skip[d] = n - left
                    pos = len(buf)
                break
            self._message(st, buf[pos + 4:pos + n], d)
            pos += n
        st.buf[d] = buf[pos:pos + _MAX_BUF]

    def _message(self, st: _State, msg: bytes, d: int) -> None:
        m = q931(msg)
        if m is not None:
            mtype, ref, flag = m
            st.seen += 1
            if not st.first:
                st.first = f"Q.931 {Q931_TYPES[mtype]} in TPKT (H.225 call signalling)"
            if len(st.refs[d]) < _MAX_PENDING:
                st.refs[d].add((ref, flag))
            if not st.confirmed and (ref, not flag) in st.refs[1 - d]:
                st.confirmed = "both sides use the same Q.931 call reference (opposite flags)"
            return
        if H245_OID in msg[:24]:
            st.seen += 1
            st.h245[d] = True
            if not st.first:
                st.first = "H.245 message in TPKT naming the H.245 protocol identifier"
            if st.h245[1 - d] and not st.confirmed:
                st.confirmed = "H.245 protocol identifier from both sides"
            return
        if not st.seen:
            st.bad += 1
