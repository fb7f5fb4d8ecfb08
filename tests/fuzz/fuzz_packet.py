"""Harness: the hand-written IP parser and link-layer offsets (packet.py, pcapfile.ip_offset).

Input: byte 0 picks a link type, byte 1 an offset skew, the rest is a frame. Invariants: no exception,
the payload never exceeds the frame, ports are 16-bit.
"""

from __future__ import annotations

from fuzz._fuzzlib import fuzz_main, instrumented

with instrumented():
    from tunnelwatch.classify.packet import addr_text, ip_offset_ethernet, parse_ip
    from tunnelwatch.offline.pcapfile import SUPPORTED_LINKTYPES, ip_offset

_LINKTYPES = [*sorted(SUPPORTED_LINKTYPES), 999]


def one_input(data: bytes) -> None:
    """Parse one frame under one link type."""
    if len(data) < 2:
        return
    linktype = _LINKTYPES[data[0] % len(_LINKTYPES)]
    frame = data[2:]
    off = ip_offset(linktype, frame)
    assert off == -1 or 0 <= off <= len(frame), off
    ip_offset_ethernet(frame)
    for start in {max(off, 0), data[1] % 8}:
        pkt = parse_ip(frame, 1.0, start)
        if pkt is None:
            continue
        assert len(pkt.payload) <= len(frame) - start
        assert 0 <= pkt.sport <= 65535 and 0 <= pkt.dport <= 65535
        assert pkt.version in (4, 6) and len(pkt.src) == len(pkt.dst) == (4 if pkt.version == 4 else 16)
        addr_text(pkt.src)
        repr(pkt)


if __name__ == "__main__":
    fuzz_main(one_input)
