"""Multi-queue mode: workers' flow-table figures reach the main process apart from their decisions."""

from __future__ import annotations

import time

from tunnelwatch.config.runconfig import RunConfig
from tunnelwatch.inline.workers import _STATS, _Workers
from tunnelwatch.policy.registry import Registry


def test_drain_routes_figures_and_decisions() -> None:
    w = _Workers(RunConfig(), Registry())
    w.decisions.put(({_STATS: {"evicted": 3, "tracked": 10}, "queue": 5}, 0))
    w.decisions.put(({"action": "block", "protocol": "openvpn"}, 2))
    records: list[dict[str, object]] = []
    figures: list[tuple[int, dict[str, int]]] = []
    lost: list[int] = []
    deadline = time.monotonic() + 5
    while len(records) + len(figures) < 2 and time.monotonic() < deadline:  # the feeder thread's delivery
        w.drain(records.append, lost.append, lambda q, f: figures.append((q, f)))
    assert figures == [(5, {"evicted": 3, "tracked": 10})]
    assert records == [{"action": "block", "protocol": "openvpn"}] and lost == [2]
