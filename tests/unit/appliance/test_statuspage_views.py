"""The status page on a phone and for one host: what was done and why come first and carry their labels
(the narrow layout shows each flow as a card), a LAN-host filter, paging, and no reload by default."""

from __future__ import annotations

import re
from typing import Any

from tunnelwatch.appliance.state import StatusState
from tunnelwatch.appliance.statuspage import PAGE_SIZE, render_html
from tunnelwatch.appliance.statusweb import _page_params
from tunnelwatch.record import FlowRecord


def _state(n: int = 120) -> StatusState:
    st = StatusState(device_id="cpe-9", version="0", mode="enforce")
    for i in range(n):
        host = "192.168.1.20" if i % 2 else "192.168.1.30"
        st.record_decision(FlowRecord(1700000000.0 + i, host, 40000 + i, "203.0.113.7", 1194, "udp",
                                      "vpn_tunnel", "openvpn", "confirmed", "block", f"unregistered #{i}"))
    return st


def _rows(page: str) -> list[str]:
    return re.findall(r'<tr class="action-[a-z]+">(.*?)</tr>', page)


def test_action_and_reason_come_first_and_every_cell_is_labelled() -> None:
    page = render_html(_state(3).snapshot())
    head = re.findall(r"<th>(.*?)</th>", page.split('id="flows"')[1])
    assert head[:4] == ["time", "action", "protocol", "reason"] and "class" in head and "klass" not in head
    cells = re.findall(r'<td data-label="([a-z]+)">', _rows(page)[0])
    assert cells == head
    assert "@media (max-width:700px)" in page and "td::before{content:attr(data-label)" in page


def test_host_filter_and_paging_carry_the_token() -> None:
    snap = _state().snapshot()
    first = render_html(snap, token="T0k")
    assert len(_rows(first)) == PAGE_SIZE and "page 1 of 3" in first
    assert 'id="older" href="?page=1&amp;token=T0k"' in first and 'id="newer"' not in first
    last = render_html(snap, page=2, token="T0k")
    assert len(_rows(last)) == 120 - 2 * PAGE_SIZE and 'id="older"' not in last
    one = render_html(snap, host="192.168.1.20")
    rows = _rows(one)
    assert len(rows) == PAGE_SIZE and all("192.168.1.20:" in r for r in rows)
    assert "of 192.168.1.20" in one and 'id="all-hosts"' in one
    assert "No tagged or blocked flows of 10.9.9.9 yet" in render_html(snap, host="10.9.9.9")


def test_no_reload_unless_asked() -> None:
    snap = _state(1).snapshot()
    assert 'http-equiv="refresh"' not in render_html(snap)
    assert '<meta http-equiv="refresh" content="30">' in render_html(snap, refresh=30)


def test_page_parameters_are_bounded_and_hostile_ones_ignored() -> None:
    p: dict[str, Any] = _page_params("host=192.168.1.20&page=2&refresh=1&token=abc")
    assert p == {"host": "192.168.1.20", "page": 2, "refresh": 5, "token": "abc"}
    p = _page_params("host=%3Cscript%3E%20x&page=-3&refresh=abc")
    assert p["host"] == "" and p["page"] == 0 and p["refresh"] == 0
    page = render_html(_state(2).snapshot(), **_page_params("host=%22%3E%3Cb%3E&page=99999"))
    assert "<b>" not in page
