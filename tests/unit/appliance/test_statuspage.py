"""The status page, summary and metrics rendered from a snapshot: Prometheus text format line by line,
HTML that escapes everything and loads nothing external, a terminal-safe summary."""

from __future__ import annotations

import re
from typing import Any

from tunnelwatch.appliance import statuspage
from tunnelwatch.appliance.state import StatusState
from tunnelwatch.record import FlowRecord

HOSTILE = '<script>alert("x")</script>&\x1b[31m'


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





def test_html_escapes_everything() -> None:
    st = StatusState(device_id=HOSTILE, version="v", mode=HOSTILE)
    st.record_decision(_rec(reason=HOSTILE, src=HOSTILE))
    page = statuspage.render_html(st.snapshot())
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page  # no external assets


def test_summary_is_terminal_safe() -> None:
    st = _state()
    st.record_decision(_rec(reason=HOSTILE))
    text = statuspage.render_summary(st.snapshot())
    assert "\x1b" not in text and "health:           ok" in text
    assert "2024-06-01.3" in text and "2 block, 1 report" in text


def test_endpoint_brackets_ipv6_and_leaves_a_missing_port_out() -> None:
    assert statuspage.endpoint("192.0.2.1", 443) == "192.0.2.1:443"
    assert statuspage.endpoint("2001:db8::1", 443) == "[2001:db8::1]:443"
    assert statuspage.endpoint("192.0.2.1", None) == "192.0.2.1"
    assert statuspage.endpoint(None, None) == ""


def test_duration_and_when_take_odd_values() -> None:
    assert statuspage.duration(7) == "0m 07s"
    assert statuspage.duration(3 * 3600 + 4 * 60) == "3h 04m"
    assert statuspage.duration(2 * 86400 + 3 * 3600 + 4 * 60 + 5) == "2d 3h 04m"
    for bad in (-1, float("nan"), float("inf"), "12", None):
        assert statuspage.duration(bad) == "?"
    assert statuspage.when(None) == "" and statuspage.when("yesterday") == "yesterday"
    assert statuspage.when(float("nan")) == "nan" and statuspage.when(True) == "True"
    assert statuspage.when(1e30) == "1e+30"  # beyond the calendar: shown as given, no exception
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", statuspage.when(1_700_000_000))


def test_summary_without_flows_says_so_and_unknown_backlog_is_na() -> None:
    st = StatusState(device_id="d", version="v", mode="monitor")
    text = statuspage.render_summary(st.snapshot())
    assert "flows decided:    none yet" in text
    assert "uplink backlog:   n/a" in text
    assert text.endswith("recent tagged/blocked flows: none\n")


def test_summary_limit_keeps_the_newest_rows() -> None:
    st = StatusState(device_id="d", version="v", mode="enforce")
    for port in range(10):
        st.record_decision(_rec(dport=1000 + port))
    text = statuspage.render_summary(st.snapshot(), limit=3)
    assert "recent tagged/blocked flows (newest 3):" in text
    assert "198.51.100.7:1009" in text and "198.51.100.7:1007" in text and "198.51.100.7:1006" not in text


def test_html_page_refreshes_and_lists_the_recent_flows() -> None:
    page = statuspage.render_html(_state().snapshot(), refresh=17)
    assert 'content="17"' in page
    assert "198.51.100.7:1194" in page and "openvpn" in page and "sip" in page
    assert "unauthorized" not in page.lower()
    assert "Authorization: Bearer" in statuspage.render_unauthorized()
