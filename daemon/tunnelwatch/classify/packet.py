"""Hand-written IPv4/IPv6 + TCP/UDP/ICMP/GRE/ESP/AH header parsing for the hot path.

Pure: bytes in, a `Packet` (or None for "not parsable") out. Never raises on hostile input;
every length is checked against the buffer before use. scapy is deliberately not used here
(it is about ten times slower per packet).
"""

from __future__ import annotations

import socket
from struct import unpack_from
from typing import Final

TCP: Final = 6
UDP: Final = 17
ICMP: Final = 1
ICMPV6: Final = 58
GRE: Final = 47
ESP: Final = 50
AH: Final = 51
IPIP: Final = 4
IPV6_IN_IP: Final = 41

TRANSPORT_NAMES: Final[dict[int, str]] = {
    TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMPV6: "icmpv6", GRE: "gre", ESP: "esp", AH: "ah",
    IPIP: "ipip", IPV6_IN_IP: "ipv6", 2: "igmp", 132: "sctp", 115: "l2tp",
}

# IPv6 extension headers we walk over to find the upper-layer protocol.
_V6_EXT: Final = frozenset({0, 43, 60, 135, 139, 140})
_V6_FRAG: Final = 44

TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04


def transport_name(proto: int) -> str:
    """Return the short lowercase name of an IP protocol number (e.g. 'udp', 'proto-99')."""
    return TRANSPORT_NAMES.get(proto, f"proto-{proto}")


def addr_text(addr: bytes) -> str:
    """Format a 4- or 16-byte address as text."""
    if len(addr) == 4:
        return socket.inet_ntop(socket.AF_INET, addr)
    if len(addr) == 16:
        return socket.inet_ntop(socket.AF_INET6, addr)
    return addr.hex()


class Packet:
    """Header facts of one IP packet. `payload` is the L4 payload (or the whole body for ESP/AH/GRE/ICMP)."""

    __slots__ = (
        "dport", "dst", "frag", "length", "payload", "proto", "seq", "sport", "src", "tcp_flags", "ts", "ttl",
        "version",
    )

    def __init__(
        self, ts: float, version: int, src: bytes, dst: bytes, proto: int, sport: int, dport: int,
        length: int, payload: bytes, tcp_flags: int = 0, frag: bool = False, seq: int = -1, ttl: int = 255,
    ) -> None:
        self.ts = ts
        self.version = version
        self.src = src
        self.dst = dst
        self.proto = proto
        self.sport = sport
        self.dport = dport
        self.length = length
        self.payload = payload
        self.tcp_flags = tcp_flags
        self.frag = frag
        #: TCP sequence number (-1 for other transports): tells a new connection on a reused 5-tuple
        self.seq = seq
        #: IPv4 TTL / IPv6 hop limit as captured or queued (255 when not known: never taken for a decoy)
        self.ttl = ttl

    def __repr__(self) -> str:
        return (f"Packet({transport_name(self.proto)} {addr_text(self.src)}:{self.sport} -> "
                f"{addr_text(self.dst)}:{self.dport} len={self.length} payload={len(self.payload)})")


def parse_ip(buf: bytes, ts: float = 0.0, off: int = 0) -> Packet | None:
    """Parse the IP packet starting at `buf[off]`; None when it is not a parsable IPv4/IPv6 packet."""
    n = len(buf)
    if n - off < 20:
        return None
    ver = buf[off] >> 4
    if ver == 4:
        ihl = (buf[off] & 0x0F) * 4
        if ihl < 20 or n - off < ihl:
            return None
        total, fragw, ttl, proto = unpack_from("!H2xHBB", buf, off + 2)
        # Captures with TSO/offload may record total=0; trust the buffer then.
        end = off + total if ihl <= total <= n - off else n
        src = buf[off + 12:off + 16]
        dst = buf[off + 16:off + 20]
        l4 = off + ihl
        frag_off = fragw & 0x1FFF
        more = bool(fragw & 0x2000)
        if frag_off:
            # Non-first fragment: no L4 header here. Keep it countable under ports 0.
            return Packet(ts, 4, src, dst, proto, 0, 0, end - off, b"", 0, True)
        return _l4(ts, 4, src, dst, proto, buf, l4, end, end - off, more, ttl)
    if ver == 6:
        if n - off < 40:
            return None
        plen, nxt = unpack_from("!HB", buf, off + 4)
        end = off + 40 + plen if plen and off + 40 + plen <= n else n
        src = buf[off + 8:off + 24]
        dst = buf[off + 24:off + 40]
        p = off + 40
        frag = False
        # Bounded walk: a hostile chain of extension headers cannot loop forever.
        for _ in range(8):
            if nxt in _V6_EXT:
                if end - p < 8:
                    return None
                nxt, hl = buf[p], buf[p + 1]
                p += (hl + 1) * 8
            elif nxt == _V6_FRAG:
                if end - p < 8:
                    return None
                frag_field = unpack_from("!H", buf, p + 2)[0]
                nxt = buf[p]
                p += 8
                if frag_field & 0xFFF8:
                    return Packet(ts, 6, src, dst, nxt, 0, 0, end - off, b"", 0, True)
                frag = bool(frag_field & 1)
            else:
                break
        else:
            return None
        if p > end:
            return None
        return _l4(ts, 6, src, dst, nxt, buf, p, end, end - off, frag, buf[off + 7])
    return None


def _l4(ts: float, ver: int, src: bytes, dst: bytes, proto: int, buf: bytes, p: int, end: int,
        length: int, frag: bool, ttl: int) -> Packet | None:
    if proto == UDP:
        if end - p < 8:
            return None
        sport, dport = unpack_from("!HH", buf, p)
        return Packet(ts, ver, src, dst, proto, sport, dport, length, buf[p + 8:end], 0, frag, -1, ttl)
    if proto == TCP:
        if end - p < 20:
            return None
        sport, dport = unpack_from("!HH", buf, p)
        doff = (buf[p + 12] >> 4) * 4
        if doff < 20 or end - p < doff:
            return None
        return Packet(ts, ver, src, dst, proto, sport, dport, length, buf[p + doff:end], buf[p + 13], frag,
                      unpack_from("!I", buf, p + 4)[0], ttl)
    if proto in (ICMP, ICMPV6):
        if end - p < 4:
            return None
        return Packet(ts, ver, src, dst, proto, 0, 0, length, buf[p:end], 0, frag)
    # ESP, AH, GRE and anything else: no ports in the flow key; classifiers read the body.
    return Packet(ts, ver, src, dst, proto, 0, 0, length, buf[p:end], 0, frag)


ETH_IPV4: Final = 0x0800
ETH_IPV6: Final = 0x86DD
_VLAN_TPIDS: Final = frozenset({0x8100, 0x88A8, 0x9100})


def ip_offset_ethernet(buf: bytes) -> int:
    """Offset of the IP header in an Ethernet frame (skipping VLAN/QinQ tags, PPPoE session), or -1."""
    if len(buf) < 14:
        return -1
    etype = unpack_from("!H", buf, 12)[0]
    off = 14
    for _ in range(3):
        if etype in _VLAN_TPIDS:
            if len(buf) < off + 4:
                return -1
            etype = unpack_from("!H", buf, off + 2)[0]
            off += 4
        else:
            break
    if etype in (ETH_IPV4, ETH_IPV6):
        return off
    if etype == 0x8864 and len(buf) >= off + 8:  # PPPoE session: 6-byte header + PPP protocol
        ppp = unpack_from("!H", buf, off + 6)[0]
        if ppp in (0x0021, 0x0057):
            return off + 8
    return -1
