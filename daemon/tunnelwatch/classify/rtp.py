"""RTP and RTCP media streams, confirmed when announced by SIP/SDP or seen consistently both ways.

The first byte of an RTP packet (version 2) is shared by plenty of other UDP protocols, so a single
header proves nothing: a stream needs the same SSRC over several packets with sequence numbers rising
by small steps and timestamps that never run backwards. RTCP compound packets (SR/RR first, then
SDES/BYE/APP/feedback) must have length fields that walk exactly to the end of the datagram; SRTCP
(encrypted after the first 8 bytes) only shows a consistent first SR/RR header followed by a trailer.
A flow announced in SDP that parses as RTP/RTCP is confirmed, as is a flow with consistent streams in
both directions under distinct SSRCs; one consistent direction alone is heuristic. STUN, DTLS and TURN
ChannelData sharing the 5-tuple (RFC 7983 demultiplexing) are skipped. RFC 4571 framing over TCP too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import unpack_from
from typing import ClassVar, Final, NamedTuple

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, UDP, Packet

_MAX_SEQ_STEP: Final = 64
_MAX_TS_STEP: Final = 1 << 27  # ~25 min of 90 kHz video clock; backwards steps wrap to huge values
STREAM_MIN_STEPS: Final = 2  # 3 packets with one SSRC
ONE_WAY_MIN_STEPS: Final = 4  # 5 packets for the heuristic
_MAX_SSRCS: Final = 8
_MAX_PTS: Final = 4
_GIVE_UP: Final = 10
_MAX_BAD: Final = 4
_MAX_TCP_BUF: Final = 8192
RTCP_TYPES: Final = frozenset(range(200, 208))  # SR RR SDES BYE APP RTPFB PSFB XR


class RTPHeader(NamedTuple):
    """The fields of an RTP fixed header that the stream checks use."""

    pt: int
    seq: int
    ts: int
    ssrc: int


def rtp_header(p: bytes) -> RTPHeader | None:
    """Parse an RTP v2 header (CSRCs, extension, padding checked against the length) or None."""
    n = len(p)
    if n < 12 or p[0] & 0xC0 != 0x80:
        return None
    pt = p[1] & 0x7F
    if 72 <= pt <= 76:  # these would be RTCP SR..APP with the marker bit
        return None
    hlen = 12 + 4 * (p[0] & 0x0F)
    if p[0] & 0x10:
        if n < hlen + 4:
            return None
        hlen += 4 + 4 * unpack_from("!H", p, hlen + 2)[0]
    if hlen > n:
        return None
    if p[0] & 0x20 and (p[-1] == 0 or hlen + p[-1] > n):
        return None
    seq, ts, ssrc = unpack_from("!HII", p, 2)
    return RTPHeader(pt, seq, ts, ssrc)


def rtcp_compound(p: bytes) -> tuple[int, int, str, int] | None:
    """(first type, sender SSRC, 'rtcp'|'srtcp', packets walked) for a consistent RTCP compound, or None."""
    n = len(p)
    if n < 8 or p[0] & 0xC0 != 0x80 or p[1] not in RTCP_TYPES:
        return None
    pos, count = 0, 0
    while n - pos >= 4 and count < 32:
        if p[pos] & 0xC0 != 0x80 or p[pos + 1] not in RTCP_TYPES:
            break
        pt, rc = p[pos + 1], p[pos] & 0x1F
        plen = 4 * (unpack_from("!H", p, pos + 2)[0] + 1)
        if n - pos < plen:
            return None
        if (pt == 200 and plen < 28 + 24 * rc) or (pt == 201 and plen < 8 + 24 * rc) or plen < 8:
            return None
        pos += plen
        count += 1
    first, ssrc = p[1], unpack_from("!I", p, 4)[0]
    if pos == n:
        return first, ssrc, "rtcp", count
    # SRTCP: the rest is ciphertext, then the E|index word and an auth tag (typically 4-16 bytes).
    if count >= 1 and first in (200, 201) and n - pos >= 8:
        return first, ssrc, "srtcp", count
    return None


@dataclass(slots=True)
class _Stream:
    seq: int
    ts: int
    pts: set[int]
    good: int = 0
    bad: int = 0


@dataclass(slots=True)
class _State:
    # containers made on first use: this state lives in many UDP flows while they are classified
    streams: tuple[dict[int, _Stream], dict[int, _Stream]] | None = None  # per direction, by SSRC
    rtcp: list[int] = field(default_factory=lambda: [0, 0])
    rtcp_ssrc: tuple[set[int], set[int]] | None = None  # made on the first RTCP packet
    rtcp_kind: str = "rtcp"
    rtcp_compound: bool = False
    rtp_pkts: int = 0
    bad: int = 0
    tcp_buf: list[bytes] | None = None  # TCP only


def _no_media(flow: Flow, bad: int) -> bool:
    """Whether a flow that showed no RTP or RTCP at all, with `bad` datagrams, is given up (RTP._give_up)."""
    seen = flow.pay0 + flow.pay1
    return (bad >= _MAX_BAD and bad * 2 > seen) or seen >= _GIVE_UP


def _media(p: bytes) -> bool:
    """Whether _datagram would count this datagram (first byte >= 0x80) as RTP or RTCP, not as bad."""
    if len(p) >= 2 and p[1] in RTCP_TYPES:
        return rtcp_compound(p) is not None
    return rtp_header(p) is not None


def _framed(buf: bytes, pos: int) -> bool:
    """Whether buf[pos:] (>= 3 bytes) starts an RFC 4571 frame of RTP/RTCP: length >= 8, version 2."""
    return unpack_from("!H", buf, pos)[0] >= 8 and buf[pos + 2] & 0xC0 == 0x80


class RTP(Classifier):
    """RTP and RTCP media streams."""

    name: ClassVar[str] = "rtp"
    klass: ClassVar[Klass] = "voip"
    transports: ClassVar[frozenset[int]] = frozenset({UDP, TCP})
    first_on: ClassVar[frozenset[int]] = frozenset({TCP})
    protocols: ClassVar[tuple[str, ...]] = ("rtp", "rtcp")
    ports: ClassVar[dict[tuple[int, int], str]] = {}

    def first(self, pkt: Packet, direction: int) -> bool:
        """On TCP: a stream start that may be RFC 4571 framed RTP/RTCP."""
        p = pkt.payload
        return len(p) <= _MAX_TCP_BUF and (len(p) < 3 or _framed(p, 0))

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Track per-direction SSRC streams (or RTCP compounds) and decide when they are consistent."""
        st = flow.state.get("rtp")
        if type(st) is not _State:
            if pkt.proto == UDP:
                p = pkt.payload
                b0 = p[0]
                if b0 < 0x80 or not _media(p):
                    # no RTP or RTCP yet, most datagrams of an ordinary UDP flow: what _datagram and _judge
                    # conclude, on the count of bad ones alone (an int until then)
                    bad = (st or 0) + (b0 >= 0x80 or not (b0 <= 3 or 16 <= b0 <= 79))
                    if flow.expected is None:
                        ctx.lookup(pkt)  # as _judge does: it also drops an expired expectation
                    if _no_media(flow, bad):
                        return REJECT
                    flow.put_state("rtp", bad)
                    return None
            elif not self.first(pkt, direction):
                return REJECT  # what _tcp concludes on a fresh stream, before any state is made
            st = flow.put_state("rtp", _State(bad=st or 0))
        if pkt.proto == TCP:
            if not self._tcp(st, pkt.payload, direction):
                return REJECT
        else:
            self._datagram(st, pkt.payload, direction)
        return self._judge(flow, st, pkt, ctx)

    def _tcp(self, st: _State, data: bytes, direction: int) -> bool:
        """RFC 4571: each RTP/RTCP packet behind a 2-byte length. False when the framing is not there."""
        if st.tcp_buf is None:
            st.tcp_buf = [b"", b""]
        buf = st.tcp_buf[direction] + data
        if len(buf) > _MAX_TCP_BUF:
            return False
        pos = 0
        while len(buf) - pos >= 3:
            if not _framed(buf, pos):
                return False
            flen = unpack_from("!H", buf, pos)[0]
            if len(buf) - pos - 2 < flen:
                break
            self._datagram(st, buf[pos + 2:pos + 2 + flen], direction)
            pos += 2 + flen
        st.tcp_buf[direction] = buf[pos:]
        return True

    def _datagram(self, st: _State, p: bytes, d: int) -> None:
        if not p:
            return
        b0 = p[0]
        if b0 < 0x80:
            # RFC 7983: STUN 0-3, ZRTP 16-19, DTLS 20-63, TURN channels 64-79 may share the 5-tuple.
            if not (b0 <= 3 or 16 <= b0 <= 79):
                st.bad += 1
            return
        if len(p) >= 2 and p[1] in RTCP_TYPES:
            r = rtcp_compound(p)
            if r is None:
                st.bad += 1
                return
            st.rtcp[d] += 1
            if st.rtcp_ssrc is None:
                st.rtcp_ssrc = (set(), set())
            if len(st.rtcp_ssrc[d]) < _MAX_SSRCS:
                st.rtcp_ssrc[d].add(r[1])
            if r[2] == "srtcp":
                st.rtcp_kind = "srtcp"
            elif r[3] >= 2 and r[0] in (200, 201):
                st.rtcp_compound = True
            return
        h = rtp_header(p)
        if h is None:
            st.bad += 1
            return
        st.rtp_pkts += 1
        if st.streams is None:
            st.streams = ({}, {})
        streams = st.streams[d]
        s = streams.get(h.ssrc)
        if s is None:
            if len(streams) < _MAX_SSRCS:
                streams[h.ssrc] = _Stream(h.seq, h.ts, {h.pt})
            else:
                st.bad += 1
            return
        dseq = (h.seq - s.seq) & 0xFFFF
        dts = (h.ts - s.ts) & 0xFFFFFFFF
        s.pts.add(h.pt)
        if len(s.pts) > _MAX_PTS:
            s.bad += 1
        elif 1 <= dseq <= _MAX_SEQ_STEP and dts <= _MAX_TS_STEP:
            s.good += 1
        elif dseq == 0 or dseq >= 0x10000 - _MAX_SEQ_STEP:
            return  # duplicate or reordered: neither evidence nor a reason to doubt
        else:
            s.bad += 1
        s.seq, s.ts = h.seq, h.ts

    @staticmethod
    def _best(streams: dict[int, _Stream]) -> tuple[int, _Stream] | None:
        ok = [(ssrc, s) for ssrc, s in streams.items() if s.good > s.bad]
        return max(ok, key=lambda x: x[1].good) if ok else None

    def _judge(self, flow: Flow, st: _State, pkt: Packet, ctx: Context) -> InspectResult:
        exp = flow.expected if flow.expected is not None else ctx.lookup(pkt)
        if not st.rtp_pkts and not st.rtcp[0] and not st.rtcp[1]:
            # nothing RTP- or RTCP-shaped yet (most datagrams of an ordinary UDP flow): no stream to judge
            return self._give_up(flow, st)
        announced = exp is not None and exp.protocol in ("rtp", "rtcp")
        best: list[tuple[int, _Stream] | None] = [None, None]
        if st.streams is not None:
            best = [self._best(st.streams[0]), self._best(st.streams[1])]
        steps = [b[1].good if b is not None else 0 for b in best]
        if st.rtcp[0] or st.rtcp[1]:
            ev = [f"RTCP compound packets ({st.rtcp[0]}+{st.rtcp[1]} each way), length fields consistent"]
            if st.rtcp_kind == "srtcp":
                ev[0] = f"SRTCP: cleartext SR/RR header consistent ({st.rtcp[0]}+{st.rtcp[1]} each way)"
            if announced and st.rtcp_kind == "rtcp" and exp is not None:
                return self.verdict("rtcp", "confirmed", *ev, exp.evidence)
            ssrc = st.rtcp_ssrc
            if (st.rtcp[0] and st.rtcp[1] and ssrc is not None and not (ssrc[0] & ssrc[1])
                    and st.rtcp_kind == "rtcp"):
                return self.verdict("rtcp", "confirmed", *ev, "distinct sender SSRCs both ways")
            if max(steps) < STREAM_MIN_STEPS and (sum(st.rtcp) >= 2 or st.rtcp_compound):
                return self.verdict("rtcp", "heuristic", *ev)
        if announced and exp is not None and max(steps) >= 1:
            return self.verdict("rtp", "confirmed", self._stream_ev(best), exp.evidence)
        if min(steps) >= STREAM_MIN_STEPS and best[0] is not None and best[1] is not None \
                and best[0][0] != best[1][0]:
            return self.verdict("rtp", "confirmed", self._stream_ev(best), "distinct SSRCs both ways")
        if max(steps) >= ONE_WAY_MIN_STEPS:
            return self.verdict("rtp", "heuristic", self._stream_ev(best), "one direction only so far")
        if announced and st.rtp_pkts and exp is not None:
            return self.verdict("rtp", "heuristic", "RTP v2 header", exp.evidence)
        return self._give_up(flow, st)

    @staticmethod
    def _give_up(flow: Flow, st: _State) -> InspectResult:
        """REJECT when mostly non-RTP datagrams came, or many without any RTP/RTCP; else keep looking."""
        seen = flow.pay0 + flow.pay1
        if st.bad >= _MAX_BAD and st.bad * 2 > seen:
            return REJECT
        if not st.rtp_pkts and not any(st.rtcp):
            return REJECT if _no_media(flow, st.bad) else None
        return None

    @staticmethod
    def _stream_ev(best: list[tuple[int, _Stream] | None]) -> str:
        parts = []
        for name, b in zip(("forward", "reverse"), best, strict=True):
            if b is not None:
                pts = ",".join(str(x) for x in sorted(b[1].pts))
                parts.append(f"{name}: SSRC stable over {b[1].good + 1} packets, payload type {pts}")
        return "RTP v2 streams with rising sequence numbers and timestamps (" + "; ".join(parts) + ")"
