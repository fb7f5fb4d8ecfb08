"""Summarise a py-spy profile (`py-spy record --format raw --threads --idle`): where the daemon's time goes.

Each raw line is `thread (TID): NAME;frame;frame;... COUNT` (with --subprocesses, after
`process PID:"cmd";` frames), a frame `function (path:line)`. Samples whose
innermost frame is a wait (select, poll, Condition.wait, ...) are idle; the rest are active. For the
thread that handles the queue (the one with Queue._callback in its stacks, normally MainThread; with several
queue workers, their threads taken together) this gives
self time (innermost frame) and total time (anywhere on the stack, counted once per sample) per function and
per module, as shares of its active samples. Usable as a script: `profile_summary.py RAW [--top N]`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_IDLE_LEAF = re.compile(r"(^|\.)(select|poll|epoll_wait|wait|sleep|accept|recv_into|_wait_for_tstate_lock)$"
                        r"|^_*(select|poll|epoll_wait|pthread_cond_\w*wait\w*|futex\w*|\w*nanosleep)\w*$")
# Python frames that are innermost only while blocked in a C call: the daemon's main loop sits in
# select.select() (without --native py-spy shows the calling frame as the leaf)
_IDLE_FRAMES = {("tunnelwatch.inline.daemon", "serve"), ("tunnelwatch.inline.serve", "serve"),
                ("tunnelwatch.inline.workers", "run_workers"),
                ("tunnelwatch.inline.workers", "_serve")}
# Python frames whose own lines are calls into the compiled netfilterqueue binding: split by source line
_BY_LINE = {"Queue._callback", "Queue.poll"}


def _source_line(path: str, line: str | None) -> str:
    """The text of a tunnelwatch source line (for frames split by line), '' when unavailable."""
    if not line or "tunnelwatch/" not in path:
        return ""
    import importlib.util
    import linecache

    spec = importlib.util.find_spec("tunnelwatch")
    if spec is None or not spec.submodule_search_locations:
        return ""
    root = next(iter(spec.submodule_search_locations))
    return linecache.getline(f"{root}/{path.rsplit('tunnelwatch/', 1)[1]}", int(line)).strip()


def _is_idle(frame: str) -> bool:
    mod, func = parse_frame(frame)
    return bool(_IDLE_LEAF.search(func)) or (mod, func) in _IDLE_FRAMES


def module_of(path: str) -> str:
    """A short module name for a frame's file: classify.engine, classify.stun, netfilterqueue, logging."""
    p = path.replace("\\", "/")
    if "tunnelwatch/" in p:
        mod = p.rsplit("tunnelwatch/", 1)[1]
        mod = mod[:-3] if mod.endswith(".py") else mod
        mod = mod.replace("/", ".")
        return mod if mod.startswith("classify.") else f"tunnelwatch.{mod}"
    if "site-packages/" in p:
        return p.rsplit("site-packages/", 1)[1].split("/", 1)[0].split(".", 1)[0]
    base = p.rsplit("/", 1)[-1]
    if base.endswith(".py"):
        return base[:-3]
    return base or "?"


def parse_frame(text: str) -> tuple[str, str]:
    """(module, function) of one frame; native frames keep their library name as the module."""
    m = _FRAME.match(text.strip())
    if not m:
        return "?", text.strip()
    return module_of(m.group("file")), m.group("func")


def summarise(raw: str, top: int = 15, rate: float = 0.0, flows: int = 0) -> dict[str, Any]:
    """Per-thread sample counts, and for the queue thread the top functions by self and total time and the
    modules by self and total time (shares of its active samples; with the sampling `rate` in Hz and the
    `flows` handled while sampling, also microseconds of the thread's time per flow)."""
    stacks: dict[str, list[tuple[list[str], int]]] = {}
    for ln in raw.splitlines():
        head, _, count = ln.rpartition(" ")
        if not head or not count.isdigit():
            continue
        frames = head.split(";")
        proc = ""
        while frames and frames[0].startswith("process "):  # --subprocesses: the innermost process names it
            proc = frames[0].split(":", 1)[0].split()[-1] + "/"
            frames = frames[1:]
        thread = frames[0] if frames else ""
        if thread.startswith("thread ("):
            thread = thread.split(": ", 1)[-1]
            frames = frames[1:]
        stacks.setdefault(proc + thread, []).append((frames, int(count)))
    threads: dict[str, dict[str, int]] = {}
    for name, st in stacks.items():
        total = sum(c for _, c in st)
        idle = sum(c for fr, c in st if fr and _is_idle(fr[-1]))
        threads[name] = {"samples": total, "active": total - idle}
    # the threads that handle a queue: one per worker process with several queues, taken together
    queue_threads = [n for n, st in stacks.items() if any("Queue._callback" in f for fr, _ in st for f in fr)]
    queue_thread = " + ".join(queue_threads)
    out: dict[str, Any] = {"threads": threads, "queue_thread": queue_thread}
    if not queue_thread:
        return out
    stacks[queue_thread] = [x for n in queue_threads for x in stacks[n]]
    threads[queue_thread] = {k: sum(threads[n][k] for n in queue_threads) for k in ("samples", "active")}
    self_fn: Counter[str] = Counter()
    total_fn: Counter[str] = Counter()
    self_mod: Counter[str] = Counter()
    total_mod: Counter[str] = Counter()
    active = 0
    for frames, c in stacks[queue_thread]:
        if not frames:
            continue
        parsed = [parse_frame(f) for f in frames]
        if _is_idle(frames[-1]):
            continue
        active += c
        leaf = parsed[-1]
        key = f"{leaf[0]}:{leaf[1]}"
        if leaf[1] in _BY_LINE:  # which call into the binding: get_payload, set_mark, accept (the verdict)
            m = _FRAME.match(frames[-1].strip())
            if m:
                key += f" [{_source_line(m.group('file'), m.group('line')) or m.group('line')}]"
        self_fn[key] += c
        self_mod[leaf[0]] += c
        for key in {f"{m}:{f}" for m, f in parsed}:
            total_fn[key] += c
        for mod in {m for m, _ in parsed}:
            total_mod[mod] += c
    # verdict lines: Queue._callback as the innermost Python frame at the accept()/set_mark() lines
    verdict = sum(c for fr, c in stacks[queue_thread]
                  if fr and parse_frame(fr[-1])[1] == "Queue._callback")

    per_flow = 1e6 / rate / flows if rate > 0 and flows > 0 else 0.0

    def share(counter: Counter[str]) -> list[tuple[str, int, float, float]]:
        return [(k, v, round(100.0 * v / active, 1), round(v * per_flow, 1))
                for k, v in counter.most_common(top)] if active else []

    out.update({"active": active, "idle": threads[queue_thread]["samples"] - active, "flows": flows,
                "us_per_flow_active": round(active * per_flow, 1),
                "callback_self": verdict,
                "self_functions": share(self_fn), "total_functions": share(total_fn),
                "self_modules": share(self_mod), "total_modules": share(total_mod)})
    return out


def render(s: dict[str, Any]) -> str:
    """Plain-text report of summarise()'s result."""
    lines = ["threads (samples, active): " + ", ".join(f"{n} {t['samples']}/{t['active']}"
                                                       for n, t in s.get("threads", {}).items())]
    if "active" in s:
        act = s["active"]
        tot = act + s["idle"]
        lines.append(f"queue thread {s['queue_thread']}: {act} active of {tot} samples "
                     f"({100.0 * act / max(1, tot):.0f}% busy); {s['flows']} flows, "
                     f"{s['us_per_flow_active']} us of active time per flow")
        for title, key in (("self time by module", "self_modules"), ("total time by module", "total_modules"),
                           ("self time by function", "self_functions"),
                           ("total time by function", "total_functions")):
            lines.append(f"  {title} (% of active samples, samples, us per flow):")
            lines += [f"    {pct:5.1f}%  {n:6d}  {us:7.1f}  {k}" for k, n, pct, us in s[key]]
    return "\n".join(lines)


def main() -> int:
    """Summarise a raw file given on the command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("raw")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.add_argument("--rate", type=float, default=0.0, help="py-spy's sampling rate (Hz)")
    p.add_argument("--flows", type=int, default=0, help="flows handled while sampling")
    a = p.parse_args()
    with open(a.raw) as fh:
        s = summarise(fh.read(), a.top, a.rate, a.flows)
    print(json.dumps(s, indent=1) if a.json else render(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
