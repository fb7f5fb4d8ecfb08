"""`make bench`: every performance figure of issue 7 from one run, printed as one table.

Sections (each skipped with a reason, never failed, when its prerequisite is missing):
1. offline classification packets/s, tunnelwatch vs nfstream (nDPI) on the same file (classify_bench);
2. through the lab's router namespace without and with `tunnelwatch run` (enforce): iperf3 TCP throughput,
   iperf3 UDP packets/s at 64 and 1400 bytes, new TCP connections/s, the first request's round trip (both
   packets queued: half the difference is the latency added to one queued packet), and the daemon's CPU
   seconds per 1,000 new flows (utime + stime from /proc/PID/stat around the connection loop); root only;
3. per new flow (issue 13, conn_bench + flow_mem): new connections/s through the router without and with the
   daemon, driven by a C load generator (bench/loadgen.c), for benign HTTP, an unknown TCP protocol that
   stays undecided and unknown UDP, at fixed offered loads and at saturation; fail-open bypasses counted;
   daemon CPU per new flow; request->reply latency; the daemon's RSS per undecided flow (root only), then
   bytes per undecided flow without the kernel (RSS, tracemalloc, sys.getsizeof of one entry) and a py-spy
   profile of the daemon under the unknown load, summarised by function and module (after the table);
4. the Enforcer's userspace path alone (flow_bench, fresh processes): microseconds per queued packet,
   flow-state RSS and CPU per new flow at 10k, 100k and 1M concurrent flows; the longest garbage-collection
   pause while the table fills to 100,000 flows (daemon's GC settings vs the interpreter's default) and one
   full collection at that size;
5. `--only userspace-arm64` (not run by default; bench/arm64_userspace.sh, `make bench-arm64`): section 4 in
   a Debian 12 arm64 root under qemu-user. It proves the code runs on arm64; emulated timings say nothing
   about a Raspberry Pi's speed (docs/performance.md derives those from section 4 and a per-core factor).
Progress goes to stderr, the table to stdout (--json: one JSON object instead). Every load is bounded in
count and time; all network traffic stays inside the lab's namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import classify_bench
import conn_bench
import flow_mem
import net_bench
import profile_summary

from tunnelwatch.lab.netlab import SERVER_IP, Lab, can_run_lab, lab, missing_packages

HERE = Path(__file__).resolve().parent


@dataclass
class Row:
    """One line of the table: a metric, its baseline, tunnelwatch's figure and their ratio."""

    section: str
    metric: str
    baseline: float | None
    value: float | None
    unit: str
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """value / baseline when both exist."""
        if self.baseline and self.value is not None:
            return self.value / self.baseline
        return None


def say(msg: str) -> None:
    """A progress line on stderr."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --- 1. offline -------------------------------------------------------------------------------------


def offline(corpus: str, repeat: int, runs: int) -> list[Row]:
    """tunnelwatch classify vs nfstream on the corpus repeated `repeat` times; median of `runs`."""
    pcap_dir = os.path.join(corpus, "pcap")
    if not os.path.isdir(pcap_dir):
        say(f"offline: skipped, no corpus at {corpus}")
        return [Row("offline", "classification (no corpus)", None, None, "pkt/s", "skipped")]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "corpus.pcap")
        n = classify_bench.build_corpus(pcap_dir, repeat, path)
        say(f"offline: {n} packets (corpus x{repeat}), {runs} run(s) each: tunnelwatch ...")
        tw, flows = classify_bench.timed(classify_bench.run_tunnelwatch, path, runs)
        nf_rate = None
        note = f"corpus x{repeat} = {n} pkts, {flows} flows"
        try:
            say("offline: nfstream ...")
            nf, _ = classify_bench.timed(classify_bench.run_nfstream, path, runs)
            nf_rate = n / statistics.median(nf)
        except ImportError:
            note += "; nfstream not installed (pip install nfstream==6.6.0)"
    return [Row("offline", "classification, 1 process (vs nfstream/nDPI)", nf_rate,
                n / statistics.median(tw), "pkt/s", note)]


# --- 2. router namespace ----------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of one process, in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def _iperf_udp(lb: Lab, size: int, seconds: int, rate: str) -> tuple[float, str]:
    """Packets/s the server received from one bounded iperf3 UDP run of `size`-byte datagrams."""
    r = lb.run(lb.client, "iperf3", "-c", SERVER_IP, "-p", str(net_bench.IPERF_PORT), "-u",
               "-l", str(size), "-b", rate, "-t", str(seconds), "-J", check=False, timeout=seconds + 30)
    try:
        s = json.loads(r.stdout)["end"]["sum"]
        return (s["packets"] - s["lost_packets"]) / s["seconds"], f"lost {s['lost_percent']:.1f}%"
    except (ValueError, KeyError, TypeError, ZeroDivisionError):
        return 0.0, f"iperf3 -u failed: {(r.stdout + r.stderr)[-200:]}"


def _connect(lb: Lab, conns: int, limit: int) -> dict[str, Any] | None:
    """One sequential connection loop in the client namespace (net_bench.CONNECT_CLIENT)."""
    r = lb.run(lb.client, sys.executable, "-c", net_bench.CONNECT_CLIENT, SERVER_IP,
               str(net_bench.ACCEPT_PORT), str(conns), str(limit), check=False, timeout=limit + 30)
    try:
        return dict(json.loads(r.stdout))
    except ValueError:
        say(f"connection loop failed: {r.stderr[-300:]}")
        return None


def _connect_parallel(lb: Lab, clients: int, conns: int, limit: int) -> tuple[int, float]:
    """`clients` connection loops at once; (connections made, seconds the slowest took)."""
    cmd = ["ip", "netns", "exec", lb.client, sys.executable, "-c", net_bench.CONNECT_CLIENT, SERVER_IP,
           str(net_bench.ACCEPT_PORT), str(conns // clients), str(limit)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(clients)]
    ok, elapsed = 0, 0.0
    for p in procs:
        try:
            out, _ = p.communicate(timeout=limit + 30)
            c = json.loads(out)
            ok += c["ok"]
            elapsed = max(elapsed, c["elapsed"])
        except (subprocess.TimeoutExpired, ValueError):
            p.kill()
            p.wait()
    return ok, elapsed


def _pass(lb: Lab, a: argparse.Namespace, pid: int | None) -> dict[str, float]:
    """One pass through the router; with `pid`, the daemon's CPU over the parallel connection loop."""
    f = net_bench.measure(lb, a.seconds, 1)  # throughput; the connection loops are run below
    out: dict[str, float] = {"tcp_gbps": f.gbps}
    for size in (64, 1400):
        pps, note = _iperf_udp(lb, size, a.seconds, a.udp_rate)
        out[f"udp{size}_pps"] = pps
        if "failed" in note:
            say(note)
    c = _connect(lb, a.conns, a.conn_seconds)
    if c is not None:
        out["conn_per_s"] = c["ok"] / c["elapsed"] if c["elapsed"] > 0 else 0.0
        out["rtt50_us"] = net_bench._pct(c["rtt_us"], 0.50)
        out["rtt99_us"] = net_bench._pct(c["rtt_us"], 0.99)
    u0, s0 = _cpu_seconds(pid) if pid else (0.0, 0.0)
    ok, elapsed = _connect_parallel(lb, a.clients, a.conns, a.conn_seconds)
    u1, s1 = _cpu_seconds(pid) if pid else (0.0, 0.0)
    if elapsed > 0:
        out["pconn_per_s"] = ok / elapsed
    if pid and ok:
        out["cpu_s_per_1000"] = (u1 - u0 + s1 - s0) / ok * 1000
        out["user_s_per_1000"] = (u1 - u0) / ok * 1000
    return out


def router(a: argparse.Namespace) -> list[Row]:
    """Without / with the daemon, `a.rounds` alternating passes; medians."""
    reason = can_run_lab()
    missing = missing_packages(*net_bench.TOOLS)
    if reason or missing:
        why = reason or f"missing packages: {' '.join(missing)}"
        say(f"router: skipped: {why}")
        return [Row("router", "router namespace (skipped)", None, None, "", why)]
    without: list[dict[str, float]] = []
    with_: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="tunnelwatch-bench-") as tmp, \
            lab(Path(tmp), ipv6=False) as lb:
        work = Path(tmp)
        lb.spawn(lb.server, ["iperf3", "-s", "-B", SERVER_IP, "-p", str(net_bench.IPERF_PORT)],
                 "iperf3")
        lb.spawn(lb.server, [sys.executable, "-c", net_bench.ACCEPT_SERVER, SERVER_IP,
                             str(net_bench.ACCEPT_PORT)], "accept")
        lb.wait_for_log("accept", "listening")
        lb.wait_until(lb.server, ["sh", "-c", f"ss -ltn | grep -q ':{net_bench.IPERF_PORT} '"])
        cfg = net_bench._daemon_config(work, a.packets)
        for rnd in range(a.rounds):
            say(f"router: round {rnd + 1}/{a.rounds}: without the daemon ...")
            without.append(_pass(lb, a, None))
            say(f"router: round {rnd + 1}/{a.rounds}: with the daemon (enforce) ...")
            name = f"daemon{rnd}"
            p = lb.spawn(lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)], name)
            lb.wait_for_log(name, "ready:", timeout=30)
            with_.append(_pass(lb, a, p.pid))
            lb.stop(name)
            lb.wait_for_log(name, "rules removed", timeout=10)
            for ln in lb.log(name).splitlines():
                if "packets seen" in ln:
                    say(ln.split("INFO: ", 1)[-1])

    def med(rounds: list[dict[str, float]], key: str) -> float | None:
        vals = [r[key] for r in rounds if key in r]
        return float(statistics.median(vals)) if vals else None

    note = f"median of {a.rounds}; {a.packets} pkts/conn queued"
    rows = [Row("router", "iperf3 TCP throughput", med(without, "tcp_gbps"), med(with_, "tcp_gbps"), "Gbit/s",
                note),
            Row("router", "iperf3 UDP 64-byte datagrams", med(without, "udp64_pps"), med(with_, "udp64_pps"),
                "pkt/s", f"-b {a.udp_rate}, received"),
            Row("router", "iperf3 UDP 1400-byte datagrams", med(without, "udp1400_pps"),
                med(with_, "udp1400_pps"), "pkt/s", f"-b {a.udp_rate}, received"),
            Row("router", "new TCP connections (sequential)", med(without, "conn_per_s"),
                med(with_, "conn_per_s"), "conn/s", f"{a.conns} conns, request+echo each"),
            Row("router", f"new TCP connections ({a.clients} parallel clients)", med(without, "pconn_per_s"),
                med(with_, "pconn_per_s"), "conn/s", f"{a.conns} conns in all")]
    for q in ("50", "99"):
        b, w = med(without, f"rtt{q}_us"), med(with_, f"rtt{q}_us")
        added = f"+{(w - b) / 2:.0f} us per queued packet" if b is not None and w is not None else ""
        rows.append(Row("router", f"first request->echo RTT p{q} (2 pkts queued)", b, w, "us", added))
    user = med(with_, "user_s_per_1000")
    rows.append(Row("router", "daemon CPU per 1,000 new flows", None, med(with_, "cpu_s_per_1000"), "cpu s",
                    "utime+stime, parallel loop" + (f"; user {user:.3f} s" if user is not None else "")))
    return rows


# --- 3. per new flow ---------------------------------------------------------------------------------


def perflow(a: argparse.Namespace) -> tuple[list[Row], dict[str, Any] | None]:
    """New-connection rates without/with the daemon, CPU and latency per flow, bytes per flow; the
    profile's summary (or None)."""
    rows: list[Row] = []
    cp = argparse.ArgumentParser(prog="conn-args")
    conn_bench.add_arguments(cp)
    ca = cp.parse_args(a.conn_args.split())
    err = conn_bench.check_bounds(ca)
    if err:
        raise SystemExit(f"--conn-args: {err}")
    prof = None
    reason = can_run_lab() or " ".join(missing_packages(*conn_bench.TOOLS))
    if reason:
        say(f"perflow: router part skipped: {reason}")
        rows.append(Row("perflow", "new connections through the router (skipped)", None, None, "", reason))
    else:
        say(f"perflow: {','.join(ca.cases)} at {ca.rates} conn/s and saturation, {ca.seconds:g} s per point")
        result = conn_bench.run(ca)
        for metric, unit, b, w, note, _ in conn_bench.table_rows(result):
            rows.append(Row("perflow", metric, b, w, unit, note))
        prof = result.get("profile")
    say(f"perflow: bytes per undecided flow without the kernel ({a.mem_flows:,} flows, 3 processes) ...")
    m = flow_mem.run_all(a.mem_flows)
    if "rss_bytes_per_flow" in m.get("rss", {}):
        rows.append(Row("perflow", "RSS per undecided flow, no kernel", None, m["rss"]["rss_bytes_per_flow"],
                        "bytes", f"{m['rss']['undecided']:,} undecided flows in the table"))
    if "rss_bytes_per_flow" in m.get("rss_udp", {}):
        rows.append(Row("perflow", "RSS per undecided UDP flow, no kernel", None,
                        m["rss_udp"]["rss_bytes_per_flow"], "bytes",
                        f"{m['rss_udp']['undecided']:,} undecided flows in the table"))
    t = m.get("trace", {})
    if "traced_bytes_per_flow" in t:
        top = ", ".join(f"{f} {b:.0f}" for f, b, _ in t["by_file"][:5])
        rows.append(Row("perflow", "tracemalloc per undecided flow", None, t["traced_bytes_per_flow"],
                        "bytes", f"by file: {top}"))
    e = m.get("entry", {})
    if "entry_bytes" in e:
        states = ", ".join(f"{k} {v:.0f}" for k, v, _ in e["states"][:4])
        slots = dict(e["slots"])
        rows.append(Row("perflow", "sys.getsizeof of one flow entry (deep)", None,
                        e["entry_bytes"] + e["dict_slots_per_flow"], "bytes",
                        f"Flow {e['flow_object']}, state {slots.get('state', 0):.0f} ({states}), "
                        f"key {slots.get('key', 0):.0f}, dict slots {e['dict_slots_per_flow']:.0f}"))
    return rows, prof


# --- 4. userspace path alone ------------------------------------------------------------------------


# How flow_bench runs: natively, or as arm64 under qemu-user (bench/arm64_userspace.sh, docs/performance.md).
NATIVE = ("userspace", [sys.executable, str(HERE / "flow_bench.py")], 1.0)
ARM64 = ("arm64-qemu", [str(HERE / "arm64_userspace.sh"), "python", "/tw/bench/flow_bench.py"], 15.0)
GC_FLOWS = 100_000  # issue 13: no garbage-collection pause above 50 ms while the table fills to this
CHURN_TABLE = 65_536  # queue.flows' default: the table full, every new flow evicting the oldest


def _flow_bench(cmd: list[str], args: list[str], timeout: float) -> dict[str, Any] | None:
    try:
        r = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, check=False)
        return dict(json.loads(r.stdout))
    except (subprocess.TimeoutExpired, ValueError) as exc:
        say(f"flow_bench {' '.join(args)} failed: {exc}")
        return None


def userspace(a: argparse.Namespace, how: tuple[str, list[str], float] = NATIVE) -> list[Row]:
    """Microseconds per queued packet (best of 3 fresh processes); RSS and CPU per flow by table size;
    garbage-collection pauses while the table fills to 100,000 flows, the daemon's GC vs the default."""
    section, cmd, slow = how
    rows: list[Row] = []
    say(f"{section}: {a.mix_conns} synthetic connections (request + echo), 3 runs x 2 GC settings ...")
    # interleaved, so the collector comparison shares the machine's drift
    runs: dict[str, list[float]] = {"default": [], "daemon": []}
    for _ in range(3):
        for gc_mode, found in runs.items():
            m = _flow_bench(cmd, ["mix", "--conns", str(a.mix_conns), "--gc", gc_mode], 120 * slow)
            if m:
                found.append(m["us_per_pkt_cpu"])
    for gc_mode, label in (("default", "interpreter's default GC"), ("daemon", "daemon's GC settings")):
        us = runs[gc_mode]
        if us:
            note = f"Enforcer.handle, no kernel; min of {len(us)}, median {statistics.median(us):.1f}"
            rows.append(Row(section, f"per queued packet, {label}", None, min(us), "us", note))
    say(f"{section}: filling the flow table to {a.max_flows:,} flows ...")
    s = _flow_bench(cmd, ["scale", "--flows", str(a.max_flows), "--limit", str(a.scale_seconds)],
                    a.scale_seconds + 120 * slow)
    if s:
        for st in s["steps"]:
            n = st["flows"]
            rows.append(Row(section, f"flow state RSS at {n:,} flows", None, st["rss_bytes"] / 2**20,
                            "MiB", f"{st['rss_bytes'] / n:,.0f} bytes/flow"))
        prev = 0
        for st in s["steps"]:
            rows.append(Row(section, f"CPU per new flow, table {prev:,}..{st['flows']:,}", None,
                            st["us_per_new_flow"], "us"))
            prev = st["flows"]
        rows.append(Row(section, f"CPU per packet of an existing flow at {s['flows']:,}", None,
                        s["us_per_existing_pkt"], "us"))
        if not s["complete"]:
            rows.append(Row(section, "table fill stopped early", None, s["flows"], "flows",
                            f"--scale-seconds {a.scale_seconds} reached"))
    rows += gc_pauses(a, how, s if s and s["flows"] == GC_FLOWS and s["complete"] else None)
    if s and s["flows"] != GC_FLOWS:
        rows.append(Row(section, f"one full GC collection at {s['flows']:,} flows", None,
                        s["full_gc_pause_s"] * 1e3, "ms", "what Enforcer.tick's hourly gc.collect() stalls"))
    return rows


def userspace_arm64(a: argparse.Namespace) -> list[Row]:
    """Section 4 as arm64 code under qemu-user, once the cached arm64 root exists (built on first use)."""
    say("arm64-qemu: building or reusing the arm64 root (bench/arm64_userspace.sh root) ...")
    try:
        r = subprocess.run([ARM64[1][0], "root"], capture_output=True, text=True, timeout=2000, check=False)
        why = "" if r.returncode == 0 else (r.stderr.strip().splitlines() or ["failed"])[-1]
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = str(exc)
    if why:
        say(f"arm64-qemu: skipped: {why}")
        return [Row(ARM64[0], "arm64 under qemu-user (skipped)", None, None, "", why)]
    return userspace(a, ARM64)


def gc_pauses(a: argparse.Namespace, how: tuple[str, list[str], float], daemon_run: dict[str, Any] | None
              ) -> list[Row]:
    """Longest automatic-collection pause while the table fills to 100,000 flows (daemon's GC settings,
    then the interpreter's default) and one explicit full collection at that size."""
    section, cmd, slow = how
    rows: list[Row] = []
    for gc_mode, label in (("daemon", "daemon's GC"), ("default", "default GC")):
        s = daemon_run if gc_mode == "daemon" else None
        if s is None:
            say(f"{section}: GC pauses while filling to {GC_FLOWS:,} flows, {label} ...")
            s = _flow_bench(cmd, ["scale", "--flows", str(GC_FLOWS), "--gc", gc_mode,
                                  "--limit", str(a.scale_seconds)], a.scale_seconds + 120 * slow)
        if not s or not s["complete"]:
            rows.append(Row(section, f"longest GC pause filling to {GC_FLOWS:,}, {label}", None, None, "ms",
                            "run failed or --scale-seconds reached"))
            continue
        g = s["fill_gc"]
        gens = ", ".join(f"gen{k} {v['count']} max {v['max_s'] * 1e3:.1f}"
                         for k, v in sorted(g["by_generation"].items()))
        rows.append(Row(section, f"longest GC pause filling to {GC_FLOWS:,}, {label}", None,
                        g["max_pause_s"] * 1e3, "ms", f"goal <= 50; CPU {g['max_pause_cpu_s'] * 1e3:.1f}; "
                        f"{g['collections']} collections: {gens}"))
        if gc_mode == "daemon":
            rows.append(Row(section, f"one full GC collection at {GC_FLOWS:,} flows", None,
                            s["full_gc_pause_s"] * 1e3, "ms",
                            "never automatic (nfqueue.relax_gc); Enforcer.tick's hourly gc.collect()"))
    say(f"{section}: {GC_FLOWS:,} flows through a full table ({CHURN_TABLE:,}), 2,000/s simulated ...")
    c = _flow_bench(cmd, ["churn", "--table", str(CHURN_TABLE), "--flows", str(GC_FLOWS)], 300 * slow)
    if c:
        g = c["gc"]
        rows.append(Row(section, f"young GC backlog after {GC_FLOWS:,} flows through a full table", None,
                        c["young_collection_s"] * 1e3, "ms",
                        f"{c['young_objects']:,} objects waiting: the next young collection's pause; during "
                        f"the churn {g['collections']} collections, longest {g['max_pause_s'] * 1e3:.1f} ms"))
        rows.append(Row(section, f"longest handle()+tick() while {CHURN_TABLE:,} flows churn", None,
                        c["max_stall_s"] * 1e3, "ms", f"CPU {c['us_per_flow_cpu']:.1f} us per flow "
                        "(3 packets, quiet decision, eviction)"))
    return rows


# --- output -----------------------------------------------------------------------------------------


def machine() -> str:
    """CPU model, cores, kernel, Python: the table's first line."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "?")
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"


def render(rows: list[Row], header: str) -> str:
    """The one table."""
    cols = f"{'section':<10} {'metric':<48} {'baseline':>12} {'tunnelwatch':>12} {'unit':<7} {'ratio':>6}"
    out = [f"# {header}", f"{cols}  note",
           "-" * 130]
    for r in rows:
        ratio = f"{r.ratio:6.2f}" if r.ratio is not None else "     -"
        out.append(f"{r.section:<10} {r.metric:<48} {_fmt(r.baseline):>12} {_fmt(r.value):>12} {r.unit:<7} "
                   f"{ratio}  {r.note}")
    out.append("baseline: nfstream (offline) / the router without the daemon (router); ratio = tunnelwatch / "
               "baseline (pkt/s, Gbit/s, conn/s: higher is better; us: lower is better)")
    return "\n".join(out)


def main() -> int:
    """Parse arguments, run the sections, print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--quick", action="store_true", help="small, fast settings (a few minutes)")
    p.add_argument("--corpus", default="../shared/corpus/ndpi")
    p.add_argument("--only", default="offline,router,perflow,userspace", help="comma-separated sections")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--repeat", type=int, help="offline: corpus copies (default 20, quick 2)")
    p.add_argument("--runs", type=int, help="offline: timed runs each (default 3, quick 1)")
    p.add_argument("--rounds", type=int, help="router: without/with passes (default 3, quick 1)")
    p.add_argument("--seconds", type=int, help="router: iperf3 seconds per run (default 5, quick 2)")
    p.add_argument("--udp-rate", default="0", help="router: iperf3 -b for UDP (default 0: as fast as it can)")
    p.add_argument("--conns", type=int, help="router: connections per pass (default 2000, quick 500)")
    p.add_argument("--clients", type=int, default=4, help="router: parallel connection loops (default 4)")
    p.add_argument("--conn-seconds", type=int, default=60, help="router: bound on each connection loop")
    p.add_argument("--packets", type=int, default=16, help="router: packets per connection queued")
    p.add_argument("--conn-args", default=None,
                   help="perflow: options of bench/conn_bench.py, e.g. '--rates 2000,10000 --seconds 4'")
    p.add_argument("--mem-flows", type=int, help="perflow: undecided flows for bytes/flow (default 20000)")
    p.add_argument("--mix-conns", type=int, help="userspace: connections (default 20000, quick 5000)")
    p.add_argument("--max-flows", type=int, help="userspace: largest table (default 1000000, quick 100000)")
    p.add_argument("--scale-seconds", type=int, default=600, help="userspace: bound on the table fill")
    a = p.parse_args()
    q = a.quick
    a.repeat = a.repeat or (2 if q else 20)
    a.runs = a.runs or (1 if q else 3)
    a.rounds = a.rounds or (1 if q else 3)
    a.seconds = a.seconds or (2 if q else 5)
    a.conns = a.conns or (500 if q else 2000)
    a.mix_conns = a.mix_conns or (5000 if q else 20000)
    a.mem_flows = a.mem_flows or (5000 if q else 20000)
    if a.conn_args is None:
        a.conn_args = "--seconds 2 --mem-flows 5000 --profile-seconds 5" if q else ""
    if "--profile-out" not in a.conn_args:  # keep py-spy's raw stacks for a closer look (git-ignored build/)
        (HERE.parent / "build").mkdir(exist_ok=True)
        a.conn_args += f" --profile-out {HERE.parent / 'build' / 'pyspy-unknown.txt'}"
    a.max_flows = a.max_flows or (100_000 if q else 1_000_000)
    if not (1 <= a.repeat <= 50 and 1 <= a.runs <= 10 and 1 <= a.rounds <= 5 and 1 <= a.seconds <= 60
            and 1 <= a.conns <= 20000 and 1 <= a.clients <= 16 and 1 <= a.conn_seconds <= 300
            and 1 <= a.mix_conns <= 200_000 and 1 <= a.mem_flows <= 200_000
            and 10_000 <= a.max_flows <= 2_000_000 and 1 <= a.scale_seconds <= 3600):
        p.error("a bound was exceeded (see --help for the defaults)")
    sections = set(a.only.split(","))
    t0 = time.monotonic()
    rows: list[Row] = []
    if "offline" in sections:
        rows += offline(a.corpus, a.repeat, a.runs)
    if "router" in sections:
        rows += router(a)
    prof = None
    if "perflow" in sections:
        more, prof = perflow(a)
        rows += more
    if "userspace" in sections:
        rows += userspace(a)
    arm64 = ""
    if "userspace-arm64" in sections:
        rows += userspace_arm64(a)
        arm64 = "userspace-arm64 rows: arm64 (qemu-user), emulated on "
    header = f"{arm64}{machine()}; {'--quick' if q else 'full'} run, {time.monotonic() - t0:.0f} s"
    if a.json:
        json.dump({"machine": header, "rows": [{**r.__dict__, "ratio": r.ratio} for r in rows],
                   "profile": prof}, sys.stdout, indent=1)
        print()
    else:
        print(render(rows, header))
        if prof:
            print("\nprofile of the daemon (py-spy, unknown TCP case at saturation; the queue thread):")
            print(profile_summary.render(prof))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
