"""The daemon's Reporter with a real spool: which decided flows become which events, privacy before the
event is built, heartbeats with counters, a spool that cannot be opened, and the stop sequence."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tunnelwatch.appliance.state import StatusState
from tunnelwatch.config.runconfig import RunConfig, parse_config
from tunnelwatch.record import FlowRecord
from tunnelwatch.report.reporter import Reporter
from tunnelwatch.report.spool import Spool


def _cfg(tmp: Path, extra: str = "") -> RunConfig:
    # the uplink points at a closed loopback port: events stay in the spool for the test to read
    return parse_config(f"report:\n  state_dir: {tmp}\n  heartbeat: 1\n"
                        "  uplink: {url: 'https://127.0.0.1:9'}\n" + extra)


def _flow(**over: Any) -> FlowRecord:
    rec: dict[str, Any] = {"ts": time.time(), "src": "192.168.1.10", "sport": 40000, "dst": "198.51.100.7",
                           "dport": 1194, "transport": "udp", "klass": "vpn_tunnel", "protocol": "openvpn",
                           "confidence": "confirmed", "action": "block", "reason": "unregistered",
                           "evidence": ("P_CONTROL_HARD_RESET_CLIENT_V2",), "packets": 3, "bytes": 300,
                           "first_seen": time.time() - 1, "last_seen": time.time()}
    rec.update(over)
    return FlowRecord(**rec)


def _state() -> StatusState:
    return StatusState(device_id="tw-test", version="0", mode="enforce")


def _events(tmp: Path) -> list[dict[str, object]]:
    sp = Spool(str(tmp / "spool.db"))
    try:
        return [ev for _, ev in sp.peek(1000)]
    finally:
        sp.close()


def test_flow_kinds() -> None:
    assert _flow().kind == "flow_blocked"
    assert _flow(action="allow", registration_id="acme").kind == "registered_tunnel_used"
    assert _flow(action="report").kind == "flow_tagged"
    assert _flow(action="allow", klass="benign", protocol="tls").kind is None
    assert _flow(action="allow", klass="unknown").kind is None


def test_events_reach_the_spool_with_privacy_and_heartbeat(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "  privacy: {subscriber_addresses: hash, subscriber_nets: [192.168.1.0/24]}\n")
    rep = Reporter(cfg, _state(), "tw-test")
    rep.stop_wait = 1.0
    rep.start()
    rep.flow(_flow())
    rep.flow(_flow(action="allow", klass="benign", protocol="tls", dport=443))
    rep.flow(_flow(action="allow", registration_id="acme-vpn", reason="registered acme-vpn"))
    deadline = time.monotonic() + 10
    while not any(e["kind"] == "heartbeat" for e in _events(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    rep.stop("signal SIGTERM")
    evs = _events(tmp_path)
    kinds = [e["kind"] for e in evs]
    assert kinds[0] == "daemon_started" and kinds[-1] == "daemon_stopped"
    assert kinds.count("flow_blocked") == 1 and kinds.count("registered_tunnel_used") == 1
    assert "flow_tagged" not in kinds  # the benign flow is counted, not reported
    blocked = next(e for e in evs if e["kind"] == "flow_blocked")
    assert str(blocked["src"]).startswith("h:") and blocked["dst"] == "198.51.100.7"
    assert blocked["protocol"] == "openvpn" and blocked["confidence"] == "confirmed"
    assert (tmp_path / "privacy.key").stat().st_mode & 0o077 == 0
    used = next(e for e in evs if e["kind"] == "registered_tunnel_used")
    assert used["registration_id"] == "acme-vpn"
    beat = next(e for e in evs if e["kind"] == "heartbeat")
    assert beat["flows_by_klass"] == {"vpn_tunnel": 2, "benign": 1}
    assert beat["flows_by_action"] == {"block": 1, "allow": 2}


def test_an_unopenable_spool_degrades_but_never_raises(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    cfg = parse_config(f"report:\n  spool: {{path: {tmp_path / 'file' / 'spool.db'}}}\n"
                       "  uplink: {url: 'https://127.0.0.1:9'}\n")
    state = _state()
    rep = Reporter(cfg, state, "tw-test")
    rep.stop_wait = 1.0
    rep.start()
    rep.flow(_flow())
    rep.stop("signal SIGTERM")
    assert rep.spool is None and rep.degraded is not None
    assert state.snapshot()["report"] == rep.degraded  # health degrades on it (appliance/health.py)


def test_without_an_uplink_nothing_is_spooled(tmp_path: Path) -> None:
    rep = Reporter(parse_config(f"report: {{state_dir: {tmp_path}}}\n"), _state(), "tw-test")
    rep.start()
    rep.flow(_flow())
    rep.stop("signal SIGTERM")
    assert not (tmp_path / "spool.db").exists()


def test_a_spool_that_cannot_be_written_holds_events_and_loses_none_when_it_recovers(
        tmp_path: Path, monkeypatch: Any) -> None:
    import sqlite3

    from tunnelwatch.report import reporter as reporting

    monkeypatch.setattr(reporting, "RETRY_EVERY", 0.05)
    state = _state()
    rep = Reporter(_cfg(tmp_path), state, "tw-test")
    rep.stop_wait = 1.0
    rep.start()
    assert rep.spool is not None
    real_put = rep.spool.put_many
    full = {"on": True, "failed": 0}

    def put_many(events: Any) -> None:
        if full["on"]:
            full["failed"] += 1
            raise sqlite3.OperationalError("database or disk is full")
        real_put(events)

    monkeypatch.setattr(rep.spool, "put_many", put_many)
    for port in range(20):
        rep.flow(_flow(sport=41000 + port))
    deadline = time.monotonic() + 10
    while full["failed"] < 3 and time.monotonic() < deadline:  # several retries while "full"
        time.sleep(0.02)
    assert full["failed"] >= 3 and str(state.snapshot()["report"]).startswith("spool write failing")
    full["on"] = False
    while state.snapshot()["report"] is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    rep.stop("signal SIGTERM")
    ports = sorted(int(str(e["sport"])) for e in _events(tmp_path) if e["kind"] == "flow_blocked")
    assert ports == list(range(41000, 41020))  # every event held through the outage arrived once
    assert state.snapshot()["report"] is None


def test_held_events_are_bounded_and_the_overflow_is_counted(tmp_path: Path, monkeypatch: Any) -> None:
    import sqlite3

    from tunnelwatch.report import reporter as reporting

    monkeypatch.setattr(reporting, "HOLD_MAX", 5)
    rep = Reporter(_cfg(tmp_path), _state(), "tw-test")
    rep.stop_wait = 0.5
    rep.start()
    assert rep.spool is not None

    def put_many(events: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(rep.spool, "put_many", put_many)
    for port in range(12):
        rep.flow(_flow(sport=42000 + port))
    deadline = time.monotonic() + 10
    while rep._drops < 7 and time.monotonic() < deadline:  # 12 flows + daemon_started - 5 held
        time.sleep(0.02)
    assert len(rep._held) == 5 and rep._drops >= 7
    rep.stop("signal SIGTERM")


def _run(tmp: Path, cfg: RunConfig, *recs: FlowRecord,
         events: tuple[tuple[str, dict[str, Any]], ...] = ()) -> list[dict[str, object]]:
    rep = Reporter(cfg, _state(), "tw-test")
    rep.stop_wait = 1.0
    rep.start()
    for rec in recs:
        rep.flow(rec)
    for kind, fields in events:
        rep.event(kind, **fields)
    deadline = time.monotonic() + 10
    while not any(e["kind"] == "heartbeat" for e in _events(tmp)) and time.monotonic() < deadline:
        time.sleep(0.1)
    rep.stop("signal SIGTERM")
    return _events(tmp)


def test_guesses_below_report_min_confidence_are_counted_not_reported(tmp_path: Path) -> None:
    port = _flow(action="report", confidence="port", dport=5201, evidence=["openvpn port 1194"])
    heur = _flow(action="report", confidence="heuristic", protocol="wireguard")
    blocked_port = _flow(action="block", confidence="port")  # a block is always reported
    evs = _run(tmp_path, _cfg(tmp_path), port, heur, blocked_port)
    tagged = [e for e in evs if e["kind"] == "flow_tagged"]
    assert [e["confidence"] for e in tagged] == ["heuristic"]
    assert [e["confidence"] for e in evs if e["kind"] == "flow_blocked"] == ["port"]
    beat = next(e for e in evs if e["kind"] == "heartbeat")
    assert beat["flows_unreported"] == 1 and beat["flows_by_klass"] == {"vpn_tunnel": 3}


def test_report_min_confidence_port_reports_every_guess(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "  min_confidence: port\n")
    evs = _run(tmp_path, cfg, _flow(action="report", confidence="port"))
    assert [e["confidence"] for e in evs if e["kind"] == "flow_tagged"] == ["port"]


def test_an_event_with_control_characters_is_sent_sanitised_not_lost(tmp_path: Path) -> None:
    evs = _run(tmp_path, _cfg(tmp_path),
               events=(("registry_rejected", {"source": "sync", "reason": "HTTP 503 Down\x1b[2J\x07"}),))
    [rej] = [e for e in evs if e["kind"] == "registry_rejected"]
    assert rej["reason"] == "HTTP 503 Down\\x1b[2J\\x07"


def test_by_default_the_lan_host_is_a_pseudonym_and_the_server_stays_clear(tmp_path: Path) -> None:
    evs = _run(tmp_path, _cfg(tmp_path), _flow())  # no privacy section at all
    [blocked] = [e for e in evs if e["kind"] == "flow_blocked"]
    assert str(blocked["src"]).startswith("h:") and blocked["dst"] == "198.51.100.7"
    assert (tmp_path / "privacy.key").stat().st_mode & 0o077 == 0


def test_no_key_is_made_when_nothing_leaves_the_box(tmp_path: Path) -> None:
    rep = Reporter(parse_config(f"report: {{state_dir: {tmp_path}}}\n"), _state(), "tw-test")
    rep.stop_wait = 1.0
    rep.start()
    rep.stop("signal SIGTERM")
    assert not (tmp_path / "privacy.key").exists()


def test_counted_flows_reach_the_heartbeat_like_flows_without_an_event(tmp_path: Path) -> None:
    rep = Reporter(_cfg(tmp_path), _state(), "tw-test")
    rep.flow(_flow(klass="unknown", protocol="unknown", confidence="none", action="allow", evidence=[]))
    rep.count_flows("unknown", "allow", 4)
    rep.count_flows("benign", "allow", 2)
    beat = rep._heartbeat()
    assert beat["flows_by_klass"] == {"unknown": 5, "benign": 2} and beat["flows_by_action"] == {"allow": 7}
    assert rep._q.empty()  # no event for any of them
