"""Independent facts about the captures the integration tests make: which messages really crossed the wire.

The classifiers are the code under test, so these checks decode the few header fields they need on
their own (scapy for Ethernet/IP/UDP/TCP, a handful of fixed offsets per protocol) and never call into
tunnelwatch. They also poll a capture that tcpdump is still writing, so tests can wait for "N packets
each way" instead of sleeping.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import RawPcapReader

IKE_EXCHANGES = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL"}
L2TP_TYPES = {1: "SCCRQ", 2: "SCCRP", 3: "SCCCN", 4: "StopCCN", 6: "HELLO", 10: "ICRQ", 11: "ICRP",
              12: "ICCN", 14: "CDN"}
PPTP_TYPES = {1: "SCCRQ", 2: "SCCRP", 3: "StopCCRQ", 4: "StopCCRP", 5: "ECHO-RQ", 6: "ECHO-RP", 7: "OCRQ",
              8: "OCRP", 12: "CCRQ", 13: "CDN"}
PPTP_MAGIC = 0x1A2B3C4D


@dataclass(frozen=True)
class Seen:
    """One captured TCP/UDP segment with a payload-carrying transport header."""

    transport: str
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes

    def ports(self) -> frozenset[int]:
        """Both port numbers."""
        return frozenset((self.sport, self.dport))


def read(pcap: Path) -> list[Seen]:
    """TCP and UDP packets of an Ethernet capture; a record cut short by a running tcpdump ends the list."""
    out: list[Seen] = []
    if not pcap.exists() or pcap.stat().st_size < 24:
        return out
    try:
        reader: Any = RawPcapReader(str(pcap))
    except Exception:  # header not written yet
        return out
    with reader:
        try:
            for raw, _meta in reader:
                seen = _decode(bytes(raw))
                if seen is not None:
                    out.append(seen)
        except Exception:  # the writer is mid-record; what we have is still true
            pass
    return out


def _decode(raw: bytes) -> Seen | None:
    frame = Ether(raw)
    ip: Any = frame.getlayer(IP) or frame.getlayer(IPv6)
    if ip is None:
        return None
    for layer, name in ((UDP, "udp"), (TCP, "tcp")):
        seg: Any = ip.getlayer(layer)
        if seg is not None:
            return Seen(name, str(ip.src), int(seg.sport), str(ip.dst), int(seg.dport), bytes(seg.payload))
    return None


def wait_for(pcap: Path, cond: Callable[[list[Seen]], bool], what: str, timeout: float = 15.0) -> list[Seen]:
    """Poll a capture being written until `cond` holds; fail naming `what` and showing what was seen."""
    deadline = time.monotonic() + timeout
    pkts: list[Seen] = []
    while time.monotonic() < deadline:
        pkts = read(pcap)
        if cond(pkts):
            return pkts
        time.sleep(0.2)
    summary = sorted({f"{p.transport} {p.src}:{p.sport}>{p.dst}:{p.dport}" for p in pkts})
    raise AssertionError(f"timed out waiting for {what} in {pcap.name}; segments seen: {summary[:20]}")


def ike_messages(pkts: Iterable[Seen]) -> list[tuple[str, str, str]]:
    """(sender, exchange name, 'request'|'response') of IKEv2 messages on UDP 500/4500."""
    out = []
    for p in pkts:
        if p.transport != "udp" or not p.ports() & {500, 4500}:
            continue
        d = p.payload
        if 4500 in p.ports():
            if d[:4] != bytes(4):
                continue  # ESP-in-UDP or a keepalive, not IKE
            d = d[4:]
        if len(d) < 28 or d[17] != 0x20:
            continue
        kind = "response" if d[19] & 0x20 else "request"
        out.append((p.src, IKE_EXCHANGES.get(d[18], str(d[18])), kind))
    return out


def esp_in_udp(pkts: Iterable[Seen]) -> list[tuple[str, int, int]]:
    """(sender, SPI, sequence number) of ESP packets encapsulated in UDP 4500 (RFC 3948)."""
    out = []
    for p in pkts:
        d = p.payload
        if p.transport == "udp" and 4500 in p.ports() and len(d) >= 16 and d[:4] != bytes(4):
            spi, seq = struct.unpack_from("!II", d)
            out.append((p.src, spi, seq))
    return out


def l2tp_control(pkts: Iterable[Seen]) -> list[tuple[str, str]]:
    """(sender, message type) of L2TPv2 control messages on UDP 1701; ZLB acknowledgements are skipped."""
    out = []
    for p in pkts:
        d = p.payload
        if p.transport != "udp" or 1701 not in p.ports() or len(d) < 12:
            continue
        flags = struct.unpack_from("!H", d)[0]
        if not flags & 0x8000 or flags & 0x000F != 2:
            continue
        off = 2 + (2 if flags & 0x4000 else 0) + 4 + (4 if flags & 0x0800 else 0)
        if flags & 0x0200:
            off += 2 + struct.unpack_from("!H", d, off)[0]
        if len(d) < off + 8:
            continue  # zero-length body: an acknowledgement
        _avp_len, vendor, attr, value = struct.unpack_from("!HHHH", d, off)
        if vendor == 0 and attr == 0:
            out.append((p.src, L2TP_TYPES.get(value, str(value))))
    return out


def pptp_control(pkts: Iterable[Seen]) -> list[tuple[str, str]]:
    """(sender, message type) of PPTP control messages on TCP 1723, several per segment if need be."""
    out = []
    for p in pkts:
        if p.transport != "tcp" or 1723 not in p.ports():
            continue
        d, off = p.payload, 0
        while len(d) >= off + 10:
            length, kind, magic, ctrl = struct.unpack_from("!HHIH", d, off)
            if kind != 1 or magic != PPTP_MAGIC or length < 12:
                break
            out.append((p.src, PPTP_TYPES.get(ctrl, str(ctrl))))
            off += length
    return out


def sip_messages(pkts: Iterable[Seen]) -> list[tuple[str, str, bytes]]:
    """(sender, start line, whole message) of SIP messages on UDP 5060."""
    out = []
    for p in pkts:
        if p.transport == "udp" and 5060 in p.ports() and b"SIP/2.0" in p.payload[:200]:
            line = p.payload.split(b"\r\n", 1)[0].decode("ascii", "replace")
            out.append((p.src, line, p.payload))
    return out


def sdp_audio(message: bytes) -> tuple[str, int] | None:
    """(connection address, audio port) announced in the SDP body of a SIP message."""
    c = re.search(rb"^c=IN IP[46] (\S+)", message, re.M)
    m = re.search(rb"^m=audio (\d+) RTP/", message, re.M)
    if c is None or m is None:
        return None
    return c.group(1).decode(), int(m.group(1))


def rtp_counts(pkts: Iterable[Seen], a: tuple[str, int], b: tuple[str, int], *,
               rtcp: bool = False) -> tuple[int, int]:
    """RTP (or, with rtcp, RTCP) version-2 packets a->b and b->a between two endpoints."""
    ab = ba = 0
    for p in pkts:
        if p.transport != "udp" or len(p.payload) < 8 or p.payload[0] >> 6 != 2:
            continue
        if (200 <= p.payload[1] <= 206) != rtcp or (not rtcp and len(p.payload) < 12):
            continue
        if (p.src, p.sport, p.dst, p.dport) == (*a, *b):
            ab += 1
        elif (p.src, p.sport, p.dst, p.dport) == (*b, *a):
            ba += 1
    return ab, ba


def hexdump_first(pcap: Path, transport: str, port: int, n: int = 3) -> str:
    """Hex of the first payloads of one flow, for failure messages about a mislabelled flow."""
    lines = []
    for p in read(pcap):
        if p.transport == transport and port in p.ports():
            lines.append(f"{p.src}:{p.sport} > {p.dst}:{p.dport} ({len(p.payload)} bytes) "
                         f"{p.payload[:64].hex(' ')}")
            if len(lines) >= n:
                break
    return "\n".join(lines)


def trim(src: Path, dst: Path, per_direction: int = 12, keep: Callable[[Seen], bool] | None = None) -> int:
    """Copy the TCP/UDP frames of a capture (those `keep` accepts), at most `per_direction` per flow
    direction; returns how many were written.

    Used to keep small golden captures of real sessions: the handshakes are all early, a long RTP
    stream or ICMPv6 chatter adds bytes and nothing to learn.
    """
    counts: dict[tuple[str, str, int, str, int], int] = {}
    kept = 0
    reader: Any = RawPcapReader(str(src))
    with reader, open(dst, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # Ethernet link type
        for raw, meta in reader:
            frame = bytes(raw)
            seen = _decode(frame)
            if seen is None or (keep is not None and not keep(seen)):
                continue
            key = (seen.transport, seen.src, seen.sport, seen.dst, seen.dport)
            counts[key] = counts.get(key, 0) + 1
            if counts[key] > per_direction:
                continue
            out.write(struct.pack("<IIII", meta.sec, meta.usec, len(frame), len(frame)) + frame)
            kept += 1
    return kept
