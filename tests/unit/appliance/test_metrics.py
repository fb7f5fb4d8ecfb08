"""Prometheus metrics from a status snapshot: the text format line by line, the conventions (counters end in
_total, help texts say what is counted, no display strings as labels), the figures a NOC needs, and
promtool (Debian's prometheus package) finding nothing to complain about."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from support.netns import require_tools
from tunnelwatch.appliance.metrics import metric_name, render_metrics
from tunnelwatch.appliance.state import StatusState
from tunnelwatch.record import FlowRecord


def _rec(**kw: Any) -> FlowRecord:
    base: dict[str, Any] = {
        "ts": 1700000000.0, "src": "192.0.2.10", "sport": 51000, "dst": "198.51.100.7", "dport": 1194,
        "transport": "udp", "klass": "vpn_tunnel", "protocol": "openvpn", "confidence": "confirmed",
        "action": "block", "reason": "unregistered"}
    base.update(kw)
    return FlowRecord(**base)


def _state() -> StatusState:
    st = StatusState(device_id="cpe-42", version="0.1.0", mode="enforce")
    st.set(health="ok", registry_version="sha256:abc (3 entries)", uplink_backlog=5, queues=2)
    st.record_decision(_rec())
    st.record_decision(_rec(klass="benign", protocol="tls", action="allow", dport=443))
    st.record_decision(_rec(klass="voip", protocol="sip", action="report", dport=5060, reason="voip: report"))
    return st


def _full_state() -> StatusState:
    st = _state()
    st.set(flows={"tracked": 12, "max": 65536, "created": 900, "expired": 880, "evicted": 3,
                  "classifier_errors": 1, "unparsed_packets": 0, "reopened": 4, "late_blocks": 0,
                  "reused": 2, "retransmits": 5},
           kernel={"bypassed_packets": 24, "bypassed_flows": 7, "flood_dropped": 500, "queue_packets": 4000,
                   "queue_dropped": 9, "limited_hosts": ["192.168.1.9"]},
           registry_entries=3, registry_active=2, registry_next_expiry=1798761600.0, last_reload=1700000100.0,
           spool_max_events=1000000, health_reasons=["flow table full: 3 flow(s) forgotten"])
    st.count("config_rejected", reason="invalid")
    return st


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? (\S+)$')


def _parse_metrics(text: str) -> dict[str, list[tuple[str, float]]]:
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter") and name not in types
            types[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, f"bad sample line: {line!r}"
        name = m.group(1)
        assert name in types, f"sample before its TYPE: {line!r}"
        if types[name] == "counter":
            assert name.endswith("_total")
        samples.setdefault(name, []).append((m.group(2) or "", float(m.group(5))))
    return samples


def test_metrics_format_line_by_line() -> None:
    st = _state()
    st.set(device_id='quote"back\\slash\nnewline')
    st.count("uplink_errors", 3)
    samples = _parse_metrics(render_metrics(st.snapshot()))
    assert samples["tunnelwatch_up"] == [("", 1.0)]
    ((labels, one),) = samples["tunnelwatch_info"]
    assert one == 1.0 and 'mode="enforce"' in labels and 'version="0.1.0"' in labels
    assert r'device_id="quote\"back\\slash\nnewline"' in labels
    flows = dict(samples["tunnelwatch_flows_total"])
    assert flows['{action="block",klass="vpn_tunnel"}'] == 1.0
    assert flows['{action="allow",klass="benign"}'] == 1.0
    assert samples["tunnelwatch_uplink_errors_total"] == [("", 3.0)]
    assert samples["tunnelwatch_uplink_backlog_events"] == [("", 5.0)]
    assert dict(samples["tunnelwatch_health"])['{state="ok"}'] == 1.0
    assert samples["tunnelwatch_config_ok"] == [("", 1.0)]


def test_metrics_up_is_zero_while_starting_and_backlog_absent_when_unknown() -> None:
    st = StatusState(device_id="d", version="v", mode="monitor", config_check="2 problems")
    samples = _parse_metrics(render_metrics(st.snapshot()))
    assert samples["tunnelwatch_up"] == [("", 0.0)]
    assert samples["tunnelwatch_config_ok"] == [("", 0.0)]
    assert "tunnelwatch_uplink_backlog_events" not in samples


def test_metric_names_are_made_valid() -> None:
    assert metric_name("uplink-errors.total") == "uplink_errors_total"
    assert metric_name("5xx") == "_5xx"
    assert metric_name("") == "_"
    assert _SAMPLE.match(f"{metric_name('ünïcode name')} 1")


def test_the_noc_figures_are_there() -> None:
    samples = _parse_metrics(render_metrics(_full_state().snapshot()))
    want = {"tunnelwatch_flow_table_flows": 12.0, "tunnelwatch_flow_table_capacity_flows": 65536.0,
            "tunnelwatch_flow_table_evictions_total": 3.0, "tunnelwatch_classifier_errors_total": 1.0,
            "tunnelwatch_failopen_packets_total": 24.0, "tunnelwatch_failopen_connections_total": 7.0,
            "tunnelwatch_flood_dropped_connections_total": 500.0,
            "tunnelwatch_queue_dropped_packets_total": 9.0,
            "tunnelwatch_registry_entries": 3.0, "tunnelwatch_registry_active_entries": 2.0,
            "tunnelwatch_registry_next_expiry_timestamp_seconds": 1798761600.0,
            "tunnelwatch_last_reload_timestamp_seconds": 1700000100.0, "tunnelwatch_health_problems": 1.0,
            "tunnelwatch_reused_tuples_total": 2.0, "tunnelwatch_tcp_retransmits_total": 5.0}
    assert {k: samples[k][0][1] for k in want} == want
    assert samples["tunnelwatch_config_rejected_total"] == [('{reason="invalid"}', 1.0)]
    info = samples["tunnelwatch_info"][0][0]
    assert "registry_version" not in info and "sha256" not in info  # a display string is no label


def test_every_family_has_a_specific_help_text() -> None:
    text = render_metrics(_full_state().snapshot())
    helps = re.findall(r"^# HELP (\S+) (.*)$", text, re.M)
    assert len(helps) == len(set(n for n, _ in helps)) > 20
    assert not [n for n, h in helps if h.startswith("Current ")]


def test_promtool_finds_nothing_to_say() -> None:
    require_tools("promtool")  # Debian's prometheus package; CI installs it (TEST_PKGS)
    text = render_metrics(_full_state().snapshot())
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_the_shipped_grafana_dashboard_uses_only_metrics_we_export() -> None:
    path = Path(__file__).resolve().parents[3] / "config" / "grafana" / "tunnelwatch-fleet.json"
    dash = json.loads(path.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set(re.findall(r"\b(tunnelwatch_[a-z_]+)", " ".join(exprs)))
    exported = set(_parse_metrics(render_metrics(_full_state().snapshot())))
    assert used and used <= exported, used - exported
