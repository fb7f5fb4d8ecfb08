"""Tunnels over ICMP echo (ptunnel, IP-in-ICMP tools such as icmptunnel/hans): data where ping has padding.

An ordinary ping's data is a timestamp and a fixed pattern (incrementing bytes on Linux/BSD, a repeated
alphabet on Windows, a constant or a short `-p` pattern), and the echo reply returns the request's data
unchanged (RFC 792). So the first echo whose data is such a pattern rejects the flow at once. What is
looked for instead:
- ptunnel: magic 0xD5200880 at the start of the echo data, with the user flag (bit 30) in the state
  word from one side and the proxy flag (bit 31) from the other: confirmed when both sides are seen.
- IP in ICMP: the echo data is a whole IPv4 packet (valid header checksum, total length equal to the
  data length) or IPv6 packet (payload length + 40): confirmed when both directions carry one.
- generic: echo replies whose data differs from their request's (same id and sequence), repeatedly:
  heuristic, since a kernel never does that but a tunnel server answering with its own data does.
ICMP flows are keyed by the two addresses only, so error messages between the same hosts share the
flow; a few are tolerated before giving up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import ICMP, ICMPV6, Packet

PTUNNEL: Final = "ptunnel"
GENERIC: Final = "icmp_tunnel"
PTUNNEL_MAGIC: Final = b"\xd5\x20\x08\x80"
_PT_HDR: Final = 28
_USER_FLAG, _PROXY_FLAG = 1 << 30, 1 << 31
_ECHO: Final = {ICMP: (8, 0), ICMPV6: (128, 129)}
_MAX_OTHER: Final = 4
_MAX_PENDING: Final = 16
_MISMATCH_MIN: Final = 2
_TS: Final = 16  # ping's leading timestamp (8 or 16 bytes)
_MAX_PERIOD: Final = 32
# _INC[k] == k & 0xff: incrementing fill of any start offset is a slice of it
_INC: Final = bytes(i & 0xFF for i in range(65536 + 256))


def ping_pattern(data: bytes) -> bool:
    """True for the data an ordinary ping sends: tiny, incrementing after a timestamp, or periodic."""
    n = len(data)
    if n <= _TS:
        return True
    tail = data[_TS:]
    if tail == _INC[tail[0]:tail[0] + len(tail)]:
        return True
    for period in range(1, _MAX_PERIOD + 1):
        if n - period < 8:
            break
        if data[period:] == data[:-period]:
            return True
        if n - _TS - period >= 8 and tail[period:] == tail[:-period]:
            return True
    return False


def ip_packet(data: bytes) -> bool:
    """The data is one whole IPv4 packet (checksum verified) or IPv6 packet (length consistent)."""
    if len(data) < 20:
        return False
    v = data[0] >> 4
    if v == 4:
        ihl = (data[0] & 0xF) * 4
        if ihl < 20 or len(data) < ihl or unpack_from("!H", data, 2)[0] != len(data):
            return False
        s: int = sum(unpack_from(f"!{ihl // 2}H", data, 0))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return s == 0xFFFF
    if v == 6 and len(data) >= 40:
        return int(unpack_from("!H", data, 4)[0]) + 40 == len(data)
    return False


def ptunnel_flags(data: bytes) -> int:
    """The user/proxy flag bits of a ptunnel header, or -1 when the data is not one."""
    if len(data) < _PT_HDR or data[:4] != PTUNNEL_MAGIC:
        return -1
    state: int = unpack_from("!I", data, 12)[0]
    flags, kind = state & (_USER_FLAG | _PROXY_FLAG), state & 0x3FFFFFFF
    data_len: int = unpack_from("!I", data, 20)[0]
    if flags not in (_USER_FLAG, _PROXY_FLAG) or kind > 4 or data_len > len(data) - _PT_HDR:
        return -1
    return flags


@dataclass(slots=True)
class _State:
    other: int = 0
    echoes: int = 0
    pt: list[int] = field(default_factory=lambda: [0, 0])
    pt_flags: list[int] = field(default_factory=lambda: [0, 0])
    ip: list[int] = field(default_factory=lambda: [0, 0])
    pending: dict[tuple[int, int], int] = field(default_factory=dict)
    mismatch: int = 0
    match: int = 0


class IcmpTunnel(Classifier):
    """Data tunnelled in ICMP echo request/reply payloads."""

    name: ClassVar[str] = "icmptunnel"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({ICMP, ICMPV6})
    protocols: ClassVar[tuple[str, ...]] = (PTUNNEL, GENERIC)
    ports: ClassVar[dict[tuple[int, int], str]] = {}

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Reject ordinary pings on their first echo; look for tunnel headers, inner packets, odd replies."""
        p = pkt.payload
        req, rep = _ECHO.get(pkt.proto, (8, 0))
        st = flow.state.get(self.name)
        if len(p) < 8 or p[0] not in (req, rep):
            if st is None:
                st = flow.put_state(self.name, _State())
            st.other += 1
            return REJECT if st.other > _MAX_OTHER else None
        data = p[8:]
        if st is None or st.echoes == 0:
            if data[:4] != PTUNNEL_MAGIC and not ip_packet(data) and ping_pattern(data):
                return REJECT
            if st is None:
                st = flow.put_state(self.name, _State())
        st.echoes += 1
        flags = ptunnel_flags(data)
        if flags >= 0:
            return self._ptunnel(st, direction, flags)
        if ip_packet(data):
            st.ip[direction] += 1
            if min(st.ip) >= 1:
                return self.verdict(GENERIC, "confirmed", "whole IP packets inside ICMP echo data both ways",
                                    "inner IPv4 header checksum / IPv6 length verified")
            return self.verdict(GENERIC, "heuristic", "a whole IP packet inside ICMP echo data")
        return self._echo_pairs(st, p, data)

    def _ptunnel(self, st: _State, direction: int, flags: int) -> InspectResult:
        st.pt[direction] += 1
        st.pt_flags[direction] |= flags
        f0, f1 = st.pt_flags
        # the proxy's host kernel may also echo the user's packets back (user flag both ways): what
        # counts is a proxy-flagged packet from one side and a user-flagged one from the other
        if (f0 & _USER_FLAG and f1 & _PROXY_FLAG) or (f0 & _PROXY_FLAG and f1 & _USER_FLAG):
            return self.verdict(PTUNNEL, "confirmed", "ptunnel magic 0xD5200880 both ways",
                                "user flag from one side, proxy flag from the other")
        return self.verdict(PTUNNEL, "heuristic", "ptunnel magic 0xD5200880 in ICMP echo data")

    def _echo_pairs(self, st: _State, p: bytes, data: bytes) -> InspectResult:
        key = (p[4] << 8 | p[5], p[6] << 8 | p[7])
        if p[0] in (8, 128):
            if len(st.pending) >= _MAX_PENDING:
                st.pending.pop(next(iter(st.pending)))
            st.pending[key] = hash(data)
            return None
        h = st.pending.pop(key, None)
        if h is None:
            return None
        if h == hash(data):
            st.match += 1
        else:
            st.mismatch += 1
        if st.mismatch >= _MISMATCH_MIN and st.mismatch > st.match:
            return self.verdict(GENERIC, "heuristic",
                                f"{st.mismatch} echo replies carry data other than their request's",
                                "a kernel echoes the request's data unchanged")
        return None
