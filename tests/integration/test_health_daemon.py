"""Health degrading for each cause, with the real daemon in the lab's router namespace and real peers.

Each test shows health "ok" over the daemon's status socket, provokes one cause for real, and waits for
health "degraded" with that cause's reason (appliance/health.py): the uplink failing beyond
`status.uplink_grace` (the reference collector stopped), the spool near full (the collector unreachable,
events from real flows), registry sync failing (the HTTPS server gone) and a registry near its expiry (a
document signed with a short validity), flow-table evictions (a burst of real connections). The refused
reload and the unwritable spool are in test_service_daemon.py and test_faults.py; fail-open bypass and the
flood limit in test_evasion_kernel.py. Classifier errors have no wire trigger (every classifier is fed
hostile input by the fuzz and malformed-packet tests and must not raise): the unit test covers them.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from support.netns import SERVER_IP, Lab, lab, require_tools
from support.pki import Pki, leaf, make_pki
from tunnelwatch.appliance.statusweb import fetch_snapshot
from tunnelwatch.policy.regdoc import rfc3339
from tunnelwatch.policy.regsync import sign_document

pytestmark = pytest.mark.integration

QUEUE = 17
DEVICE = "tw-health"
COLLECTOR_PORT = 8446
REGSYNC_PORT = 8447
TOOLS = ("iptables", "iptables-save", "iptables-restore", "openssl", "ss")

# Bounded UDP sender for the client namespace: `count` datagrams to dst:port, each from a new socket (a new
# source port, so a new connection for conntrack and the daemon); "spread" sends to count ports instead.
UDP_BURST = """
import socket, sys
dst, port, count, spread = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "spread"
for i in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x" * 40, (dst, port + i if spread else port))
    s.close()
print("sent", count, flush=True)
"""


def _pki(tmp: Path) -> Pki:
    d = tmp / "pki"
    d.mkdir()
    pki = make_pki(d)
    # the collector and the registry server are reached at the server namespace's address
    leaf(d, "ca", "collector", f"subjectAltName=IP:{SERVER_IP}\nextendedKeyUsage=serverAuth\n"
                                "basicConstraints=CA:FALSE\n")
    return pki


def _config(tmp: Path, *, status: str = "", queue: str = "", report: str = "") -> Path:
    (tmp / "registry.yaml").write_text("registrations: []\n")
    cfg = tmp / "tunnelwatch.yaml"
    cfg.write_text(f"queue: {{num: {QUEUE}, packets: 16{queue}}}\n"
                   "firewall: {hooks: [forward], ipv6: false, backend: iptables}\n"
                   "registry: registry.yaml\n"
                   "policy: {klass: {vpn_tunnel: enforce}}\n"
                   f"status: {{socket: {tmp / 'status.sock'}{status}}}\n"
                   f"discovery: {{interfaces: [], device_id: {DEVICE}}}\n"
                   "log: {level: info, journal: false}\n"
                   f"report:\n  state_dir: {tmp / 'state'}\n" + report)
    return cfg


def _uplink(pki: Pki) -> str:
    return (f"  uplink: {{url: 'https://{SERVER_IP}:{COLLECTOR_PORT}', ca_file: {pki.ca},\n"
            f"           client_cert: {pki.client_cert}, client_key: {pki.client_key}}}\n")


def _daemon(lb: Lab, cfg: Path) -> subprocess.Popen[bytes]:
    p = lb.spawn(lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)], "daemon")
    lb.wait_for_log("daemon", "ready: queue", timeout=30)
    return p


def _collector(lb: Lab, tmp: Path, pki: Pki, name: str) -> None:
    d = pki.ca.parent
    lb.spawn(lb.server, [sys.executable, "-m", "tunnelwatch.isp.collector",
                         "--listen", f"{SERVER_IP}:{COLLECTOR_PORT}",
                         "--cert", str(d / "collector.pem"), "--key", str(d / "collector.key"),
                         "--client-ca", str(pki.ca), "--any-device", "--store", str(tmp / "store")], name)
    lb.wait_for_log(name, "listening on", timeout=15)


def _regserver(lb: Lab, docs: Path, pki: Pki, name: str) -> None:
    d = pki.ca.parent
    lb.spawn(lb.server, [sys.executable, "-m", "tunnelwatch.lab.peers", "https", SERVER_IP, str(REGSYNC_PORT),
                         str(docs), str(d / "collector.pem"), str(d / "collector.key")], name)
    lb.wait_until(lb.server, ["sh", "-c", f"ss -ltn | grep -q ':{REGSYNC_PORT} '"])


def _wait_snap(sock: str, pred: Callable[[dict[str, Any]], bool], what: str,
               timeout: float = 20.0) -> dict[str, Any]:
    """The first status snapshot that satisfies `pred`, polled until the deadline."""
    deadline = time.monotonic() + timeout
    snap: dict[str, Any] = {}
    while time.monotonic() < deadline:
        snap = fetch_snapshot(sock)
        if pred(snap):
            return snap
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last snapshot: health {snap.get('health')!r}, "
                         f"reasons {snap.get('health_reasons')!r}")


def _ok(snap: dict[str, Any]) -> bool:
    return snap.get("health") == "ok" and snap.get("health_reasons") == []


def _degraded_by(prefix: str) -> Callable[[dict[str, Any]], bool]:
    def pred(snap: dict[str, Any]) -> bool:
        reasons = snap.get("health_reasons") or []
        return snap.get("health") == "degraded" and any(str(r).startswith(prefix) for r in reasons)
    return pred


def _reason(snap: dict[str, Any], prefix: str) -> str:
    return next(str(r) for r in snap["health_reasons"] if str(r).startswith(prefix))


def test_the_uplink_failing_beyond_the_grace_degrades_health(tmp_path: Path) -> None:
    """The reference collector takes heartbeats (ok); stopped, the uplink fails: health stays ok for
    `status.uplink_grace` (3 s here, 600 s by default), then degrades naming the uplink error."""
    require_tools(*TOOLS)
    pki = _pki(tmp_path)
    cfg = _config(tmp_path, status=", uplink_grace: 3", report="  heartbeat: 1\n" + _uplink(pki))
    sock = str(tmp_path / "status.sock")
    with lab(tmp_path, ipv6=False) as lb:
        _collector(lb, tmp_path, pki, "collector")
        p = _daemon(lb, cfg)
        _wait_snap(sock, lambda s: _ok(s) and s.get("uplink_last_error") is None
                   and (tmp_path / "store" / f"{DEVICE}.jsonl").exists(), "health ok with events delivered")
        lb.stop("collector")
        failing = _wait_snap(sock, lambda s: bool(s.get("uplink_last_error")), "the uplink to fail")
        stopped = time.monotonic()
        assert failing["health"] == "ok", failing  # within the grace: a collector restart is no fault
        snap = _wait_snap(sock, _degraded_by("uplink failing for "), "health degraded by the uplink")
        assert time.monotonic() - stopped >= 2.0  # not before the grace (3 s, polled once a second)
        why = _reason(snap, "uplink failing for ")
        assert str(snap["uplink_last_error"]) in why, why
        print(f"uplink: {why}")
        assert p.poll() is None, lb.log("daemon")[-2000:]


def test_the_spool_near_full_degrades_health(tmp_path: Path) -> None:
    """The collector is unreachable (nothing listens), so every event waits in a spool bounded at 100:
    real UDP flows to the OpenVPN port (reported: min_confidence port) fill it past 80 %."""
    require_tools(*TOOLS)
    cfg = _config(tmp_path, report="  spool: {max_events: 100}\n  min_confidence: port\n"
                                   f"  uplink: {{url: 'https://{SERVER_IP}:9'}}\n")
    sock = str(tmp_path / "status.sock")
    with lab(tmp_path, ipv6=False) as lb:
        p = _daemon(lb, cfg)
        _wait_snap(sock, _ok, "health ok")
        r = lb.run(lb.client, sys.executable, "-c", UDP_BURST, SERVER_IP, "1194", "120", "same", timeout=60)
        assert r.stdout.startswith("sent 120")
        snap = _wait_snap(sock, _degraded_by("spool "), "health degraded by the spool", timeout=30)
        why = _reason(snap, "spool ")
        assert "of 100 events waiting" in why and snap["uplink_backlog"] >= 80, (why, snap["uplink_backlog"])
        print(f"spool: {why}")
        assert p.poll() is None, lb.log("daemon")[-2000:]


def test_registry_sync_failing_and_a_registry_near_expiry_degrade_health(tmp_path: Path) -> None:
    """A signed registry syncs (ok); the HTTPS server goes away: the next sync fails, health degrades;
    the server comes back with a newer document that expires within its last quarter of validity: sync
    is ok again, and health degrades on the registry near its expiry instead."""
    require_tools(*TOOLS)
    pki = _pki(tmp_path)
    isp = Ed25519PrivateKey.generate()
    pub = isp.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    docs = tmp_path / "regdocs"
    docs.mkdir()
    reg = ("registrations:\n  - id: PTA-H-1\n    customer: lab\n    protocols: [openvpn]\n"
           f"    servers: [{SERVER_IP}]\n")
    (docs / "box.json").write_bytes(sign_document(isp, 1, reg, device=DEVICE))
    cfg = _config(tmp_path, report="  registry_sync:\n"
                                   f"    url: https://{SERVER_IP}:{REGSYNC_PORT}/box.json\n"
                                   f"    public_key: {base64.b64encode(pub).decode()}\n"
                                   f"    ca_file: {pki.ca}\n"
                                   "    interval: 10\n")
    sock = str(tmp_path / "status.sock")
    with lab(tmp_path, ipv6=False) as lb:
        _regserver(lb, docs, pki, "regserver")
        p = _daemon(lb, cfg)
        lb.wait_for_log("daemon", "registry sync: version 1 applied", timeout=20)
        _wait_snap(sock, _ok, "health ok after the first sync")
        lb.stop("regserver")
        snap = _wait_snap(sock, _degraded_by("registry sync: "), "health degraded by the sync", timeout=25)
        why = _reason(snap, "registry sync: ")
        assert "cannot fetch" in why and "registry sync: registry sync" not in why, why
        print(f"sync: {why}")
        # version 2, issued a day ago, expiring in an hour: within the last quarter of its validity
        now = time.time()
        issued, expires = rfc3339(now - 86_400), rfc3339(now + 3600)
        near = sign_document(isp, 2, reg, device=DEVICE, issued=issued, expires=expires)
        (docs / "box.json").write_bytes(near)
        _regserver(lb, docs, pki, "regserver2")
        snap = _wait_snap(sock, lambda s: _degraded_by("registry expires at ")(s)
                          and not s.get("registry_sync_error"), "health degraded by the expiry", timeout=25)
        why = _reason(snap, "registry expires at ")
        assert "h left" in why, why
        assert not any(str(r).startswith("registry sync: ") for r in snap["health_reasons"]), snap
        print(f"stale: {why}")
        assert p.poll() is None, lb.log("daemon")[-2000:]


def test_flow_table_evictions_degrade_health(tmp_path: Path) -> None:
    """queue.flows at its minimum (1000) and a burst of 1500 new UDP connections from the LAN: the flow
    table forgets the oldest, and health says so."""
    require_tools(*TOOLS)
    cfg = _config(tmp_path, queue=", flows: 1000")
    sock = str(tmp_path / "status.sock")
    with lab(tmp_path, ipv6=False) as lb:
        p = _daemon(lb, cfg)
        _wait_snap(sock, _ok, "health ok")
        r = lb.run(lb.client, sys.executable, "-c", UDP_BURST, SERVER_IP, "20000", "1500", "spread",
                   timeout=60)
        assert r.stdout.startswith("sent 1500")
        snap = _wait_snap(sock, _degraded_by("flow table full: "), "health degraded by evictions")
        why = _reason(snap, "flow table full: ")
        assert snap["flows"]["evicted"] > 0, snap["flows"]
        print(f"evictions: {why}")
        assert p.poll() is None, lb.log("daemon")[-2000:]
