"""Reading capture files: classic pcap (both byte orders, us/ns) and pcapng, and link-layer stripping.

Owns the file formats only; yields (timestamp, IP-offset, frame) so the caller parses IP itself.
A file that is not a capture raises `PcapError` with a clear message; a capture truncated at the
end stops cleanly and reports it in `PcapReader.truncated`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO, Final

from tunnelwatch.classify.packet import ETH_IPV4, ETH_IPV6, ip_offset_ethernet

LINKTYPE_NULL: Final = 0
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101
LINKTYPE_LOOP: Final = 108
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
LINKTYPE_LINUX_SLL2: Final = 276
_RAW_ALIASES: Final = frozenset({LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, 12, 14})
SUPPORTED_LINKTYPES: Final = frozenset(
    {LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2}
) | _RAW_ALIASES

_PCAP_MAGICS: Final = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAPNG_SHB: Final = b"\x0a\x0d\x0d\x0a"
_MAX_RECORD: Final = 256 * 1024


class PcapError(Exception):
    """The file is not a readable pcap/pcapng capture."""


def ip_offset(linktype: int, frame: bytes) -> int:
    """Offset of the IP header inside a frame of the given link type, or -1 when it carries no IP."""
    if linktype == LINKTYPE_ETHERNET:
        return ip_offset_ethernet(frame)
    if linktype in _RAW_ALIASES:
        return 0 if frame else -1
    if linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            return -1
        etype = struct.unpack_from("!H", frame, 14)[0]
        return 16 if etype in (ETH_IPV4, ETH_IPV6) else -1
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20:
            return -1
        etype = struct.unpack_from("!H", frame, 0)[0]
        return 20 if etype in (ETH_IPV4, ETH_IPV6) else -1
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return 4 if len(frame) > 4 else -1
    return -1


class PcapReader:
    """Iterate over `(ts, linktype, frame)` of a pcap or pcapng file."""

    def __init__(self, fh: BinaryIO, name: str = "<capture>") -> None:
        self.fh = fh
        self.name = name
        self.truncated = False
        self.unsupported_linktypes: set[int] = set()
        head = fh.read(4)
        if len(head) < 4:
            raise PcapError(f"{name}: empty or too short to be a capture file")
        self._head = head
        if head in _PCAP_MAGICS:
            self.format = "pcap"
        elif head == _PCAPNG_SHB:
            self.format = "pcapng"
        else:
            raise PcapError(f"{name}: not a pcap or pcapng file (magic {head.hex()})")

    def __iter__(self) -> Iterator[tuple[float, int, bytes]]:
        if self.format == "pcap":
            return self._iter_pcap()
        return self._iter_pcapng()

    def _iter_pcap(self) -> Iterator[tuple[float, int, bytes]]:
        endian, unit = _PCAP_MAGICS[self._head]
        rest = self.fh.read(20)
        if len(rest) < 20:
            raise PcapError(f"{self.name}: truncated pcap header")
        linktype = struct.unpack(endian + "HHiIII", rest)[5] & 0x0FFFFFFF
        if linktype not in SUPPORTED_LINKTYPES:
            self.unsupported_linktypes.add(linktype)
            return
        rec = struct.Struct(endian + "IIII")
        unpack = rec.unpack_from
        read = self.fh.read
        # Read in large chunks and slice records out of them: two small reads per packet cost more
        # than the whole rest of the parsing.
        buf = b""
        pos = 0
        while True:
            if len(buf) - pos < 16:
                chunk = read(1 << 20)
                if not chunk:
                    self.truncated = len(buf) > pos
                    return
                buf = buf[pos:] + chunk
                pos = 0
                continue
            sec, frac, incl, _orig = unpack(buf, pos)
            if incl > _MAX_RECORD:
                self.truncated = True
                return
            end = pos + 16 + incl
            if end > len(buf):
                chunk = read(max(1 << 20, incl))
                if not chunk:
                    self.truncated = True
                    return
                buf = buf[pos:] + chunk
                pos = 0
                continue
            yield sec + frac * unit, linktype, buf[pos + 16:end]
            pos = end

    def _iter_pcapng(self) -> Iterator[tuple[float, int, bytes]]:
        # Interfaces: (linktype, timestamp unit in seconds); reset at each section.
        ifaces: list[tuple[int, float]] = []
        endian = "<"
        first = True
        read = self.fh.read
        while True:
            head = self._head if first else read(8)
            if first:
                head += read(4)
                first = False
            if len(head) < 8:
                self.truncated = bool(head)
                return
            btype_raw = head[:4]
            if btype_raw == _PCAPNG_SHB:
                bom = read(4)
                if bom == b"\x4d\x3c\x2b\x1a":
                    endian = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    endian = ">"
                else:
                    raise PcapError(f"{self.name}: bad pcapng byte-order magic")
                blen = struct.unpack(endian + "I", head[4:8])[0]
                if blen < 28 or blen > _MAX_RECORD or blen % 4:
                    raise PcapError(f"{self.name}: bad pcapng section header length {blen}")
                if len(read(blen - 12)) < blen - 12:
                    self.truncated = True
                    return
                ifaces = []
                continue
            btype, blen = struct.unpack(endian + "II", head)
            if blen < 12 or blen > _MAX_RECORD or blen % 4:
                self.truncated = True
                return
            body = read(blen - 8)
            if len(body) < blen - 8:
                self.truncated = True
                return
            body = body[:-4]  # trailing block length
            if btype == 1:  # Interface Description Block
                if len(body) < 8:
                    continue
                linktype = struct.unpack_from(endian + "H", body, 0)[0]
                ifaces.append((linktype, _if_tsresol(body[8:], endian)))
            elif btype == 6:  # Enhanced Packet Block
                if len(body) < 20:
                    continue
                ifid, hi, lo, cap, _orig = struct.unpack_from(endian + "IIIII", body, 0)
                if ifid >= len(ifaces) or cap > len(body) - 20:
                    continue
                linktype, unit = ifaces[ifid]
                if linktype not in SUPPORTED_LINKTYPES:
                    self.unsupported_linktypes.add(linktype)
                    continue
                yield ((hi << 32) | lo) * unit, linktype, body[20:20 + cap]
            elif btype == 3:  # Simple Packet Block: interface 0, no timestamp
                if not ifaces or len(body) < 4:
                    continue
                linktype, _unit = ifaces[0]
                if linktype in SUPPORTED_LINKTYPES:
                    yield 0.0, linktype, body[4:]


def _if_tsresol(opts: bytes, endian: str) -> float:
    """Read if_tsresol (option 9) from IDB options; default microseconds."""
    p = 0
    while p + 4 <= len(opts):
        code, length = struct.unpack_from(endian + "HH", opts, p)
        if code == 0:
            break
        if code == 9 and length >= 1 and p + 5 <= len(opts):
            v = opts[p + 4]
            return float(2 ** -(v & 0x7F)) if v & 0x80 else float(10 ** -(v & 0x7F))
        p += 4 + ((length + 3) & ~3)
    return 1e-6
