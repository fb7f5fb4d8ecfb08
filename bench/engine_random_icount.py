"""Instructions the classification engine alone spends per unknown flow (16 random bytes each way, TCP or
UDP), counted by callgrind: the engine's share of bench/flow_icount.py, and the UDP case it lacks.

    python bench/engine_random_icount.py OLD/daemon daemon

Per flow = (run that builds and processes N flows' packets - run that only builds them) / N. Needs valgrind.
"""

from __future__ import annotations

import argparse

from engine_icount import callgrind

_RUN = r"""
import random, struct, sys
from tunnelwatch.classify.engine import INLINE_BUDGET, Engine
from tunnelwatch.classify.packet import parse_ip
n, proto, handle = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
rng = random.Random(13)
S = bytes([192, 0, 2, 1])

def ip(src, dst, sport, dport, payload):
    if proto == 6:
        t = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x18, 65535, 0, 0) + payload
    else:
        t = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(t), 0, 0x4000, 64, proto, 0, src, dst) + t

pkts = []
for i in range(n):
    cli = struct.pack("!BBBB", 10, 1, (i >> 16) & 0xFF, 1 + (i >> 8) % 250)
    port, data = 1024 + i % 60000, rng.randbytes(16)
    pkts += [parse_ip(ip(cli, S, port, 40000, data), 1.0), parse_ip(ip(S, cli, 40000, port, data), 1.0)]
e = Engine(budget=INLINE_BUDGET)
if handle:
    for p in pkts:
        e.process(p)
"""


def count(pkg_dir: str, n: int, proto: int, handle: bool) -> int:
    """Instructions of one run."""
    return callgrind(pkg_dir, _RUN, str(n), str(proto), "1" if handle else "0")


def main() -> int:
    """Print the engine's instructions per TCP and per UDP flow for each package directory."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--flows", type=int, default=2000)
    args = ap.parse_args()
    for d in args.dirs:
        for name, proto in (("tcp", 6), ("udp", 17)):
            per = (count(d, args.flows, proto, True) - count(d, args.flows, proto, False)) / args.flows
            print(f"{d}: {name} {per:,.0f} instructions per flow ({args.flows} flows, 2 packets each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
