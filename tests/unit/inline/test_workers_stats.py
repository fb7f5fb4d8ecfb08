"""Multi-queue mode: workers' flow-table figures reach the main process apart from their decisions."""

from __future__ import annotations

import time

from tunnelwatch.config.runconfig import RunConfig
from tunnelwatch.inline.workers import _STATS, _Workers
from tunnelwatch.policy.registry import Registry
from tunnelwatch.record import FlowRecord


def test_drain_routes_figures_and_decisions() -> None:
    w = _Workers(RunConfig(), Registry())
    w.decisions.put(({_STATS: {"evicted": 3, "tracked": 10}, "queue": 5}, 0))
    rec = FlowRecord(1.0, "192.0.2.1", 40000, "198.51.100.7", 1194, "udp", "vpn_tunnel", "openvpn",
                     "confirmed", "block", "unregistered")
    w.decisions.put((rec, 2))
    records: list[FlowRecord] = []
    figures: list[tuple[int, dict[str, int]]] = []
    lost: list[int] = []
    deadline = time.monotonic() + 5
    while len(records) + len(figures) < 2 and time.monotonic() < deadline:  # the feeder thread's delivery
        w.drain(records.append, lost.append, lambda q, f: figures.append((q, f)))
    assert figures == [(5, {"evicted": 3, "tracked": 10})]
    assert records == [rec] and lost == [2]
