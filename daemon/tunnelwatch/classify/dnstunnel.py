"""Tunnels over DNS (iodine and iodine-like): what a resolver path carries when DNS is the transport.

Every DNS flow reaches this classifier, so the first query decides cheaply: an ordinary query (a
hostname of short letter-digit-hyphen labels, a common record type) is rejected at once. What keeps a
flow under watch is what tunnels need and ordinary lookups do not: record types made for bulk data
(NULL, PRIVATE 65399), labels of 24+ characters, raw 8-bit bytes in names, or the shape of iodine's
first queries ("y" + codec + 4 characters, "v" + 10 base32 characters).

- iodine, confirmed: the version query (among the first few) answered with VACK/VNAK/VFUL (raw in
  NULL/PRIVATE answers, base32 after a codec prefix in TXT/CNAME/MX/SRV/A answers); or iodine's raw
  UDP header 0x10d19e in both directions after tunnel-like queries (heuristic when seen alone).
- generic DNS tunnel, heuristic: within one flow, several queries under the same parent domain with
  distinct labels, most of them tunnel-like (long encoded labels, 8-bit bytes, NULL/PRIVATE types).
Verdicts supersede the common recogniser's "dns": they looked inside that carrier.
DoH/DoT are TLS and never reach this code; DNSCrypt is not on port 53 structure; mDNS/LLMNR ports are
rejected on sight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import UDP, Packet

IODINE: Final = "iodine"
GENERIC: Final = "dns_tunnel"
_SUPERSEDES: Final = frozenset({"dns"})
_DNS_PORT: Final = 53
_T_NULL, _T_PRIVATE, _T_TXT = 10, 65399, 16
_BULK_TYPES: Final = frozenset({_T_NULL, _T_PRIVATE})
_LONG_LABEL: Final = 24
_LONG_NAME: Final = 48  # encoded payload length (labels below the parent domain) of a tunnel query
_RAW_HDR: Final = b"\x10\xd1\x9e"
_B32: Final = b"abcdefghijklmnopqrstuvwxyz012345"
_LDH: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
_B32_ALL: Final = _B32 + _B32.upper()
_CODECS: Final = b"tTsSuUvVrR"
_HANDSHAKE_QUERIES: Final = 4
_MIN_QUERIES: Final = 4
_MAX_TRACKED: Final = 64
_MAX_LABELS: Final = 40


def _b32_prefix(data: bytes, chars: int) -> bytes:
    """iodine's base32 (alphabet a-z0-5, no padding) of data, first `chars` characters."""
    bits = int.from_bytes(data, "big")
    nbits = 8 * len(data)
    out = bytearray()
    for i in range(chars):
        shift = nbits - 5 * (i + 1)
        out.append(_B32[(bits >> shift) & 31] if shift >= 0 else _B32[(bits << -shift) & 31])
    return bytes(out)


_ACK_TAGS: Final = (b"VACK", b"VNAK", b"VFUL")
#: the version reply as it appears base32-encoded after a codec prefix (TXT/CNAME/MX/SRV/A answers)
_ACK_B32: Final = tuple(_b32_prefix(t, 6) for t in _ACK_TAGS)


@dataclass(frozen=True, slots=True)
class Question:
    """The first question of a DNS message: its labels (raw bytes) and record type."""

    labels: tuple[bytes, ...]
    qtype: int
    end: int


def parse_question(p: bytes) -> Question | None:
    """The single question of a DNS message, or None when it has not exactly one parsable question."""
    if len(p) < 17 or p[4] != 0 or p[5] != 1:
        return None
    pos, n = 12, len(p)
    labels: list[bytes] = []
    while pos < n:
        ln = p[pos]
        if ln == 0:
            if pos + 5 > n:
                return None
            return Question(tuple(labels), unpack_from("!H", p, pos + 1)[0], pos + 5)
        if ln > 63 or len(labels) >= _MAX_LABELS:
            return None  # compression pointers never occur in a question's first name
        labels.append(p[pos + 1:pos + 1 + ln])
        pos += 1 + ln
    return None


def iodine_version_query(first: bytes) -> bool:
    """'v'/'V' + base32 of a 4-byte protocol version and a 2-byte cache-miss counter."""
    return len(first) == 11 and first[0] in b"vV" and not first[1:].translate(None, _B32_ALL)


def iodine_codec_check(first: bytes) -> bool:
    """'y'/'Y' + downstream codec char + check variant + 3-char cache-miss counter (sent before 'v')."""
    return (len(first) == 6 and first[0] in b"yY" and first[1] in _CODECS
            and not first[2:].translate(None, _B32_ALL))


def tunnel_like(q: Question) -> str:
    """Why this question looks like encoded data ('' when it does not)."""
    if q.qtype in _BULK_TYPES:
        return "NULL/PRIVATE record type"
    sub = q.labels[:-2]
    for lab in sub:
        if lab.translate(None, _LDH):
            return "8-bit bytes in labels"
    if sum(len(lab) for lab in sub) >= _LONG_NAME or any(len(lab) >= _LONG_LABEL for lab in sub):
        return "long encoded labels"
    return ""


def _cheap_interest(p: bytes) -> bool:
    """First-packet gate for ordinary queries: no allocation unless something is unusual."""
    if len(p) < 17 or p[2] & 0x80 or p[4] != 0 or p[5] != 1:
        return False
    pos, n = 12, len(p)
    first = True
    while pos < n:
        ln = p[pos]
        if ln == 0:
            if pos + 3 > n:
                return False
            return ((p[pos + 1] << 8) | p[pos + 2]) in _BULK_TYPES or pos - 12 >= _LONG_NAME + 8
        if ln > 63:
            return False
        if ln >= _LONG_LABEL or (first and ((ln == 11 and p[pos + 1] in b"vV")
                                            or (ln == 6 and p[pos + 1] in b"yY"))):
            return True
        if p[pos + 1:pos + 1 + ln].translate(None, _LDH):
            return True
        first = False
        pos += 1 + ln
    return False


def answer_rdata(p: bytes, qend: int) -> bytes:
    """The rdata of the first answer record of a response ('' when absent or malformed)."""
    if len(p) < 12 or not p[2] & 0x80 or unpack_from("!H", p, 6)[0] == 0:
        return b""
    pos = qend
    # the owner name: usually a pointer to the question, else labels
    for _ in range(_MAX_LABELS):
        if pos >= len(p):
            return b""
        ln = p[pos]
        if ln & 0xC0 == 0xC0:
            pos += 2
            break
        pos += 1 + ln
        if ln == 0:
            break
    if pos + 10 > len(p):
        return b""
    rdlen = unpack_from("!H", p, pos + 8)[0]
    return p[pos + 10:pos + 10 + rdlen]


def iodine_version_reply(rdata: bytes) -> bool:
    """VACK/VNAK/VFUL, raw (NULL/PRIVATE) or base32 after a 1-byte codec prefix (and a TXT length byte)."""
    if rdata[:4] in _ACK_TAGS:
        return True
    # after a codec char; a TXT length + codec char; a hostname label length + codec char
    return any(rdata[skip:skip + 6].lower() in _ACK_B32 for skip in (1, 2, 3))


@dataclass(slots=True)
class _State:
    queries: int = 0
    tunnelish: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    firsts: set[bytes] = field(default_factory=set)
    parent: tuple[bytes, ...] = ()
    same_parent: int = 0
    version_query: bool = False
    codec_checks: int = 0
    raw: list[int] = field(default_factory=lambda: [0, 0])


class DnsTunnel(Classifier):
    """IP-over-DNS tunnels: iodine confirmed by its handshake, others by what their queries carry."""

    name: ClassVar[str] = "dnstunnel"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    first_on: ClassVar[frozenset[int]] = frozenset({UDP})
    protocols: ClassVar[tuple[str, ...]] = (IODINE, GENERIC)
    ports: ClassVar[dict[tuple[int, int], str]] = {}

    def first(self, pkt: Packet, direction: int) -> bool:
        """A query to port 53 that is unusual at a cheap look, or the raw-tunnel header."""
        p = pkt.payload
        return (pkt.dport == _DNS_PORT or pkt.sport == _DNS_PORT) and direction == 0 and (
            _cheap_interest(p) or p[:3] == _RAW_HDR)

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Reject ordinary lookups on the first query; follow suspicious flows to a verdict."""
        st = flow.state.get(self.name)
        p = pkt.payload
        if st is None:
            if not self.first(pkt, direction):
                return REJECT
            st = flow.put_state(self.name, _State())
        if p[:3] == _RAW_HDR:
            return self._raw(st, p, direction)
        q = parse_question(p)
        if q is None:
            return None if st.queries else REJECT
        if direction == 1:
            return self._reply(st, p, q)
        return self._query(st, q)

    def _query(self, st: _State, q: Question) -> InspectResult:
        st.queries += 1
        first = q.labels[0].lower() if q.labels else b""
        # iodine opens with a few downstream codec checks ('y...'), then the version query
        if st.queries <= _HANDSHAKE_QUERIES and iodine_version_query(first):
            st.version_query = True
        if st.queries <= _HANDSHAKE_QUERIES and iodine_codec_check(first):
            st.codec_checks += 1
        why = tunnel_like(q)
        if why:
            st.tunnelish += 1
            st.reasons[why] = st.reasons.get(why, 0) + 1
        parent = tuple(lab.lower() for lab in q.labels[-2:])
        if st.queries == 1:
            st.parent = parent
        if parent == st.parent:
            st.same_parent += 1
            if len(st.firsts) < _MAX_TRACKED:
                st.firsts.add(bytes(q.labels[0]) if q.labels else b"")
        if (not why and not st.version_query and not st.codec_checks and st.queries >= _MIN_QUERIES
                and st.tunnelish * 2 < st.queries):
            return REJECT  # a forwarder's ordinary lookups that started with one odd name
        return self._generic(st)

    def _generic(self, st: _State) -> InspectResult:
        if (st.tunnelish >= _MIN_QUERIES and len(st.firsts) >= _MIN_QUERIES
                and st.same_parent * 4 >= st.queries * 3 and st.tunnelish * 4 >= st.queries * 3):
            top = max(st.reasons, key=lambda k: st.reasons[k])
            return self.verdict(GENERIC, "heuristic",
                                f"{st.tunnelish} of {st.queries} queries carry encoded data ({top})",
                                f"{len(st.firsts)} distinct names under one parent domain",
                                supersedes=_SUPERSEDES)
        return None

    def _reply(self, st: _State, p: bytes, q: Question) -> InspectResult:
        if st.version_query and q.labels and iodine_version_query(q.labels[0].lower()):
            rdata = answer_rdata(p, q.end)
            if rdata and iodine_version_reply(rdata):
                return self.verdict(IODINE, "confirmed", "iodine version query ('v' + base32)",
                                    "answered with iodine's VACK/VNAK/VFUL", supersedes=_SUPERSEDES)
        return None

    def _raw(self, st: _State, p: bytes, direction: int) -> InspectResult:
        # iodine's raw UDP mode: 0x10d19e then command (login 1, data 2, ping 3) << 4 | user id
        if len(p) < 4 or not 1 <= p[3] >> 4 <= 3:
            return REJECT
        st.raw[direction] += 1
        if min(st.raw) >= 1 and (st.tunnelish or st.version_query):
            return self.verdict(IODINE, "confirmed", "iodine raw UDP header 0x10d19e both ways",
                                "after tunnel-like DNS queries in the same flow", supersedes=_SUPERSEDES)
        if min(st.raw) >= 2:
            return self.verdict(IODINE, "heuristic", "iodine raw UDP header 0x10d19e both ways",
                                supersedes=_SUPERSEDES)
        return None
