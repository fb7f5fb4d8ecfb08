"""A stand-in for `tunnelwatch run` in conn_bench.py: the daemon's own rules from its config, and at each
queue a consumer that accepts every packet at once with an undecided flow's verdict. Its CPU per new flow
is the floor the daemon's figures stand on: what the kernel round trip costs without any classification.

    python bench/nfq_floor.py --config CFG c --exe BUILT_nfq_floor   # C consumer (bench/nfq_floor.c)
    python bench/nfq_floor.py --config CFG python                    # python-netfilterqueue, empty handler

Prints "ready:" once the rules are in (conn_bench waits for it); on SIGTERM stops the consumers and prints
"rules removed" after removing the rules. Root only, inside the lab's router namespace.
"""

from __future__ import annotations

import argparse
import select
import signal
import subprocess
import sys
from pathlib import Path

from tunnelwatch.config.runconfig import load_config
from tunnelwatch.inline import firewall
from tunnelwatch.inline.nfqueue import COPY_RANGE
from tunnelwatch.inline.rules import Rules
from tunnelwatch.policy.registry import Registry

MASK = firewall.MARK_MASK | firewall.MARK_PENDING


def serve_python(qnum: int, maxlen: int) -> int:
    """One queue through the daemon's own Queue class with a handler that decides nothing."""
    from tunnelwatch.inline.nfqueue import Queue

    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
    q = Queue(qnum, lambda pkt: 0, MASK, maxlen=maxlen)
    print(f"ready: queue {qnum}", flush=True)
    fd = q.fileno()
    while not stop:
        try:
            ready, _, _ = select.select([fd], [], [], 0.5)
        except InterruptedError:
            continue
        if ready:
            q.poll()
    print(f"stopping: queue {qnum}: {q.packets} packets handled", flush=True)
    q.close()
    return 0


def main() -> int:
    """Install the rules, run one consumer per queue until SIGTERM, remove the rules."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("kind", choices=("c", "python", "serve-python"))
    ap.add_argument("--exe", help="the built nfq_floor (kind c)")
    ap.add_argument("--queue", type=int, default=0, help="(serve-python) the queue to serve")
    ap.add_argument("--maxlen", type=int, default=4096)
    a = ap.parse_args()
    cfg = load_config(Path(a.config))
    if a.kind == "serve-python":
        return serve_python(a.queue, cfg.maxlen)
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
    signal.signal(signal.SIGINT, lambda s, f: stop.append(s))
    rules = Rules(cfg, Registry())
    procs: list[subprocess.Popen[str]] = []
    try:
        for q in range(cfg.queue_num, cfg.queue_num + cfg.queue_count):
            if a.kind == "c":
                cmd = [a.exe, str(q), hex(MASK), str(COPY_RANGE), str(cfg.maxlen)]
            else:
                cmd = [sys.executable, __file__, "--config", a.config, "serve-python", "--queue", str(q)]
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            procs.append(p)
            line = p.stdout.readline() if p.stdout else ""
            if not line.startswith("ready"):
                print(f"consumer for queue {q} failed: {line!r}", flush=True)
                return 1
        rules.install()  # as the daemon does: only once every queue has a listener
        print(f"ready: {a.kind} floor, queues {cfg.queue_num}-{cfg.queue_num + cfg.queue_count - 1}",
              flush=True)
        while not stop:
            signal.pause()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                out, _ = p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            print(out.strip(), flush=True)
        firewall.remove()
        print("rules removed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
