"""Health degrades, with its reason first, for each fault the status state shows, and recovers."""

from __future__ import annotations

from typing import Any

from tunnelwatch.appliance.health import Health

T0 = 1_000_000.0


def _snap(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"health": "ok", "config_check": "ok", "report": None, "uplink_last_error": None,
                            "uplink_backlog": 0, "spool_max_events": 1000,
                            "kernel": {"bypassed_flows": 0, "flood_dropped": 0},
                            "flows": {"evicted": 0, "classifier_errors": 0}}
    base.update(kw)
    return base


def test_all_quiet_is_ok() -> None:
    h = Health()
    assert h.assess(_snap(), T0) == ("ok", [])
    assert h.assess(_snap(), T0 + 3600) == ("ok", [])


def test_refused_reload_and_reporting_faults_degrade_at_once() -> None:
    h = Health()
    state, why = h.assess(_snap(config_check="reload refused at 12:00: tw.yaml:3:1: unknown key"), T0)
    assert state == "degraded" and why[0].startswith("configuration: reload refused")
    state, why = h.assess(_snap(report="spool write failing: disk full"), T0)
    assert state == "degraded" and why == ["reporting: spool write failing: disk full"]


def test_uplink_failing_degrades_only_after_the_grace_and_recovers() -> None:
    h = Health(uplink_grace=600)
    failing = _snap(uplink_last_error="collector refused the connection (down?)")
    assert h.assess(failing, T0) == ("ok", [])
    assert h.assess(failing, T0 + 599)[0] == "ok"
    state, why = h.assess(failing, T0 + 660)
    assert state == "degraded"
    assert why == ["uplink failing for 11 min: collector refused the connection (down?)"]
    assert h.assess(_snap(), T0 + 700) == ("ok", [])
    assert h.assess(failing, T0 + 710)[0] == "ok"  # a new outage starts a new grace


def test_a_short_uplink_grace_reports_seconds() -> None:
    h = Health(uplink_grace=3)
    failing = _snap(uplink_last_error="refused")
    assert h.assess(failing, T0) == ("ok", [])
    assert h.assess(failing, T0 + 4) == ("degraded", ["uplink failing for 4 s: refused"])


def test_spool_near_its_bound() -> None:
    state, why = Health().assess(_snap(uplink_backlog=850), T0)
    assert state == "degraded" and why[0].startswith("spool 85% full (850 of 1000 events waiting)")


def test_rising_counters_degrade_for_a_window_then_are_history() -> None:
    h = Health(window=600)
    assert h.assess(_snap(), T0)[0] == "ok"
    causes = {("kernel", "bypassed_flows"): "fail-open: 7 connection(s)",
              ("kernel", "flood_dropped"): "flood: 7 new connection(s)",
              ("flows", "evicted"): "flow table full: 7 flow(s)",
              ("flows", "classifier_errors"): "classifier errors: 7"}
    for (section, name), text in causes.items():
        h = Health(window=600)
        h.assess(_snap(), T0)
        snap = _snap()
        snap[section] = dict(snap[section], **{name: 7})
        state, why = h.assess(snap, T0 + 10)
        assert state == "degraded" and len(why) == 1 and why[0].startswith(text), (name, why)
        assert h.assess(snap, T0 + 500)[0] == "degraded"  # still within the window
        assert h.assess(snap, T0 + 700) == ("ok", [])  # the counter stood still for 10 minutes


def test_registry_sync_failure() -> None:
    state, why = Health().assess(_snap(registry_sync_error="signature does not verify"), T0)
    assert state == "degraded" and why == ["registry sync: signature does not verify"]
    # the syncer's fetch errors already start with "registry sync: " (regsync.py): said once
    _, why = Health().assess(_snap(registry_sync_error="registry sync: cannot fetch: refused"), T0)
    assert why == ["registry sync: cannot fetch: refused"]


def test_hostile_snapshot_values_never_raise() -> None:
    odd = _snap(kernel="x", flows={"evicted": "many", "classifier_errors": True}, uplink_backlog="1",
                spool_max_events=0, health_reasons=None)
    assert Health().assess(odd, T0) == ("ok", [])


def test_a_stale_registry_degrades_health_until_renewed() -> None:
    h = Health()
    why = "registry expired at 2027-01-15T08:00:00Z: the ISP has not sent a newer one"
    assert h.assess(_snap(registry_stale=why), T0) == ("degraded", [why])
    assert h.assess(_snap(registry_stale=None), T0 + 60) == ("ok", [])
