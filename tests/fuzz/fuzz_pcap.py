"""Harness: the capture reader (pcapfile.PcapReader), classic pcap and pcapng, then IP parsing per frame.

Only PcapError may escape the reader; a truncated file must end iteration cleanly.
"""

from __future__ import annotations

import io

from fuzz._fuzzlib import fuzz_main, instrumented

with instrumented():
    from tunnelwatch.classify.packet import parse_ip
    from tunnelwatch.offline.pcapfile import PcapError, PcapReader, ip_offset

_MAX_FRAMES = 2000


def one_input(data: bytes) -> None:
    """Read every frame of the input as a capture file."""
    try:
        reader = PcapReader(io.BytesIO(data), "<fuzz>")
        for n, (ts, linktype, frame) in enumerate(reader):
            assert isinstance(ts, float), ts
            off = ip_offset(linktype, frame)
            if off >= 0:
                parse_ip(frame, ts, off)
            if n >= _MAX_FRAMES:
                break
    except PcapError:
        pass


if __name__ == "__main__":
    fuzz_main(one_input)
