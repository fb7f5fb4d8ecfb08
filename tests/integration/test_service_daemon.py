"""The real daemon under a real NOTIFY_SOCKET in the lab router: READY only once the rules are in,
watchdog pings, reload (valid, invalid, restart-needed) without dropping traffic, `tunnelwatch status`,
STOPPING and rule removal at exit; single queue and multi-queue (decisions forwarded by the workers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from enforce_peers import HTTP_PORT, fetch, openvpn_pair, start_openvpn, start_web

from support.netns import SERVER_IP, Lab, lab, require_tools
from support.notify import NotifyListener
from tunnelwatch.inline.firewall import window

pytestmark = pytest.mark.integration

TOOLS = ("iptables", "ip6tables", "iptables-save", "ip6tables-save", "iptables-restore", "openvpn", "openssl",
         "curl", "ping")
QUEUE = 5


def _write_config(tmp: Path, *, mode: str = "enforce", packets: int = 16, count: int = 1, num: int = QUEUE,
                  extra: str = "") -> Path:
    (tmp / "registry.yaml").write_text("registrations: []\n")
    cfg = tmp / "tunnelwatch.yaml"
    cfg.write_text(f"queue: {{num: {num}, count: {count}, packets: {packets}}}\n"
                   "firewall: {hooks: [forward], ipv6: true, backend: iptables}\n"
                   "registry: registry.yaml\n"
                   f"policy:\n  klass: {{vpn_tunnel: {mode}}}\n"
                   f"status: {{socket: {tmp / 'status.sock'}}}\n"
                   "discovery: {interfaces: []}\n"
                   f"log: {{level: debug, journal: false}}\n{extra}")
    return cfg


def _rules(lb: Lab) -> list[str]:
    return [ln for ln in lb.run(lb.router, "iptables-save").stdout.splitlines() if "TUNNELWATCH" in ln]


def _status(lb: Lab, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    sock = str(tmp / "status.sock")
    return lb.run(lb.router, sys.executable, "-m", "tunnelwatch", "status", "--socket", sock, *extra,
                  check=False)


def _snapshot(lb: Lab, tmp: Path) -> dict[str, object]:
    r = _status(lb, tmp, "--json")
    assert r.stdout, r.stderr
    snap = json.loads(r.stdout)
    assert isinstance(snap, dict)
    return snap


def _start(lb: Lab, nl: NotifyListener, cfg: Path) -> subprocess.Popen[bytes]:
    proc = lb.spawn(lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)], "daemon",
                    env=nl.environ(watchdog_usec=2_000_000))
    nl.wait_for("READY=1", timeout=30)
    # READY=1 means enforcing: when it arrives, the line the daemon logs after installing the rules is
    # already written, and the queue rule is there
    assert "ready: queue" in lb.log("daemon")
    rules = _rules(lb)
    assert any("NFQUEUE" in r for r in rules), lb.log("daemon")
    return proc


def _openvpn_blocked_and_listed(lb: Lab, tmp: Path) -> None:
    start_openvpn(lb, openvpn_pair(tmp / "ovpn"))
    lb.wait_for_log("daemon", "decided vpn_tunnel openvpn confirmed block", timeout=20)
    # a worker's decision reaches the main process's status within its next drain (<= 0.5 s)
    deadline = time.monotonic() + 5
    while True:
        snap = _snapshot(lb, tmp)
        recent = snap["recent"]
        assert isinstance(recent, list)
        if any(r["protocol"] == "openvpn" and r["action"] == "block" and r["dst"] == SERVER_IP
               for r in recent):
            break
        assert time.monotonic() < deadline, snap
        time.sleep(0.1)
    assert snap["health"] == "ok"
    text = _status(lb, tmp)
    assert text.returncode == 0, text.stderr
    assert "health:           ok" in text.stdout and "openvpn" in text.stdout


def _reload(lb: Lab, nl: NotifyListener, proc: subprocess.Popen[bytes], needle: str) -> str:
    """SIGHUP; wait for RELOADING=1 then READY=1 and the log line; returns the READY's STATUS."""
    start = len(nl.messages)
    os.kill(proc.pid, signal.SIGHUP)
    reloading = nl.wait_for("RELOADING=1", timeout=10, start=start)
    assert reloading.get("MONOTONIC_USEC")
    ready = nl.wait_for("READY=1", timeout=10, start=nl.messages.index(reloading))
    lb.wait_for_log("daemon", needle, timeout=10)
    return ready.get("STATUS") or ""


def _stop(lb: Lab, nl: NotifyListener, proc: subprocess.Popen[bytes]) -> None:
    lb.stop("daemon")
    nl.wait_for("STOPPING=1", timeout=10)
    assert proc.returncode == 0, lb.log("daemon")
    assert _rules(lb) == []
    assert {m.pid for m in nl.messages} == {proc.pid}  # only the main process talks to systemd


def test_notify_reload_status_and_stop(tmp_path: Path) -> None:
    require_tools(*TOOLS)
    with lab(tmp_path) as lb, NotifyListener() as nl:
        start_web(lb, tmp_path / "www")
        cfg = _write_config(tmp_path)
        proc = _start(lb, nl, cfg)
        ready = nl.wait_for("READY=1", timeout=1)
        assert (ready.get("STATUS") or "").startswith("enforcing: 0 flows decided")
        # the watchdog keeps coming: WATCHDOG_USEC 2 s -> a ping every second
        first = nl.wait_for(lambda m: m.has("WATCHDOG=1") and m.ts > ready.ts, timeout=5)
        nl.wait_for(lambda m: m.has("WATCHDOG=1") and m.ts > first.ts, timeout=5)
        _openvpn_blocked_and_listed(lb, tmp_path)
        nl.wait_for(lambda m: "1 blocked" in (m.get("STATUS") or ""), timeout=10)

        # a valid change (policy, packets) is applied while traffic flows
        ping = lb.spawn(lb.client, ["ping", "-c", "40", "-i", "0.05", "-W", "1", SERVER_IP], "ping")
        lb.wait_for_log("ping", "icmp_seq=1 ", timeout=5)
        _write_config(tmp_path, mode="monitor", packets=12)
        status = _reload(lb, nl, proc, "reload #1: applied")
        assert status.startswith("monitoring:"), status
        r = fetch(lb, f"http://{SERVER_IP}:{HTTP_PORT}/big.bin")
        assert r.stdout == "200 1048576", r.stderr
        assert ping.wait(20) == 0 and " 0% packet loss" in lb.log("ping"), lb.log("ping")
        assert any(f"--connbytes 0:{window(12)} " in r for r in _rules(lb))  # the rules follow the new config
        assert "(packets, klass)" in lb.log("daemon").split("reload #1: applied")[-1].splitlines()[0]
        assert _snapshot(lb, tmp_path)["mode"] == "monitor"

        # an invalid config is refused, the running one stays
        cfg.write_text(cfg.read_text().replace("packets: 12", "pakets: 12"))
        _reload(lb, nl, proc, "event=config_rejected reload=2")
        log = lb.log("daemon")
        assert f"reload #2 refused: {cfg} is invalid; keeping the running configuration" in log
        assert "unknown key 'pakets' in queue: did you mean 'packets'?" in log
        assert any(f"--connbytes 0:{window(12)} " in r for r in _rules(lb))
        snap = _snapshot(lb, tmp_path)
        assert str(snap["config_check"]).startswith("reload refused")
        deadline = time.monotonic() + 15  # health is assessed every 2 s (supervisor STATUS_EVERY)
        while snap["health"] != "degraded" and time.monotonic() < deadline:
            time.sleep(0.2)
            snap = _snapshot(lb, tmp_path)
        assert snap["health"] == "degraded", snap  # a refused reload is a fault the technician must see
        reasons = snap["health_reasons"]
        assert isinstance(reasons, list) and str(reasons[0]).startswith("configuration: reload refused")

        # what only a restart can change is refused too, with the reason
        _write_config(tmp_path, num=QUEUE + 1)
        _reload(lb, nl, proc, "event=config_rejected reload=3 ")
        assert "reload #3 refused: queue.num changed: a restart is needed" in lb.log("daemon")
        _reload(lb, nl, proc, "event=config_rejected reload=4 ")  # a repeated refusal is logged again
        assert proc.poll() is None and fetch(lb, f"http://{SERVER_IP}:{HTTP_PORT}/").stdout.startswith("200 ")

        _stop(lb, nl, proc)


def test_multi_queue_workers_report_decisions_and_take_reloads(tmp_path: Path) -> None:
    require_tools(*TOOLS)
    with lab(tmp_path) as lb, NotifyListener() as nl:
        start_web(lb, tmp_path / "www")
        proc = _start(lb, nl, _write_config(tmp_path, count=2))
        assert "ready: queues 5-6" in lb.log("daemon")
        _openvpn_blocked_and_listed(lb, tmp_path)  # decided in a worker, listed by the main process
        nl.wait_for(lambda m: m.has("WATCHDOG=1"), timeout=5)
        _write_config(tmp_path, count=2, packets=10, extra="# reloaded\n")
        _reload(lb, nl, proc, "reload #1: applied")
        assert any(f"--connbytes 0:{window(10)} " in r for r in _rules(lb))
        for i in range(4):  # new connections over both queues still pass
            assert fetch(lb, f"http://{SERVER_IP}:{HTTP_PORT}/index.html?{i}").stdout.startswith("200 ")
        _stop(lb, nl, proc)
