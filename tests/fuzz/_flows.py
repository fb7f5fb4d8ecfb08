"""Synthetic flows for harnesses that look flows up (registry, endpoint lists)."""

from __future__ import annotations

from tunnelwatch.classify.flow import Flow, flow_key
from tunnelwatch.classify.packet import Packet

_V4 = [bytes([192, 0, 2, 1]), bytes([10, 0, 0, 7]), bytes([198, 51, 100, 2]), bytes([203, 0, 113, 9]),
       bytes([0, 0, 0, 0]), bytes([255, 255, 255, 255])]
_V6 = [bytes.fromhex("20010db8000000000000000000000001"), bytes(16), b"\xff" * 16,
       bytes.fromhex("fe800000000000000000000000000001")]


def flows() -> list[Flow]:
    """A handful of v4/v6 TCP/UDP/ESP flows between documentation, private and edge addresses."""
    out: list[Flow] = []
    for addrs, ver in ((_V4, 4), (_V6, 6)):
        for i, src in enumerate(addrs):
            dst = addrs[(i + 2) % len(addrs)]
            for proto, sport, dport in ((6, 40000, 443), (17, 5000, 1194), (50, 0, 0), (17, 0, 65535)):
                pkt = Packet(1.0, ver, src, dst, proto, sport, dport, 60, b"")
                out.append(Flow(flow_key(pkt), pkt))
    return out
