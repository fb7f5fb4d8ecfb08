"""Instructions per short TCP flow through the daemon's userspace path, counted by callgrind (repeatable on
a shared machine, unlike seconds). Compares checkouts when given several daemon directories:

    python bench/flow_icount.py                          # this checkout
    python bench/flow_icount.py OLD/daemon daemon        # before vs after
    python bench/flow_icount.py --seconds                # no valgrind: CPU time per flow instead (noisy)
    python bench/flow_icount.py --proto udp --packets 2  # the lab's "udp" case: a datagram and its echo

Each flow is the lab's "unknown" TCP case as the router's queue sees it (docs/performance.md, "A third
queued packet per TCP flow"): 16 random bytes from the client, their echo from the server, and the echo's
retransmission (same sequence number and bytes; `--packets 2` leaves it out). Every packet goes through
`Enforcer.handle` followed by `Enforcer.tick` (at low load each packet is its own wake-up of the queue
loop), with decisions recorded by a real Supervisor, status state and Reporter (not started: nothing
leaves the process), under the daemon's garbage-collector settings. The clock is simulated: flows start
`--rate` per second, and the run ends 3 s after the last one, so every flow is also decided by the quiet
rule. Instructions per flow = (run with N flows handled - run with the same N flows'
packets built but not handled) / N: interpreter start-up, imports and packet building cancel out.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

_RUN = r"""
import random, struct, sys, time
from types import SimpleNamespace
n, handle, rate, per = int(sys.argv[1]), sys.argv[2] == "1", float(sys.argv[3]), int(sys.argv[4])
rng = random.Random(13)
SERVER = bytes([192, 0, 2, 1])

udp = sys.argv[5] == "udp"

def tcp(src, sport, dst, dport, seq, ack, payload):
    if udp:  # the conn_bench "udp" case: a datagram and its echo
        t = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(t), 0, 0x4000, 64, 17, 0, src, dst) + t
    t = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, 0x18, 65535, 0, 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(t), 0, 0x4000, 64, 6, 0, src, dst) + t

flows = []
for i in range(n):
    cli, port = struct.pack("!BBBB", 10, 1, (i >> 16) & 0xFF, 1 + (i >> 8) % 250), 1024 + i % 60000
    c, s, data = rng.getrandbits(32), rng.getrandbits(32), rng.randbytes(16)
    reply = tcp(SERVER, 40000, cli, port, s, (c + 16) & 0xFFFFFFFF, data)
    flows.append((tcp(cli, port, SERVER, 40000, c, s, data), reply, reply)[:per])
if True:  # set-up in both runs, so that imports cancel out
    clock = [1.8e9]
    t0 = clock[0]
    time.time = lambda: clock[0]
    time.monotonic = lambda: clock[0] - t0 + 1000.0
    from tunnelwatch.appliance.service import Notifier
    from tunnelwatch.appliance.state import StatusState
    from tunnelwatch.config.runconfig import parse_config
    from tunnelwatch.inline.enforcer import Enforcer
    from tunnelwatch.inline.supervisor import Supervisor
    from tunnelwatch.policy.registry import Registry
    from tunnelwatch.report.reporter import Reporter
    cfg = parse_config("queue: {num: 0, packets: 16, new_flow_rate: 0}\n"
                       "policy:\n  klass: {vpn_tunnel: enforce}\n")
    reg = Registry()
    state = StatusState(device_id="bench", version="0", mode="enforce")
    rep = Reporter(cfg, state, "bench")
    sup = Supervisor(cfg, reg, None, None, SimpleNamespace(state=state), Notifier(), lambda c, r: None,
                     reporter=rep)
    enf = Enforcer(cfg, reg)
    enf.record = sup.record
    if hasattr(sup, "tally"):  # the cheap path for decisions nobody reports or shows (issue 13)
        enf.tally = sup.tally
    import gc  # the daemon's collector settings (nfqueue.relax_gc): no automatic full collections
    gc.freeze()
    gc.set_threshold(gc.get_threshold()[0], gc.get_threshold()[1], 1_000_000_000)
    step = 1.0 / rate
    for pkts in flows if handle else ():
        for p in pkts:
            enf.handle(p)
            enf.tick()
            clock[0] += step / 3
    for _ in range(4):
        clock[0] += 1.0
        enf.tick()
    for _ in range(n):  # the quiet rule decides a batch per tick: as many ticks as the backlog needs
        if sup.counts["decided"] == (n if handle else 0):
            break
        enf.tick()
    assert sup.counts["decided"] == (n if handle else 0), (sup.counts, n)
    print(n, dict(enf.counts), file=sys.stderr)
"""


def run(pkg_dir: str, n: int, handle: bool, rate: float, valgrind: bool, per: int = 3,
        proto: str = "tcp") -> float:
    """Instructions (callgrind's 'Collected' total), or CPU seconds without valgrind, of one run."""
    cmd = [sys.executable, "-c", _RUN, str(n), "1" if handle else "0", str(rate), str(per), proto]
    env = {**os.environ, "PYTHONPATH": pkg_dir}
    with tempfile.TemporaryDirectory() as tmp:
        if valgrind:
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", *cmd]
        t0 = _cpu()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=False)
        took = _cpu() - t0
    if r.returncode:
        raise SystemExit(f"run failed:\n{r.stderr[-3000:]}")
    if not valgrind:
        return took
    m = re.search(r"Collected\s*:\s*(\d+)", r.stderr)
    if m is None:
        raise SystemExit(f"no callgrind total in:\n{r.stderr[-2000:]}")
    return float(m.group(1))


def _cpu() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> int:
    """Print instructions (or microseconds) per flow for each package directory."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="*", default=[str(Path(__file__).resolve().parents[1] / "daemon")])
    ap.add_argument("--flows", type=int, default=2000, help="flows per run (default 2000)")
    ap.add_argument("--rate", type=float, default=2000.0, help="new flows per simulated second")
    ap.add_argument("--packets", type=int, choices=(2, 3), default=3,
                    help="queued packets per flow: 3 (with the retransmitted reply, default) or 2")
    ap.add_argument("--proto", choices=("tcp", "udp"), default="tcp",
                    help="udp: a 16-byte datagram and its echo per flow (--packets 2 only)")
    ap.add_argument("--seconds", action="store_true", help="CPU time instead of callgrind (noisy)")
    args = ap.parse_args()
    if args.flows < 1:
        ap.error("--flows must be at least 1")
    if args.proto == "udp" and args.packets != 2:
        ap.error("--proto udp needs --packets 2 (a datagram and its echo)")
    per_flow = []
    for d in args.dirs:
        base = run(d, args.flows, False, args.rate, not args.seconds, args.packets, args.proto)
        full = run(d, args.flows, True, args.rate, not args.seconds, args.packets, args.proto)
        v = (full - base) / args.flows
        per_flow.append(v)
        unit = "us" if args.seconds else "instructions"
        print(f"{d}: {v * 1e6 if args.seconds else v:,.0f} {unit} per flow "
              f"({args.flows} {args.proto} flows, {args.packets} queued packets each)")
    if len(per_flow) >= 2:
        print(f"per flow, last / first: {per_flow[-1] / per_flow[0]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
