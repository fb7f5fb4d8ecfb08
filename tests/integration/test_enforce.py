"""Inline enforcement through the router namespace: real OpenVPN, curl and ping through `tunnelwatch run`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from enforce_peers import (
    HTTP_PORT,
    HTTPS_PORT,
    fetch,
    openvpn_pair,
    start_openvpn,
    start_web,
    tunnel_ping,
)

from support.netns import SERVER_IP, SERVER_IP6, Lab, lab, require_tools

pytestmark = pytest.mark.integration

TOOLS = ("iptables", "ip6tables", "iptables-save", "ip6tables-save", "iptables-restore", "openvpn", "openssl",
         "curl", "ping", "ss")


def _config(tmp: Path, mode: str, *, registered: bool = False, packets: int = 16, action: str = "drop",
            queues: int = 1) -> Path:
    reg = tmp / "registry.yaml"
    if registered:
        reg.write_text("registrations:\n  - id: TEST-1\n    customer: lab\n    protocols: [openvpn]\n"
                       f"    servers:\n      - {{address: {SERVER_IP}, ports: [1194]}}\n")
    else:
        reg.write_text("registrations: []\n")
    cfg = tmp / "tunnelwatch.yaml"
    cfg.write_text(f"queue: {{num: 3, count: {queues}, packets: {packets}}}\n"
                   "firewall: {hooks: [forward], ipv6: true}\n"
                   "registry: registry.yaml\npolicy:\n"
                   f"  klass: {{vpn_tunnel: {{mode: {mode}, action: {action}}}}}\n"
                   "log: {level: debug}\n"
                   f"status: {{socket: {tmp / 'status.sock'}}}\n")
    return cfg


def _start_daemon(lb: Lab, cfg: Path, name: str = "daemon") -> subprocess.Popen[bytes]:
    p = lb.spawn(lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)], name)
    lb.wait_for_log(name, "ready:", timeout=20)
    assert "kernel fail-open on" in lb.log(name)  # the kernel acknowledged our raw NFQA_CFG_F_FAIL_OPEN
    return p


def _our_rules(lb: Lab) -> list[str]:
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        out += [f"{tool}: {ln}" for ln in lb.run(lb.router, tool).stdout.splitlines() if "TUNNELWATCH" in ln]
    return out


def _queue_stats(lb: Lab, queue: int = 3) -> tuple[int, int, int]:
    """(sent to userspace so far, waiting for a verdict, dropped): /proc/net/netfilter/nfnetlink_queue."""
    text = lb.run(lb.router, "cat", "/proc/net/netfilter/nfnetlink_queue").stdout
    for line in text.splitlines():
        f = line.split()
        if f and int(f[0]) == queue:
            return int(f[7]), int(f[2]), int(f[5]) + int(f[6])
    raise AssertionError(f"queue {queue} not bound:\n{text}")


def _queue_sent(lb: Lab) -> int:
    return _queue_stats(lb)[0]


def _plain_traffic_ok(lb: Lab) -> None:
    assert lb.run(lb.client, "ping", "-c1", "-W2", SERVER_IP, check=False).returncode == 0
    assert lb.run(lb.client, "ping", "-6", "-c1", "-W2", SERVER_IP6, check=False).returncode == 0
    r = fetch(lb, f"http://{SERVER_IP}:{HTTP_PORT}/big.bin")
    assert r.stdout == "200 1048576", r.stderr
    r = fetch(lb, f"https://{SERVER_IP}:{HTTPS_PORT}/", insecure=True)
    assert r.stdout.startswith("200 "), r.stderr


def test_unregistered_openvpn_blocked_in_enforce_mode(tmp_path: Path) -> None:
    require_tools(*TOOLS)
    with lab(tmp_path) as lb:
        start_web(lb, tmp_path / "www")
        _start_daemon(lb, _config(tmp_path, "enforce"))
        start_openvpn(lb, openvpn_pair(tmp_path / "ovpn"))
        lb.wait_for_log("daemon", "decided vpn_tunnel openvpn confirmed block", timeout=20)
        assert not tunnel_ping(lb)
        assert "Initialization Sequence Completed" not in lb.log("ovpn-client")
        _plain_traffic_ok(lb)
        # no web flow was ever blocked
        assert not [ln for ln in lb.log("daemon").splitlines() if "tcp " in ln and "block" in ln]


def test_unregistered_openvpn_over_tcp_is_reset_with_action_reject(tmp_path: Path) -> None:
    require_tools(*TOOLS)
    with lab(tmp_path) as lb:
        _start_daemon(lb, _config(tmp_path, "enforce", action="reject"))
        start_openvpn(lb, openvpn_pair(tmp_path / "ovpn", "tcp"))
        lb.wait_for_log("daemon", "decided vpn_tunnel openvpn confirmed block(reject) tcp", timeout=20)
        # the client is told at once (TCP RST) instead of timing out
        lb.wait_for_log("ovpn-client", "Connection reset", timeout=20)
        assert not tunnel_ping(lb)
        assert "Initialization Sequence Completed" not in lb.log("ovpn-client")
        assert lb.run(lb.client, "ping", "-c1", "-W2", SERVER_IP, check=False).returncode == 0


def test_bad_config_exits_78_with_location(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("queue:\n  packets: 16\n  fail_open: true\n")
    r = subprocess.run([sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 78
    assert f"{cfg}:3:3: unknown key 'fail_open' in queue" in r.stderr


def test_unregistered_openvpn_passes_in_monitor_mode(tmp_path: Path) -> None:
    require_tools(*TOOLS)
    with lab(tmp_path) as lb:
        _start_daemon(lb, _config(tmp_path, "monitor"))
        start_openvpn(lb, openvpn_pair(tmp_path / "ovpn"))
        lb.wait_for_log("ovpn-client", "Initialization Sequence Completed", timeout=30)
        assert tunnel_ping(lb)
        assert "decided vpn_tunnel openvpn confirmed report" in lb.log("daemon")


def test_registered_openvpn_passes_in_enforce_mode(tmp_path: Path) -> None:
    require_tools(*TOOLS)
    with lab(tmp_path) as lb:
        _start_daemon(lb, _config(tmp_path, "enforce", registered=True))
        assert "1 registered endpoints bypass the queue" in lb.log("daemon")
        before = _queue_sent(lb)
        start_openvpn(lb, openvpn_pair(tmp_path / "ovpn"))
        lb.wait_for_log("ovpn-client", "Initialization Sequence Completed", timeout=30)
        assert tunnel_ping(lb)
        # the kernel let the registered endpoint through without queueing a single packet
        assert _queue_sent(lb) == before
        assert "openvpn" not in lb.log("daemon")


def test_kill_restart_and_stop_leave_no_half_state(tmp_path: Path) -> None:
    require_tools(*TOOLS)
    with lab(tmp_path) as lb:
        start_web(lb, tmp_path / "www")
        cfg = _config(tmp_path, "enforce")
        _start_daemon(lb, cfg, "daemon1")
        installed = _our_rules(lb)
        assert installed and any("NFQUEUE" in r and "--queue-bypass" in r for r in installed)
        # a slow transfer is running when the daemon dies
        out = tmp_path / "slow.bin"
        slow = lb.spawn(lb.client, ["curl", "-sS", "--max-time", "20", "--limit-rate", "300k", "-o", str(out),
                                    f"http://{SERVER_IP}:{HTTP_PORT}/big.bin"], "slow")
        deadline = time.monotonic() + 10
        while not (out.exists() and out.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert out.exists() and out.stat().st_size > 0
        lb.stop("daemon1", signal.SIGKILL)
        assert _our_rules(lb) == installed  # rules stay, the queue has no listener: --queue-bypass
        _plain_traffic_ok(lb)  # new connections flow
        assert slow.wait(25) == 0 and out.stat().st_size == 1048576  # the running one finished
        _start_daemon(lb, cfg, "daemon2")
        assert _our_rules(lb) == installed  # re-installed, nothing duplicated
        _plain_traffic_ok(lb)
        lb.stop("daemon2", signal.SIGTERM)
        p2 = next(p for n, p in lb.procs if n == "daemon2")
        assert p2.returncode == 0, lb.log("daemon2")
        assert "rules removed" in lb.log("daemon2")
        assert _our_rules(lb) == []
        _plain_traffic_ok(lb)


def test_only_first_packets_of_a_connection_are_queued(tmp_path: Path) -> None:
    require_tools(*TOOLS)
    n = 8
    with lab(tmp_path) as lb:
        start_web(lb, tmp_path / "www")
        _start_daemon(lb, _config(tmp_path, "enforce", packets=n))
        before = _queue_sent(lb)
        r = fetch(lb, f"http://{SERVER_IP}:{HTTP_PORT}/big.bin")  # one connection, > 700 packets
        assert r.stdout == "200 1048576", r.stderr
        queued = _queue_sent(lb) - before
        print(f"1 MiB download, first {n} packets per connection: {queued} packets queued")
        assert 1 <= queued <= n, queued
        before = _queue_sent(lb)
        ping = lb.run(lb.client, "ping", "-c", "200", "-i", "0.002", "-W", "1", "-q", SERVER_IP, check=False)
        assert ping.returncode == 0, ping.stdout
        # a plain ping is only "unknown" (the ICMP tunnel classifier found nothing): watched, so the
        # kernel queues its first window and the later windows within 400 packets, the rest stays there
        from tunnelwatch.inline import firewall
        bound = firewall.window(n) + sum(hi - lo + 1 for lo, hi in firewall.LATER_WINDOWS if hi <= 400)
        assert 1 <= _queue_sent(lb) - before <= bound
        sent, waiting, dropped = _queue_stats(lb)
        assert (waiting, dropped) == (0, 0)  # every queued packet got its verdict
        lb.stop("daemon")
        assert f"stopping on signal 15: queue 3: {sent} packets seen" in lb.log("daemon")


def _bound_queues(lb: Lab) -> dict[int, int]:
    """queue number -> owner netlink port id, for every bound queue in the router namespace."""
    text = lb.run(lb.router, "cat", "/proc/net/netfilter/nfnetlink_queue").stdout
    return {int(f[0]): int(f[1]) for f in (ln.split() for ln in text.splitlines()) if f}


def test_one_worker_per_queue_and_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    require_tools(*TOOLS)
    with lab(tmp_path) as lb:
        start_web(lb, tmp_path / "www")
        daemon = _start_daemon(lb, _config(tmp_path, "enforce", queues=2))
        assert "ready: queues 3-4" in lb.log("daemon")
        owners = _bound_queues(lb)
        assert sorted(owners) == [3, 4] and owners[3] != owners[4]
        # one host, one queue: the initiator address's low bit picks it (the client's .2 goes to 3)
        steer = '--ctdir ORIGINAL -m u32 --u32 "0xc&0x1=0x0" -j NFQUEUE --queue-num 3 --queue-bypass'
        assert any(steer in r for r in _our_rules(lb)), _our_rules(lb)
        workers = [int(x) for x in Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children").read_text().split()]
        assert len(workers) == 2
        start_openvpn(lb, openvpn_pair(tmp_path / "ovpn"))
        lb.wait_for_log("daemon", "decided vpn_tunnel openvpn confirmed block", timeout=20)
        assert not tunnel_ping(lb)
        for port in range(5):  # several connections through the client's queue
            r = fetch(lb, f"http://{SERVER_IP}:{HTTP_PORT}/index.html?{port}")
            assert r.stdout.startswith("200 "), r.stderr
        os.kill(workers[0], signal.SIGKILL)
        lb.wait_for_log("daemon", "died (exit -9): restarting it", timeout=10)
        deadline = time.monotonic() + 10
        while len(_bound_queues(lb)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(_bound_queues(lb)) == [3, 4]
        _plain_traffic_ok(lb)
        lb.stop("daemon")
        assert daemon.returncode == 0, lb.log("daemon")
        assert _our_rules(lb) == [] and _bound_queues(lb) == {}
