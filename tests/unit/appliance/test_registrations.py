"""The registry on the status page: customers, what they registered and until when; a registration ending
within 30 days is highlighted, an expired one marked, and hostile names are escaped."""

from __future__ import annotations

import datetime as dt
import re

from tunnelwatch.appliance.appliance import registry_figures
from tunnelwatch.appliance.registrations import registration_rows, render_registrations, standing
from tunnelwatch.appliance.state import StatusState
from tunnelwatch.appliance.statuspage import render_html
from tunnelwatch.policy.registry import Registry, parse_registry

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
_DOC = """registrations:
  - id: ACME-1
    customer: Acme Textiles
    protocols: [wireguard]
    servers: [198.51.100.7]
    lan_hosts: [192.168.1.20]
    valid_until: 2027-06-01
  - id: TEST-29
    customer: Test entry <b>bold</b>
    protocols: [openvpn, ipsec]
    servers: [203.0.113.9]
    valid_until: 2027-01-01
  - id: OLD-1
    customer: Gone Ltd
    protocols: [openvpn]
    servers: [203.0.113.10]
    valid_until: 2026-11-01
  - id: FOREVER
    customer: No End
    protocols: [wireguard]
    servers: [203.0.113.11]
"""


def _snap() -> dict[str, object]:
    st = StatusState(device_id="cpe-r", version="0", mode="enforce")
    st.set(**registry_figures(Registry(parse_registry(_DOC)), NOW))
    snap = st.snapshot()
    snap["now"] = NOW.timestamp()
    return snap


def test_rows_carry_customer_protocols_hosts_and_dates() -> None:
    rows = registration_rows(Registry(parse_registry(_DOC)))
    assert [r["id"] for r in rows] == ["ACME-1", "TEST-29", "OLD-1", "FOREVER"]
    assert rows[0]["customer"] == "Acme Textiles" and rows[0]["protocols"] == ["wireguard"]
    assert rows[0]["lan_hosts"] == ["192.168.1.20/32"] and rows[3]["valid_until"] is None
    # a date in the file means to the end of that day
    assert rows[1]["valid_until"] == dt.datetime(2027, 1, 2, tzinfo=dt.UTC).timestamp()


def test_standing_of_a_registration() -> None:
    now = NOW.timestamp()
    assert standing({"valid_until": now + 29.5 * 86400}, now)[0] == "expiring"
    assert "ends in 29 days" in standing({"valid_until": now + 29.5 * 86400}, now)[1]
    assert "ends today" in standing({"valid_until": now + 3600}, now)[1]
    assert standing({"valid_until": now + 31 * 86400}, now)[0] == ""
    assert standing({"valid_until": now - 1}, now)[0] == "expired"
    assert standing({"valid_from": now + 10, "valid_until": now + 99 * 86400}, now)[0] == "pending"
    assert standing({"valid_until": "garbage"}, now) == ("", "no end date")


def test_the_page_lists_customers_soonest_end_first_and_highlights_the_near_ones() -> None:
    page = render_html(_snap())
    section = page.split("<h2>Registered VPNs</h2>")[1]
    rows = re.findall(r'<tr class="reg ?([a-z]*)">(.*?)</tr>', section)
    customers = [re.findall(r"<td[^>]*>(.*?)</td>", r)[0] for _, r in rows]
    assert customers == ["Gone Ltd", "Test entry &lt;b&gt;bold&lt;/b&gt;", "Acme Textiles", "No End"]
    assert [cls for cls, _ in rows] == ["expired", "expiring", "", ""]
    assert "2027-01-01 23:59 UTC (ends in 29 days)" in rows[1][1]
    assert 'id="registrations-expiring"' in section and "2 registration(s)" in section
    assert "<b>" not in section


def test_no_registry_says_so() -> None:
    assert 'id="registrations">No registrations loaded.' in render_registrations({"now": 0})
    assert 'id="registrations">No registrations' in render_registrations({"registrations": "junk"})


def test_the_status_summary_names_the_registrations_ending_soon() -> None:
    from tunnelwatch.appliance.statuspage import render_summary

    text = render_summary(_snap())
    assert "  registrations:    4, 2 ended or ending within 30 days" in text
    assert "Gone Ltd (OLD-1): expired 2026-11-01 23:59 UTC" in text
    assert "Test entry <b>bold</b> (TEST-29): 2027-01-01 23:59 UTC (ends in 29 days)" in text
    assert "Acme" not in text
