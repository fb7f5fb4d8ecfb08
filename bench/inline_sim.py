"""How many flows of some captures the inline daemon would never decide by the packet budget alone.

Replays captures as the kernel path does: a connection's packets are queued while its packet count (both
directions, handshake and pure ACKs included) is at most N, and userspace sees only the queued ones that
carry payload (SYN/RST/pure ACKs skip the queue). Counts the flows the engine decided by the budget or by
its classifiers, and those left for Engine.decide_quiet (which the daemon now does 2 s after a flow's
last queued packet). `python bench/inline_sim.py [--packets 16] PCAP...`
"""

from __future__ import annotations

import argparse
from collections import Counter

from tunnelwatch.classify.engine import Engine
from tunnelwatch.classify.flow import FlowKey, flow_key
from tunnelwatch.classify.packet import TCP, parse_ip
from tunnelwatch.offline.pcapfile import PcapReader, ip_offset


def main() -> int:
    """Print flows seen, decided without a quiet period, and left undecided."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=16, help="queue.packets (default 16)")
    ap.add_argument("pcaps", nargs="+")
    args = ap.parse_args()
    decided: set[FlowKey] = set()
    engine = Engine(budget=args.packets, deep={}, on_decided=lambda f, v: decided.add(f.key))
    kernel_count: Counter[FlowKey] = Counter()
    for path in args.pcaps:
        with open(path, "rb") as fh:
            for ts, linktype, frame in PcapReader(fh, path):
                off = ip_offset(linktype, frame)
                pkt = parse_ip(frame[off:], ts) if off >= 0 else None
                if pkt is None:
                    continue
                key = flow_key(pkt)
                kernel_count[key] += 1
                if kernel_count[key] > args.packets or (pkt.proto == TCP and not pkt.payload):
                    continue
                engine.process(pkt)
    seen = len(kernel_count)
    print(f"{seen} flows; {len(decided)} decided while queued; {seen - len(decided)} never decided "
          f"without the quiet-period decision")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
