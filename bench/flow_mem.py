"""Memory per flow, without the kernel: N TCP or UDP flows through the real Enforcer, undecided or decided.

`--case unknown` (default): each flow is the unknown case of bench/conn_bench.py: 16 random bytes from the
client and 16 random bytes back, both through `Enforcer.handle` (the daemon's queue callback's work), so
every TCP classifier that has not rejected still holds its state and the flow stays undecided.
`--case http`: an HTTP request and its response: confirmed benign on the response, so the flow is decided
and what is measured is what a decided flow still costs in the table. `--case udp`: the udp case of
bench/conn_bench.py (16 random bytes each way in datagrams), undecided. `all` runs every case.
Three figures, each in a fresh process (so they do not disturb each other):
- `rss`: RSS growth over N flows / N (after a warm-up of 1,000 flows, with the daemon's GC settings);
- `trace`: tracemalloc's growth over N flows / N, and the same split by source file (which module's
  allocations the flow state is made of);
- `entry`: one flow-table entry taken apart with sys.getsizeof: the Flow object, each of its slots' values
  (lists, dicts, verdicts), each classifier's state in `flow.state`, the table key, the table and marks dict
  slots (amortised). Shared objects (classifiers, interned small ints, None, the per-transport classifier
  tuples, the empty state, objects two flows point to) are not counted.
Prints one JSON object. Every loop is bounded in count; nothing touches the network.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FunctionType, MethodType, ModuleType
from typing import Any

import flow_bench

try:
    from tunnelwatch.classify.flow import NO_STATE
except ImportError:  # the code before issue 13's cut (for before/after runs): it has no shared state
    NO_STATE = None

HERE = Path(__file__).resolve().parent
N_WARM = 1000


CASES = ("unknown", "http", "udp")
_REQUEST = b"GET /index.html HTTP/1.1\r\nHost: example.net\r\nUser-Agent: bench\r\n\r\n"
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\n"
CASE = "unknown"


def _flows(enf: Any, start: int, n: int) -> None:
    handle = enf.handle
    http = CASE == "http"
    if CASE == "udp":  # conn_bench's udp case: 16 random bytes and 16 back, undecided
        for i in range(start, start + n):
            a, p = flow_bench.client_addr(i)
            handle(flow_bench.udp_packet(a, p, flow_bench.SERVER, 40000, os.urandom(16)))
            handle(flow_bench.udp_packet(flow_bench.SERVER, 40000, a, p, os.urandom(16)))
        return
    for i in range(start, start + n):
        a, p = flow_bench.client_addr(i)
        handle(flow_bench.tcp_packet(a, p, flow_bench.SERVER, 40000, _REQUEST if http else os.urandom(16)))
        handle(flow_bench.tcp_packet(flow_bench.SERVER, 40000, a, p, _RESPONSE if http else os.urandom(16)))


def _decided(enf: Any) -> int:
    return sum(1 for f in enf.engine.table if f.done)


def measure_rss(n: int) -> dict[str, Any]:
    """RSS growth per flow over n undecided flows."""
    flow_bench.set_gc("daemon")
    enf = flow_bench.make_enforcer(n + N_WARM + 1)
    _flows(enf, 0, N_WARM)
    gc.collect()
    r0 = flow_bench.rss_bytes()
    _flows(enf, N_WARM, n)
    gc.collect()
    r1 = flow_bench.rss_bytes()
    table = len(enf.engine.table)
    decided = _decided(enf)
    return {"flows": n, "table": table, "undecided": table - decided, "decided": decided,
            "rss_bytes_per_flow": (r1 - r0) / n}


def measure_trace(n: int) -> dict[str, Any]:
    """tracemalloc growth per flow over n undecided flows, by source file."""
    flow_bench.set_gc("daemon")
    enf = flow_bench.make_enforcer(n + N_WARM + 1)
    _flows(enf, 0, N_WARM)
    gc.collect()
    tracemalloc.start(2)
    s0 = tracemalloc.take_snapshot()
    _flows(enf, N_WARM, n)
    gc.collect()
    s1 = tracemalloc.take_snapshot()
    total = sum(st.size_diff for st in s1.compare_to(s0, "filename"))
    by_file = []
    for st in s1.compare_to(s0, "filename")[:15]:
        name = st.traceback[0].filename
        name = name.rsplit("tunnelwatch/", 1)[-1] if "tunnelwatch/" in name else name.rsplit("/", 1)[-1]
        by_file.append((name, round(st.size_diff / n, 1), round(st.count_diff / n, 2)))
    by_line = []
    for st in s1.compare_to(s0, "traceback")[:14]:
        where = []
        for fr in st.traceback:  # <string> lines are generated __init__s: the caller says whose
            name = fr.filename.rsplit("tunnelwatch/", 1)[-1] if "tunnelwatch/" in fr.filename else fr.filename
            where.append(f"{name}:{fr.lineno}")
        by_line.append((" <- ".join(reversed(where)), round(st.size_diff / n, 1),
                        round(st.count_diff / n, 2)))
    tracemalloc.stop()
    return {"flows": n, "decided": _decided(enf), "traced_bytes_per_flow": total / n, "by_file": by_file,
            "by_line": by_line}


_SHARED = (type, ModuleType, FunctionType, MethodType, int, float, bool, type(None), str)


def deep_size(obj: Any, seen: set[int], shared: set[int]) -> int:
    """sys.getsizeof of obj and everything it owns; classifier objects and other shared things excluded."""
    if id(obj) in seen or id(obj) in shared or (isinstance(obj, frozenset) and not obj):
        return 0  # an empty frozenset is a default argument (Verdict.supersedes), shared by all
    seen.add(id(obj))
    if isinstance(obj, _SHARED) and not (isinstance(obj, int | float) and not isinstance(obj, bool)
                                         and (not isinstance(obj, int) or not -5 <= obj <= 256)):
        return 0
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen, shared) + deep_size(v, seen, shared) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set | frozenset):
        size += sum(deep_size(x, seen, shared) for x in obj)
    elif isinstance(obj, bytes | bytearray | memoryview):
        pass
    else:
        for name in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, name):
                size += deep_size(getattr(obj, name), seen, shared)
        d = getattr(obj, "__dict__", None)
        if isinstance(d, dict):
            size += deep_size(d, seen, shared)
    return size


def measure_entry(n: int) -> dict[str, Any]:
    """One flow's entry taken apart (median over a sample of the case's flows: undecided, or decided)."""
    flow_bench.set_gc("daemon")
    enf = flow_bench.make_enforcer(n + N_WARM + 1)
    _flows(enf, 0, n)
    shared = {id(c) for f in enf.engine.table for c in (*f.active, *f.follow)}
    # objects every flow shares: the engine's per-transport classifier tuples, the empty state, ()
    shared |= {id(t) for t in enf.engine._by_proto.values()} | {id(()), id(NO_STATE)}
    # and what two flows point to (a verdict handed out to many, an announced expectation)
    refs = Counter(id(v) for f in enf.engine.table
                   for v in (f.best, f.expected, f.decided_as, f.name, f.active) if v is not None)
    shared |= {i for i, k in refs.items() if k > 1}
    want_done = CASE == "http"
    flows = [f for f in enf.engine.table if f.done == want_done][: max(1, min(200, n))]
    if not flows:
        return {"flows": n, "case": CASE, "sampled": 0}
    per_slot: dict[str, list[int]] = {}
    per_state: dict[str, list[int]] = {}
    totals: list[int] = []
    for f in flows:
        seen: set[int] = set()
        total = sys.getsizeof(f)
        for name in type(f).__slots__:
            v = getattr(f, name, None)
            if name == "state" and v is not NO_STATE:
                sz = sys.getsizeof(v)
                seen.add(id(v))
                for k, st in v.items():
                    per_state.setdefault(k, []).append(deep_size(st, seen, shared))
                    sz += per_state[k][-1]
            elif name in ("active", "follow"):  # tuples of shared classifier objects: the tuple only
                sz = 0 if id(v) in shared else sys.getsizeof(v)
            else:
                sz = deep_size(v, seen, shared)
            per_slot.setdefault(name, []).append(sz)
            total += sz
        totals.append(total)
    # the table's and the marks dict's own slots, amortised: dict sizes / entries
    table = enf.engine.table._flows
    dict_slots = sys.getsizeof(table) / max(1, len(table)) + sys.getsizeof(enf.marks) / max(1, len(table))

    def med(v: list[int]) -> float:
        return float(sorted(v)[len(v) // 2])

    return {"flows": n, "case": CASE, "sampled": len(flows), "flow_object": sys.getsizeof(flows[0]),
            "entry_bytes": med(totals), "dict_slots_per_flow": round(dict_slots, 1),
            "slots": sorted(((k, med(v)) for k, v in per_slot.items()), key=lambda x: -x[1])[:12],
            "states": sorted(((k, med(v), len(v)) for k, v in per_state.items()), key=lambda x: -x[1])}


def run_all(n: int, timeout: float = 300, cases: tuple[str, ...] = CASES) -> dict[str, Any]:
    """Each measurement of each case in a fresh process; their results together (case "unknown" under
    the plain mode names, as before; the others as "<mode>_<case>")."""
    out: dict[str, Any] = {}
    for case in cases:
        for mode in ("rss", "trace", "entry"):
            r = subprocess.run([sys.executable, str(Path(__file__).resolve()), mode, "--flows", str(n),
                                "--case", case],
                               capture_output=True, text=True, timeout=timeout, check=False, cwd=HERE)
            try:
                res = json.loads(r.stdout)
            except ValueError:
                res = {"error": r.stderr[-500:]}
            out[mode if case == "unknown" else f"{mode}_{case}"] = res
    return out


def main() -> int:
    """One measurement (or all three with `all`), JSON on stdout."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("mode", choices=("rss", "trace", "entry", "all"))
    ap.add_argument("--flows", type=int, default=20_000, help="flows (<= 500,000)")
    ap.add_argument("--case", choices=CASES, default=None,
                    help="unknown: undecided TCP flows; http: decided (confirmed benign); udp: undecided "
                         "UDP flows; default: all of them with `all`, unknown otherwise")
    a = ap.parse_args()
    if not 1 <= a.flows <= 500_000:
        ap.error("bounds: --flows 1..500000")
    global CASE
    CASE = a.case or "unknown"
    fn = {"rss": measure_rss, "trace": measure_trace, "entry": measure_entry}
    out = run_all(a.flows, cases=(a.case,) if a.case else CASES) if a.mode == "all" else fn[a.mode](a.flows)
    json.dump(out, sys.stdout, indent=1 if a.mode == "all" else None)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
