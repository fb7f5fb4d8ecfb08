"""Accountable fail-open: kernel counters into status, heartbeat and the new_flow_limit event."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tunnelwatch.appliance.metrics import render_metrics
from tunnelwatch.appliance.state import StatusState
from tunnelwatch.appliance.statuspage import render_html, render_summary
from tunnelwatch.config.runconfig import ConfigError, parse_config, summary
from tunnelwatch.inline import firewall, kernelstats
from tunnelwatch.report.heartbeat import fail_open_fields


@dataclass
class _Rules:
    spec: firewall.Spec = field(default_factory=firewall.Spec)


def test_counters_reach_the_status_and_a_flood_trip_is_reported_once_a_minute(
        monkeypatch: pytest.MonkeyPatch) -> None:
    figures = {"bypassed_packets": 0, "bypassed_flows": 0, "flood_dropped": 0}
    hosts: list[str] = []
    monkeypatch.setattr(firewall, "counters", lambda spec: dict(figures))
    monkeypatch.setattr(firewall, "limited_hosts", lambda spec: list(hosts))
    state = StatusState(device_id="d", version="v", mode="enforce")
    events: list[tuple[str, dict[str, Any]]] = []
    ks = kernelstats.KernelStats(_Rules(), state, lambda kind, **f: events.append((kind, f)))
    ks.poll_once(now=0.0)
    kernel = state.snapshot()["kernel"]
    assert events == [] and isinstance(kernel, dict)
    assert {k: kernel[k] for k in (*figures, "limited_hosts")} == {**figures, "limited_hosts": []}
    assert isinstance(kernel["queue_packets"], int) and isinstance(kernel["queue_dropped"], int)
    figures.update(bypassed_packets=24, bypassed_flows=24, flood_dropped=300)
    hosts.append("198.51.100.7")
    ks.poll_once(now=1.0)
    assert events == [("new_flow_limit", {"dropped": 300, "limit": 500, "src": "198.51.100.7", "hosts": 1})]
    figures["flood_dropped"] = 500
    ks.poll_once(now=30.0)  # still flooding: the next event waits for the minute to pass
    assert len(events) == 1
    ks.poll_once(now=62.0)
    assert events[-1][1]["dropped"] == 200  # the drops since the previous event
    figures["flood_dropped"] = 50  # a reload re-installed the rules: the kernel counts from 0 again
    ks.poll_once(now=130.0)
    assert events[-1][1]["dropped"] == 50 and len(events) == 3
    figures["flood_dropped"] = 500
    ks.poll_once(now=131.0)  # within the minute: no event, the status follows
    assert len(events) == 3
    snap = state.snapshot()
    text = render_summary(snap)
    assert "24 packets of 24 connections passed without a verdict; 500 new connections dropped" in text
    assert "over it now: 198.51.100.7" in text
    assert "tunnelwatch_failopen_packets_total 24" in render_metrics(snap)
    assert "tunnelwatch_flood_dropped_connections_total 500" in render_metrics(snap)
    assert '<span id="flood-dropped">500</span>' in render_html(snap)
    state.set(flows={"evicted": 7, "tracked": 1})
    assert fail_open_fields(state.snapshot()) == {"bypassed_packets": 24, "bypassed_flows": 24,
                                            "flood_dropped": 500, "flows_evicted": 7}


def test_the_new_connection_limit_is_configurable_and_checked() -> None:
    cfg = parse_config("queue: {new_flow_rate: 50, new_flow_burst: 80}\n")
    assert (cfg.new_flow_rate, cfg.new_flow_burst) == (50, 80)
    assert "new connections per host: 50/s (burst 80)" in summary(cfg)[0]
    assert "unlimited" in summary(parse_config("queue: {new_flow_rate: 0}\n"))[0]
    assert parse_config("log: {level: info}\n").new_flow_rate == 500
    with pytest.raises(ConfigError) as exc:
        parse_config("queue: {new_flow_rate: many, new_flow_burst: 0}\n", "t.yaml")
    problems = exc.value.problems
    assert any(p.startswith("t.yaml:1:24: queue.new_flow_rate") for p in problems), problems
    assert any("queue.new_flow_burst must be between 1" in p for p in problems)
