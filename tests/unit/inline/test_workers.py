"""Multi-queue mode: workers' flow-table figures reach the main process apart from their decisions."""

from __future__ import annotations

import time

from tunnelwatch.config.runconfig import RunConfig, parse_config
from tunnelwatch.inline.workers import _STATS, _Workers, worker_config
from tunnelwatch.policy.registry import Registry
from tunnelwatch.record import FlowRecord


def test_drain_routes_figures_and_decisions() -> None:
    w = _Workers(RunConfig(), Registry())
    w.decisions.put(({_STATS: {"evicted": 3, "tracked": 10}, "queue": 5}, 0))
    rec = FlowRecord(1.0, "192.0.2.1", 40000, "198.51.100.7", 1194, "udp", "vpn_tunnel", "openvpn",
                     "confirmed", "block", "unregistered")
    w.decisions.put((rec, 2))
    records: list[FlowRecord] = []
    figures: list[tuple[int, dict[str, object]]] = []
    lost: list[int] = []
    deadline = time.monotonic() + 5
    while len(records) + len(figures) < 2 and time.monotonic() < deadline:  # the feeder thread's delivery
        w.drain(records.append, lost.append, lambda q, f: figures.append((q, f)))
    assert [(q, f[_STATS]) for q, f in figures] == [(5, {"evicted": 3, "tracked": 10})]
    assert records == [rec] and lost == [2]


def test_drain_takes_malformed_figures_without_a_queue_as_queue_0_and_ignores_garbage() -> None:
    w = _Workers(RunConfig(), Registry())
    w.decisions.put(({_STATS: "not figures", "queue": 1}, 0))
    w.decisions.put(({_STATS: {"evicted": 1}, "queue": "x"}, 4))
    figures: list[tuple[int, dict[str, object]]] = []
    lost: list[int] = []
    deadline = time.monotonic() + 5
    while not figures and time.monotonic() < deadline:  # the feeder thread's delivery
        w.drain(lambda rec: None, lost.append, lambda q, f: figures.append((q, f)))
    assert [(q, f[_STATS]) for q, f in figures] == [(0, {"evicted": 1})] and lost == [4]


def test_push_hands_the_new_config_to_every_worker_and_survives_a_dead_one() -> None:
    w = _Workers(RunConfig(), Registry())
    alive_recv, alive_send = w.ctx.Pipe(duplex=False)
    dead_recv, dead_send = w.ctx.Pipe(duplex=False)
    dead_recv.close()
    w.procs = {1: (None, dead_send), 2: (None, alive_send)}  # type: ignore[dict-item]
    cfg = parse_config("queue: {packets: 12}\n")
    reg = Registry()
    try:
        w.push(cfg, reg)
        assert alive_recv.poll(5)
        got_cfg, got_reg = alive_recv.recv()
        assert got_cfg == cfg and got_reg.entries == []
        assert w.cfg is cfg and w.registry is reg  # workers started later get it too
    finally:
        alive_recv.close()
        alive_send.close()
        dead_send.close()


def test_queue_flows_bounds_all_workers_together() -> None:
    for count, share in ((1, 1000), (2, 500), (3, 334), (64, 16)):
        cfg = parse_config(f"queue: {{count: {count}, flows: 1000}}\n")
        assert worker_config(cfg).flows == share
        assert share * count >= 1000 > (share - 1) * count  # the shares add up to the bound, rounded up
