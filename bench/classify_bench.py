"""Offline classification throughput: tunnelwatch vs nfstream (nDPI) on the same file, in one run.

Builds one Ethernet pcap from every capture of the corpus, repeated N times (timestamps shifted so the
copies do not merge into each other's flows), then times each classifier over it several times and
prints packets/s and the ratio. A benchmark, not a test: it prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable

from tunnelwatch.offline.classify import classify_file
from tunnelwatch.offline.pcapfile import PcapError, PcapReader, ip_offset

GAP = 1000.0  # seconds between copies: longer than any idle timeout, so copies never merge
ETH_V4 = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
ETH_V6 = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x86\xdd"


def build_corpus(pcap_dir: str, repeat: int, out: str) -> int:
    """Write `out` (Ethernet pcap); return the packet count."""
    frames: list[tuple[float, bytes]] = []
    for name in sorted(os.listdir(pcap_dir)):
        try:
            with open(os.path.join(pcap_dir, name), "rb") as fh:
                pkts = []
                for ts, lt, frame in PcapReader(fh, name):
                    off = ip_offset(lt, frame)
                    if off < 0 or len(frame) <= off:
                        continue
                    ip = frame[off:]
                    pkts.append((ts, (ETH_V6 if ip[0] >> 4 == 6 else ETH_V4) + ip))
        except PcapError:
            continue
        if not pkts:
            continue
        # nDPI's captures are themselves merges of captures years apart: squeeze every silence (or
        # backwards jump) to GAP so flows split exactly where they did, and the file stays compact.
        t = frames[-1][0] + GAP if frames else 0.0
        prev = pkts[0][0]
        for ts, f in pkts:
            d = ts - prev
            t += d if 0.0 <= d <= GAP else GAP
            prev = ts
            frames.append((t, f))
    span = frames[-1][0] + GAP
    n = 0
    with open(out, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for copy in range(repeat):
            shift = 1_600_000_000.0 + copy * span
            for ts, f in frames:
                t = ts + shift
                sec = int(t)
                fh.write(struct.pack("<IIII", sec, int((t - sec) * 1e6), len(f), len(f)))
                fh.write(f)
                n += 1
    return n


def run_tunnelwatch(path: str) -> int:
    """Classify every flow; return the flow count."""
    return sum(1 for _ in classify_file(path, progress=False))


def run_nfstream(path: str) -> int:
    """nfstream with nDPI dissection, as in the corpus labelling (n_dissections=20); return flows."""
    from nfstream import NFStreamer

    return sum(1 for _ in NFStreamer(source=path, statistical_analysis=False, n_dissections=20))


def timed(fn: Callable[[str], int], path: str, runs: int) -> tuple[list[float], int]:
    """Wall-clock seconds of each run, and the flow count of the last."""
    times = []
    flows = 0
    for _ in range(runs):
        t = time.perf_counter()
        flows = fn(path)
        times.append(time.perf_counter() - t)
    return times, flows


def main() -> int:
    """Entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="../shared/corpus/ndpi")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    pcap_dir = os.path.join(a.corpus, "pcap")
    if not os.path.isdir(pcap_dir):
        print(f"bench: no corpus at {a.corpus}; nothing to measure", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"corpus-x{a.repeat}.pcap")
        n = build_corpus(pcap_dir, a.repeat, path)
        size = os.path.getsize(path)
        print(f"# offline classification: nDPI corpus x{a.repeat} = {n} packets, {size / 1e6:.1f} MB, "
              f"{a.runs} runs each; {platform.machine()}, {os.cpu_count()} cores, Python "
              f"{platform.python_version()}")
        rows = []
        tw, tw_flows = timed(run_tunnelwatch, path, a.runs)
        rows.append(("tunnelwatch classify (1 process)", tw, tw_flows))
        try:
            nf, nf_flows = timed(run_nfstream, path, a.runs)
            rows.append(("nfstream 6.6 / nDPI (default meters)", nf, nf_flows))
        except ImportError:
            print("# nfstream not installed (pip install nfstream==6.6.0): baseline skipped")
            nf = []
        print(f"{'classifier':40}{'flows':>8}{'median s':>10}{'min s':>8}{'pkts/s (median)':>17}{'ratio':>7}")
        base = statistics.median(nf) if nf else None
        for name, times, flows in rows:
            med = statistics.median(times)
            ratio = f"{base / med:7.2f}" if base else "      -"
            print(f"{name:40}{flows:8}{med:10.2f}{min(times):8.2f}{n / med:17,.0f}{ratio}")
        if base:
            print("ratio = nfstream median time / this median time (>1: faster than nfstream)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
