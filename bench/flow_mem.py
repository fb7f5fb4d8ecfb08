"""Memory per flow under classification, without the kernel: N undecided TCP flows through the real Enforcer.

Each flow is the unknown case of bench/conn_bench.py: 16 random bytes from the client and 16 random bytes
back, both through `Enforcer.handle` (the daemon's queue callback's work), so every TCP classifier that has
not rejected still holds its state. Three figures, each in a fresh process (so they do not disturb each
other):
- `rss`: RSS growth over N flows / N (after a warm-up of 1,000 flows, with the daemon's GC settings);
- `trace`: tracemalloc's growth over N flows / N, and the same split by source file (which module's
  allocations the flow state is made of);
- `entry`: one flow-table entry taken apart with sys.getsizeof: the Flow object, each of its slots' values
  (lists, dicts, verdicts), each classifier's state in `flow.state`, the table key, the table and marks dict
  slots (amortised). Shared objects (classifiers, interned small ints, None) are not counted.
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
from pathlib import Path
from types import FunctionType, MethodType, ModuleType
from typing import Any

import flow_bench

HERE = Path(__file__).resolve().parent
N_WARM = 1000


def _flows(enf: Any, start: int, n: int) -> None:
    handle = enf.handle
    for i in range(start, start + n):
        a, p = flow_bench.client_addr(i)
        handle(flow_bench.tcp_packet(a, p, flow_bench.SERVER, 40000, os.urandom(16)))
        handle(flow_bench.tcp_packet(flow_bench.SERVER, 40000, a, p, os.urandom(16)))


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
    undecided = sum(1 for f in enf.engine.table if not f.done)
    return {"flows": n, "table": table, "undecided": undecided, "rss_bytes_per_flow": (r1 - r0) / n}


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
    return {"flows": n, "traced_bytes_per_flow": total / n, "by_file": by_file, "by_line": by_line}


_SHARED = (type, ModuleType, FunctionType, MethodType, int, float, bool, type(None), str)


def deep_size(obj: Any, seen: set[int], shared: set[int]) -> int:
    """sys.getsizeof of obj and everything it owns; classifier objects and other shared things excluded."""
    if id(obj) in seen or id(obj) in shared:
        return 0
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
    """One undecided flow's entry taken apart (median over a sample of flows)."""
    flow_bench.set_gc("daemon")
    enf = flow_bench.make_enforcer(n + N_WARM + 1)
    _flows(enf, 0, n)
    shared = {id(c) for f in enf.engine.table for c in (*f.active, *f.follow)}
    flows = [f for f in enf.engine.table if not f.done][: max(1, min(200, n))]
    if not flows:
        return {"flows": n, "undecided": 0}
    per_slot: dict[str, list[int]] = {}
    per_state: dict[str, list[int]] = {}
    totals: list[int] = []
    for f in flows:
        seen: set[int] = set()
        total = sys.getsizeof(f)
        for name in type(f).__slots__:
            v = getattr(f, name, None)
            if name == "state":
                sz = sys.getsizeof(v)
                seen.add(id(v))
                for k, st in v.items():
                    per_state.setdefault(k, []).append(deep_size(st, seen, shared))
                    sz += per_state[k][-1]
            elif name in ("active", "follow"):  # lists of shared classifier objects: the list only
                sz = sys.getsizeof(v)
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

    return {"flows": n, "sampled": len(flows), "flow_object": sys.getsizeof(flows[0]),
            "entry_bytes": med(totals), "dict_slots_per_flow": round(dict_slots, 1),
            "slots": sorted(((k, med(v)) for k, v in per_slot.items()), key=lambda x: -x[1])[:12],
            "states": sorted(((k, med(v), len(v)) for k, v in per_state.items()), key=lambda x: -x[1])}


def run_all(n: int, timeout: float = 300) -> dict[str, Any]:
    """Each measurement in a fresh process; their results together."""
    out: dict[str, Any] = {}
    for mode in ("rss", "trace", "entry"):
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), mode, "--flows", str(n)],
                           capture_output=True, text=True, timeout=timeout, check=False, cwd=HERE)
        try:
            out[mode] = json.loads(r.stdout)
        except ValueError:
            out[mode] = {"error": r.stderr[-500:]}
    return out


def main() -> int:
    """One measurement (or all three with `all`), JSON on stdout."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("mode", choices=("rss", "trace", "entry", "all"))
    ap.add_argument("--flows", type=int, default=20_000, help="undecided flows (<= 500,000)")
    a = ap.parse_args()
    if not 1 <= a.flows <= 500_000:
        ap.error("bounds: --flows 1..500000")
    fn = {"rss": measure_rss, "trace": measure_trace, "entry": measure_entry}
    out = run_all(a.flows) if a.mode == "all" else fn[a.mode](a.flows)
    json.dump(out, sys.stdout, indent=1 if a.mode == "all" else None)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
