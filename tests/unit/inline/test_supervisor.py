"""The Supervisor: reloads applied or refused (with the event reported), the hup flag, decided-flow counts
and the systemd status line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tunnelwatch.appliance.appliance import Appliance
from tunnelwatch.config.runconfig import RunConfig, load_config
from tunnelwatch.inline.firewall import FirewallError
from tunnelwatch.inline.supervisor import Supervisor
from tunnelwatch.policy.registry import Registry
from tunnelwatch.record import FlowRecord


def _flow(**over: Any) -> FlowRecord:
    rec: dict[str, Any] = {"ts": time.time(), "src": "192.168.1.10", "sport": 40000, "dst": "198.51.100.7",
                           "dport": 1194, "transport": "udp", "klass": "vpn_tunnel", "protocol": "openvpn",
                           "confidence": "confirmed", "action": "block", "reason": "unregistered",
                           "evidence": ("P_CONTROL_HARD_RESET_CLIENT_V2",), "packets": 3, "bytes": 300,
                           "first_seen": time.time() - 1, "last_seen": time.time()}
    rec.update(over)
    return FlowRecord(**rec)



class _FakeReporter:
    """Records what the supervisor reports."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []
        self.degraded = None
        self.applied: list[RunConfig] = []

    def event(self, kind: str, **fields: object) -> None:
        self.events.append((kind, fields))

    def flow(self, rec: dict[str, object]) -> None:
        self.events.append(("flow", rec))

    def apply(self, cfg: RunConfig) -> None:
        self.applied.append(cfg)


class _Null:
    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


def test_reloads_report_config_policy_and_rejections(tmp_path: Path) -> None:
    from tunnelwatch.appliance.appliance import Appliance
    from tunnelwatch.config.runconfig import load_config
    from tunnelwatch.inline.supervisor import Supervisor
    from tunnelwatch.policy.registry import Registry

    path = tmp_path / "tw.yaml"
    path.write_text("policy: {klass: {vpn_tunnel: monitor}}\nstatus: {socket: null}\n")
    cfg = load_config(path)
    fake = _FakeReporter()
    null: Any = _Null()
    sup = Supervisor(cfg, Registry(), path, null, Appliance(cfg, Registry()), null, lambda c, r: None,
                     reporter=fake)  # type: ignore[arg-type]
    path.write_text("policy: {klass: {vpn_tunnel: enforce}}\nstatus: {socket: null}\n"
                    "report: {heartbeat: 9}\n")
    sup.reload()
    kinds = [k for k, _ in fake.events]
    assert kinds == ["config_changed", "policy_changed"]
    changed = fake.events[0][1]
    assert changed["changes"] == ["klass", "report"] and len(str(changed["digest"])) == 64
    assert fake.applied and fake.applied[-1].report.heartbeat == 9
    path.write_text("policy: {klass: {vpn_tunel: enforce}}\n")
    sup.reload()
    kind, fields = fake.events[-1]
    assert kind == "config_rejected"
    errors = fields["errors"]
    assert isinstance(errors, list) and "vpn_tunel" in errors[0] and ":1:" in errors[0]
    sup.record(_flow())
    assert fake.events[-1][0] == "flow"


class _Rules:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.applied: list[RunConfig] = []

    def apply(self, cfg: RunConfig, registry: Registry) -> None:
        if self.fail:
            raise FirewallError("nft: permission denied")
        self.applied.append(cfg)

    def refresh(self) -> None:
        pass


def _supervisor(tmp_path: Path, text: str, rules: Any = None,
                path: Path | None = None) -> tuple[Supervisor, _FakeReporter, list[RunConfig]]:
    cfg_path = tmp_path / "tw.yaml"
    cfg_path.write_text(text)
    cfg = load_config(cfg_path)
    fake = _FakeReporter()
    handed: list[RunConfig] = []
    null: Any = _Null()
    sup = Supervisor(cfg, Registry(), cfg_path if path is None else path, rules or _Rules(),
                     Appliance(cfg, Registry()), null, lambda c, r: handed.append(c),
                     reporter=fake)  # type: ignore[arg-type]
    return sup, fake, handed


BASE = "policy: {klass: {vpn_tunnel: monitor}}\nstatus: {socket: null}\n"


def test_a_queue_change_needs_a_restart_and_the_running_config_stays(tmp_path: Path) -> None:
    sup, fake, handed = _supervisor(tmp_path, BASE)
    running = sup.cfg
    (tmp_path / "tw.yaml").write_text(BASE + "queue: {num: 7}\n")
    sup.reload()
    assert sup.cfg is running and handed == []
    kind, fields = fake.events[-1]
    assert kind == "config_rejected" and "queue.num" in str(fields["errors"]) and "restart" in str(
        fields["errors"])
    snap = sup.app.state.snapshot()
    assert str(snap["config_check"]).startswith("reload refused at ")
    assert {"name": "config_rejected", "labels": {"reason": "restart_needed"}, "value": 1} in snap["counters"]


def test_rules_that_cannot_be_installed_refuse_the_reload(tmp_path: Path) -> None:
    sup, fake, handed = _supervisor(tmp_path, BASE, rules=_Rules(fail=True))
    running = sup.cfg
    (tmp_path / "tw.yaml").write_text(BASE.replace("monitor", "enforce"))
    sup.reload()
    assert sup.cfg is running and handed == []
    kind, fields = fake.events[-1]
    assert kind == "config_rejected" and "permission denied" in str(fields["errors"])


def test_without_a_file_a_reload_is_refused(tmp_path: Path) -> None:
    sup, fake, _ = _supervisor(tmp_path, BASE)
    sup.path = None
    sup.reload()
    assert fake.events[-1][0] == "config_rejected"
    assert fake.events[-1][1]["errors"] == ["no configuration file to reload"]


def test_hup_makes_wake_due_at_once_and_reload(tmp_path: Path) -> None:
    rules = _Rules()
    sup, fake, handed = _supervisor(tmp_path, BASE, rules=rules)
    assert sup.timeout() > 0
    (tmp_path / "tw.yaml").write_text(BASE.replace("monitor", "enforce"))
    sup.hup = True
    assert sup.timeout() == 0.0
    sup.wake()
    assert not sup.hup and sup.reloads == 1
    assert handed and rules.applied and sup.cfg.klass["vpn_tunnel"].mode == "enforce"
    assert [k for k, _ in fake.events] == ["config_changed", "policy_changed"]


def test_status_text_counts_decided_and_blocked_flows(tmp_path: Path) -> None:
    sup, fake, _ = _supervisor(tmp_path, BASE)
    assert sup.status_text() == "monitoring: 0 flows decided, 0 blocked"
    sup.record(_flow())
    sup.record(_flow(action="report"))
    assert sup.status_text() == "monitoring: 2 flows decided, 1 blocked"
    assert [k for k, _ in fake.events] == ["flow", "flow"]
    assert len(sup.app.state.snapshot()["recent"]) == 2  # type: ignore[arg-type]


@pytest.mark.parametrize(("mode", "text"), [("enforce", "enforcing"), ("grace", "enforcing (grace)")])
def test_status_text_names_the_strongest_mode(tmp_path: Path, mode: str, text: str) -> None:
    extra = "\n      until: 2099-01-01" if mode == "grace" else ""
    sup, _, _ = _supervisor(tmp_path, f"policy:\n  klass:\n    vpn_tunnel:\n      mode: {mode}{extra}\n"
                                      "status: {socket: null}\n")
    assert sup.status_text().startswith(f"{text}: ")


def test_a_refused_reload_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tw.yaml"
    path.write_text("status: {socket: null}\n")
    cfg = load_config(path)
    null: Any = _Null()
    sup = Supervisor(cfg, Registry(), path, null, Appliance(cfg, Registry()), null, lambda c, r: None,
                     reporter=_FakeReporter())  # type: ignore[arg-type]
    path.write_text("policy: {klass: {vpn_tunel: enforce}}\nstatus: {socket: null}\n")
    caplog.set_level("DEBUG", "tunnelwatch")
    sup.reload()
    lines = [r.getMessage() for r in caplog.records if "reload #1 refused" in r.getMessage()
             or "event=config_rejected" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"reload #1 refused: {path} is invalid; keeping the running configuration: ")
    assert "vpn_tunel" in lines[0] and lines[0].endswith(" reason=invalid problems=1")
    assert "event=config_rejected reload=1 " in lines[0]


def test_tallied_decisions_reach_status_and_reporting_as_records_would(tmp_path: Path) -> None:
    from tunnelwatch.inline import supervisor as supervisor_mod
    from tunnelwatch.report.reporter import Reporter

    plain = [_flow(klass="unknown", protocol="unknown", confidence="none", action="allow", reason="not a "
                   "tunnel", evidence=()), _flow(klass="benign", protocol="http", confidence="confirmed",
                                                 action="allow", reason="not a tunnel", evidence=())]
    seen = []
    for tallied in (False, True):
        sup, _, _ = _supervisor(tmp_path, BASE)
        rep = Reporter(sup.cfg, sup.app.state, "tw-test")
        sup.reporter = rep
        for rec in plain * 3:
            if tallied:
                sup.tally(rec.klass, rec.action)
            else:
                sup.record(rec)
        assert sup.status_text() == "monitoring: 6 flows decided, 0 blocked"
        if tallied:  # handed over in bulk: at the next wake() once TALLY_EVERY passed
            sup.wake()
            assert sup.tallied
            sup.next_tally = time.monotonic() - supervisor_mod.TALLY_EVERY
            sup.wake()
            assert not sup.tallied
        snap = sup.app.state.snapshot()
        beat = rep._heartbeat()
        seen.append((snap["counters"], snap["recent"], beat["flows_by_klass"], beat["flows_by_action"]))
    assert seen[0] == seen[1]
    assert seen[1][2] == {"unknown": 3, "benign": 3} and seen[1][1] == []


def test_due_is_the_next_periodic_work_and_wake_moves_it_on(tmp_path: Path) -> None:
    from tunnelwatch.inline import supervisor as supervisor_mod

    sup, _, _ = _supervisor(tmp_path, BASE)
    assert sup.due == min(sup.next_tick, sup.next_status, sup.next_tally)  # no watchdog here
    assert 0 < sup.timeout() <= supervisor_mod.TALLY_EVERY
    sup.next_status = sup.next_tally = time.monotonic() - 1  # both due now
    sup.wake()
    assert sup.due > time.monotonic() and sup.due == min(sup.next_tick, sup.next_status, sup.next_tally)
    sup.hup = True
    assert sup.timeout() == 0.0
