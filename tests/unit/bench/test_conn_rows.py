"""The per-flow bench's table arithmetic: baseline, daemon and floor points never mix."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import conn_rows


def _pt(mode: str, rate: float, *, ok: int = 1000, cpu: float = 0.0, user: float = 0.0, queued: int = 0,
        p50: float = 100.0) -> dict[str, Any]:
    return {"case": "unknown", "load": "2000/s", "daemon": mode == "daemon", "mode": mode, "cpu_s": cpu,
            "user_s": user, "queued": queued, "bypassed_packets": 0, "bypassed_flows": 0, "flood_dropped": 0,
            "nfq_dropped": 0, "ct_drops": 0, "machine_busy": 0.5,
            "res": {"ok": ok, "rate": rate, "elapsed": 1.0, "rtt_p50_us": p50, "rtt_p99_us": p50 * 2}}


def _rows(points: list[dict[str, Any]]) -> dict[str, conn_rows.Row]:
    result = {"points": points, "loads": ["2000/s"], "concurrency": 64}
    return {r[0]: r for r in conn_rows.table_rows(result, {"unknown": 2})}


def test_floor_points_stay_out_of_the_baseline_and_the_daemon_rows() -> None:
    rows = _rows([_pt("none", 2000.0, p50=100.0),
                  _pt("daemon", 1500.0, cpu=0.2, user=0.1, queued=3000, p50=500.0),
                  _pt("floor-c", 10.0, cpu=0.05, queued=2900, p50=300.0),
                  _pt("floor-c", 10.0, cpu=0.05, queued=2900, p50=300.0)])
    rate = rows["unknown: new conns/s, offered 2000/s"]
    assert rate[2:4] == (2000.0, 1500.0)
    assert rows["unknown: daemon CPU per new flow, 2000/s"][3] == 200.0
    assert rows["unknown: request->reply p50 at 2000/s"][2:4] == (100.0, 500.0)
    floor = rows["unknown: floor-c CPU per new flow, 2000/s"]
    assert floor[3] == 50.0  # 0.1 s over 2,000 flows
    assert "2.90 pkts queued/flow" in floor[4]
    lat = rows["unknown: floor-c request->reply p50 at 2000/s"]
    assert lat[2:4] == (100.0, 300.0) and "+100 us per queued packet" in lat[4]


def test_results_written_before_floors_existed_still_read() -> None:
    old = [_pt("none", 2000.0), _pt("daemon", 1000.0, cpu=0.1)]
    for p in old:
        del p["mode"]
    rows = _rows(old)
    assert rows["unknown: new conns/s, offered 2000/s"][2:4] == (2000.0, 1000.0)
    assert not any("floor" in k for k in rows)
