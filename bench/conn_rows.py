"""conn_bench.py's table: medians over rounds of each load point, without the daemon, with it, and with a
floor consumer (nfq_floor.py). Kept apart from the lab so the arithmetic can be tested without root."""

from __future__ import annotations

import statistics
from typing import Any

#: (metric, unit, baseline, with daemon, note, case)
Row = tuple[str, str, float | None, float | None, str, str]


def _mode(p: dict[str, Any]) -> str:
    """A point's mode; points written before floors existed have only the daemon flag."""
    return str(p.get("mode") or ("daemon" if p["daemon"] else "none"))


def table_rows(result: dict[str, Any], qpaths: dict[str, int]) -> list[Row]:
    """(metric, unit, baseline, with daemon, note) rows: the medians over rounds of each point."""
    rows: list[Row] = []
    pts = result["points"]

    def med(case: str, load: str, daemon: bool, fn: Any) -> float | None:
        want = "daemon" if daemon else "none"  # a floor consumer's points are neither
        vals = [fn(p) for p in pts if p["case"] == case and p["load"] == load and _mode(p) == want]
        vals = [v for v in vals if v is not None]
        return float(statistics.median(vals)) if vals else None

    def rate(p: dict[str, Any]) -> float:
        return float(p["res"].get("rate", 0.0))

    def fails(p: dict[str, Any]) -> int:
        r = p["res"]
        return int(r.get("failed", 0)) + int(r.get("timeouts", 0))  # in flight at the deadline: not failed

    cases = list(dict.fromkeys(p["case"] for p in pts))
    for case in cases:
        qpath = qpaths.get(case, 2)
        for load in result["loads"]:
            b, w = med(case, load, False, rate), med(case, load, True, rate)
            dpts = [p for p in pts if p["case"] == case and p["load"] == load and _mode(p) == "daemon"]
            fb = sum(fails(p) for p in pts if p["case"] == case and p["load"] == load and _mode(p) == "none")
            fw = sum(fails(p) for p in dpts)
            byp = sum(p["bypassed_flows"] for p in dpts)
            bpk = sum(p["bypassed_packets"] for p in dpts)
            ok = sum(p["res"].get("ok", 0) for p in dpts) or 1
            q = sum(p["queued"] for p in dpts) / ok
            cpu = sum(p["cpu_s"] for p in dpts)
            busy = cpu / max(1e-9, sum(p["res"].get("elapsed", 0.0) for p in dpts))
            nfq = sum(p["nfq_dropped"] for p in dpts)
            ctd = sum(p["ct_drops"] for p in pts
                      if p["case"] == case and p["load"] == load and _mode(p) in ("none", "daemon"))
            extra = (f"; nfq drops {nfq}" if nfq else "") + (f"; conntrack drops {ctd}" if ctd else "")
            mb = med(case, load, False, lambda p: p["machine_busy"])
            mw = med(case, load, True, lambda p: p["machine_busy"])
            extra += f"; CPUs busy {mb or 0:.0%}/{mw or 0:.0%}"
            what = "offered " + load if load != "sat" else f"saturation, {result['concurrency']} in flight"
            rows.append((f"{case}: new conns/s, {what}", "conn/s", b, w,
                         f"failed {fb}/{fw}; bypassed {byp} flows ({bpk} pkts); {q:.2f} pkts queued/flow; "
                         f"daemon CPU {busy * 100:.0f}%{extra}", case))
            rows.append((f"{case}: daemon CPU per new flow, {load}", "us", None, cpu / ok * 1e6,
                         f"user {sum(p['user_s'] for p in dpts) / ok * 1e6:.1f} us", case))
        rows += floor_rows(result, case, qpath)
        # latency at the lowest fixed load (not saturated)
        low = result["loads"][0]
        for qn in ("50", "99"):
            b = med(case, low, False, lambda p, qn=qn: p["res"].get(f"rtt_p{qn}_us"))
            w = med(case, low, True, lambda p, qn=qn: p["res"].get(f"rtt_p{qn}_us"))
            add = (f"+{(w - b) / qpath:.0f} us per queued packet ({qpath} queued on the path)"
                   if b is not None and w is not None else "")
            rows.append((f"{case}: request->reply p{qn} at {low}", "us", b, w, add, case))
    mem = result.get("memory")
    if mem and mem.get("bytes_per_flow") is not None:
        rows.append((f"daemon RSS growth per undecided flow ({mem['flows_ok']:,} flows)", "bytes", None,
                     mem["bytes_per_flow"],
                     f"RSS {mem['rss_before'] / 2**20:.1f} -> {mem['rss_after'] / 2**20:.1f} MiB; table "
                     f"{mem['tracked_before']} -> {mem['tracked_after']} flows", "memory"))
    return rows


def floor_rows(result: dict[str, Any], case: str, qpath: int) -> list[Row]:
    """Per load point of a floor consumer: its CPU per new flow (rate and packets queued in the note)."""
    rows: list[Row] = []
    for mode in dict.fromkeys(p.get("mode", "") for p in result["points"]):
        if not mode.startswith("floor-"):
            continue
        for load in result["loads"]:
            fp = [p for p in result["points"]
                  if p["case"] == case and p["load"] == load and p.get("mode") == mode]
            ok = sum(p["res"].get("ok", 0) for p in fp)
            if not ok:
                continue
            cpu = sum(p["cpu_s"] for p in fp)
            rate = statistics.median(float(p["res"].get("rate", 0.0)) for p in fp)
            q = sum(p["queued"] for p in fp) / ok
            byp = sum(p["bypassed_flows"] for p in fp)
            rows.append((f"{case}: {mode} CPU per new flow, {load}", "us", None, cpu / ok * 1e6,
                         f"user {sum(p['user_s'] for p in fp) / ok * 1e6:.1f} us; {rate:,.0f} conn/s; "
                         f"{q:.2f} pkts queued/flow; bypassed {byp} flows", case))
        low = result["loads"][0]
        base = [p["res"].get("rtt_p50_us") for p in result["points"]
                if p["case"] == case and p["load"] == low and _mode(p) == "none"]
        lat = [p["res"].get("rtt_p50_us") for p in result["points"]
               if p["case"] == case and p["load"] == low and p.get("mode") == mode]
        base, lat = [v for v in base if v is not None], [v for v in lat if v is not None]
        if base and lat:
            b, w = float(statistics.median(base)), float(statistics.median(lat))
            rows.append((f"{case}: {mode} request->reply p50 at {low}", "us", b, w,
                         f"+{(w - b) / qpath:.0f} us per queued packet", case))
    return rows
