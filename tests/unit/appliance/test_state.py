"""The status state: fields, counters and recent decisions, bounded and JSON-able."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tunnelwatch.appliance import statuspage
from tunnelwatch.appliance.state import MAX_LABEL_SETS, RECENT_MAX, StatusState
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
    st.set(health="ok", registry_version="2024-06-01.3", uplink_backlog=5, queues=2)
    st.record_decision(_rec())
    st.record_decision(_rec(klass="benign", protocol="tls", action="allow", dport=443))
    st.record_decision(_rec(klass="voip", protocol="sip", action="report", dport=5060, reason="voip: report"))
    return st



def test_snapshot_holds_fields_recent_flagged_flows_and_counters() -> None:
    snap = _state().snapshot()
    assert (snap["health"], snap["mode"], snap["registry_version"], snap["uplink_backlog"]) == (
        "ok", "enforce", "2024-06-01.3", 5)
    recent = snap["recent"]
    assert isinstance(recent, list)
    # newest first; the allowed benign flow is counted but not listed
    assert [r["protocol"] for r in recent] == ["sip", "openvpn"]
    assert statuspage.flow_totals(snap) == {("vpn_tunnel", "block"): 1, ("benign", "allow"): 1,
                                            ("voip", "report"): 1}
    json.dumps(snap)  # JSON-able


def test_recent_is_bounded_and_keeps_only_the_page_columns() -> None:
    st = StatusState(device_id="d", version="v", mode="monitor")
    for i in range(RECENT_MAX + 50):
        st.record_decision(_rec(sport=i, evidence=tuple(f"fact {n}" for n in range(10))))
    recent = st.snapshot()["recent"]
    assert isinstance(recent, list) and len(recent) == RECENT_MAX
    assert recent[0]["sport"] == RECENT_MAX + 49
    assert recent[0]["evidence"] == ["fact 0", "fact 1", "fact 2"] and "packets" not in recent[0]


def test_set_rejects_reserved_fields_and_stringifies_odd_values() -> None:
    st = StatusState(device_id="d", version="v", mode="monitor")
    with pytest.raises(ValueError):
        st.set(recent=[])
    st.set(extra=Path("/x"))
    assert st.snapshot()["extra"] == "/x"


def test_counters_add_per_label_set_and_drop_the_total_suffix() -> None:
    st = StatusState(device_id="d", version="v", mode="monitor")
    st.count("uplink_errors_total", 2, kind="tls")
    st.count("uplink_errors", kind="tls")
    st.count("uplink_errors", 5, kind="http")
    counters = st.snapshot()["counters"]
    assert counters == [{"name": "uplink_errors", "labels": {"kind": "http"}, "value": 5},
                        {"name": "uplink_errors", "labels": {"kind": "tls"}, "value": 3}]


def test_label_sets_per_counter_are_capped_but_known_ones_keep_counting() -> None:
    st = StatusState(device_id="d", version="v", mode="monitor")
    for i in range(MAX_LABEL_SETS + 10):
        st.count("junk", host=str(i))
    st.count("junk", host="0")
    series = [c for c in st.snapshot()["counters"] if c["name"] == "junk"]  # type: ignore[union-attr]
    assert len(series) == MAX_LABEL_SETS
    assert {"name": "junk", "labels": {"host": "0"}, "value": 2} in series


def test_decisions_without_a_time_or_with_long_text_are_kept_safely() -> None:
    st = StatusState(device_id="d", version="v", mode="enforce")
    st.record_decision(_rec(ts=None, reason="r" * 1000))
    (row,) = st.snapshot()["recent"]  # type: ignore[misc]
    assert isinstance(row["ts"], float) and row["ts"] > 1_700_000_000
    assert len(row["reason"]) == 200


def test_snapshot_is_a_copy_with_uptime() -> None:
    st = _state()
    snap = st.snapshot()
    snap["recent"].clear()  # type: ignore[union-attr]
    snap["health"] = "changed"
    again = st.snapshot()
    assert len(again["recent"]) == 2 and again["health"] == "ok"  # type: ignore[arg-type]
    assert isinstance(again["uptime_s"], float) and again["uptime_s"] >= 0.0
    assert again["now"] >= again["started"]  # type: ignore[operator]


def test_nested_values_become_json_and_deep_ones_text() -> None:
    st = StatusState(device_id="d", version="v", mode="monitor")
    st.set(kernel={"limited_hosts": ("198.51.100.7",), 3: Path("/x")}, deep=[[[[[["x"]]]]]])
    snap = st.snapshot()
    assert snap["kernel"] == {"limited_hosts": ["198.51.100.7"], "3": "/x"}
    json.dumps(snap)
    assert isinstance(json.loads(json.dumps(snap["deep"]))[0][0][0][0], str)


def test_reserved_field_is_refused_before_any_field_changes() -> None:
    st = StatusState(device_id="d", version="v", mode="monitor")
    with pytest.raises(ValueError, match="uptime_s"):
        st.set(health="ok", uptime_s=3)
    assert st.snapshot()["health"] == "starting"
