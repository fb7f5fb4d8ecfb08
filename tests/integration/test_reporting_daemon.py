"""The whole reporting chain for real: the daemon in the lab router spools events and sends them over
mutual TLS to the reference collector in the server namespace (the ISP side, reached through the WAN).

Checked: daemon_started, a flow_blocked event for an unregistered OpenVPN tunnel with its tag and no
payload-like field (subscriber address pseudonymised), heartbeats, daemon_stopped after SIGTERM, the IPFIX
copy of the decision, `tunnelwatch status` showing the uplink; then the crash case: collector down, one
more blocked flow spooled, kill -9 of the daemon, collector up, daemon restarted -> that event arrives
exactly once."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from support.netns import SERVER_IP, Lab, lab, require_tools
from support.pki import Pki, leaf, make_pki
from support.spool import spool_events
from tunnelwatch.config.runconfig import load_config
from tunnelwatch.lab.peers import HTTPS_PORT, fetch, openvpn_pair, start_openvpn, start_web, tunnel_ping
from tunnelwatch.policy.regsync import sign_document
from tunnelwatch.report.events import make_event
from tunnelwatch.report.heartbeat import config_digest

pytestmark = pytest.mark.integration

TOOLS = ("iptables", "ip6tables", "iptables-save", "iptables-restore", "openvpn", "openssl", "curl")
QUEUE = 7
DEVICE = "tw-lab-report"
COLLECTOR_PORT = 8444
IPFIX_PORT = 4739
# every key a flow event may carry (events.py): anything else would be a leak
FLOW_KEYS = {"schema", "id", "kind", "stream", "seq", "device_id", "ts", "src", "sport", "dst", "dport",
             "transport", "klass", "protocol", "confidence", "evidence", "action", "reason", "bulk",
             "packets", "bytes", "registration_id", "first_seen", "last_seen"}
# a UDP IPFIX sink in the server namespace: one line per message, with the tags it carries
IPFIX_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
while True:
    data = s.recv(65535)
    print("ipfix", len(data), int.from_bytes(data[:2], "big"), b"openvpn" in data, flush=True)
"""


def _pki(tmp: Path) -> Pki:
    d = tmp / "pki"
    d.mkdir()
    pki = make_pki(d)
    # the collector is reached at the server namespace's address, not 127.0.0.1
    leaf(d, "ca", "collector", f"subjectAltName=IP:{SERVER_IP}\nextendedKeyUsage=serverAuth\n"
                                "basicConstraints=CA:FALSE\n")
    return pki


def _config(tmp: Path, pki: Pki, extra: str = "") -> Path:
    (tmp / "registry.yaml").write_text("registrations: []\n")
    cfg = tmp / "tunnelwatch.yaml"
    cfg.write_text(f"queue: {{num: {QUEUE}, packets: 16}}\n"
                   "firewall: {hooks: [forward], ipv6: true, backend: iptables}\n"
                   "registry: registry.yaml\n"
                   "policy: {klass: {vpn_tunnel: enforce}}\n"
                   f"status: {{socket: {tmp / 'status.sock'}}}\n"
                   f"discovery: {{interfaces: [], device_id: {DEVICE}}}\n"
                   "log: {level: debug, journal: false}\n"
                   "report:\n"
                   "  state_dir: state\n"
                   "  heartbeat: 2\n"
                   f"  uplink: {{url: 'https://{SERVER_IP}:{COLLECTOR_PORT}', ca_file: {pki.ca},\n"
                   f"           client_cert: {pki.client_cert}, client_key: {pki.client_key}}}\n"
                   f"  ipfix: {{collector: '{SERVER_IP}:{IPFIX_PORT}'}}\n"
                   "  privacy: {subscriber_addresses: hash, subscriber_nets: [198.51.100.0/24]}\n" + extra)
    return cfg


def _start_collector(lb: Lab, tmp: Path, pki: Pki, name: str) -> None:
    d = pki.ca.parent
    lb.spawn(lb.server, [sys.executable, "-m", "tunnelwatch.isp.collector",
                         "--listen", f"{SERVER_IP}:{COLLECTOR_PORT}",
                         "--cert", str(d / "collector.pem"), "--key", str(d / "collector.key"),
                         "--client-ca", str(pki.ca), "--any-device", "--store", str(tmp / "store")], name)
    lb.wait_for_log(name, "listening on", timeout=15)


def _start_daemon(lb: Lab, cfg: Path, name: str) -> subprocess.Popen[bytes]:
    p = lb.spawn(lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)], name)
    lb.wait_for_log(name, "ready: queue", timeout=30)
    return p


def _stored(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "store" / f"{DEVICE}.jsonl"
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _wait_stored(tmp: Path, pred: Any, what: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        evs = _stored(tmp)
        if pred(evs):
            return evs
        time.sleep(0.1)
    kinds = [e.get("kind") for e in _stored(tmp)]
    raise AssertionError(f"timed out waiting for {what}; collector has {kinds}")


def _spooled(tmp: Path) -> list[dict[str, Any]]:
    return spool_events(tmp / "state" / "spool.db")


def _blocked_openvpn(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in evs if e["kind"] == "flow_blocked" and e.get("protocol") == "openvpn"]


def test_events_reach_the_collector_once_across_sigterm_and_kill9(tmp_path: Path) -> None:
    require_tools(*TOOLS)
    pki = _pki(tmp_path)
    cfg = _config(tmp_path, pki)
    with lab(tmp_path) as lb:
        lb.spawn(lb.server, [sys.executable, "-c", IPFIX_SINK, SERVER_IP, str(IPFIX_PORT)], "ipfix")
        lb.wait_for_log("ipfix", "listening")
        _start_collector(lb, tmp_path, pki, "collector")
        start_web(lb, tmp_path / "www")
        _start_daemon(lb, cfg, "daemon")
        evs = _wait_stored(tmp_path, lambda e: any(x["kind"] == "daemon_started" for x in e), "started")
        started = next(e for e in evs if e["kind"] == "daemon_started")
        assert started["device_id"] == DEVICE and started["mode"] == "nfqueue"
        # the configuration in force, as the ISP sees it: its digest and the modes (enforce from the file)
        assert started["config_digest"] == config_digest(load_config(cfg))
        assert started["policy_modes"]["vpn_tunnel"] == "enforce" and started["policy_default"] == "monitor"

        # benign HTTPS passes and is not reported as a flow; the unregistered OpenVPN tunnel is blocked
        r = fetch(lb, f"https://{SERVER_IP}:{HTTPS_PORT}/index.html", insecure=True)
        assert r.stdout.startswith("200 "), r.stdout + r.stderr
        pair = openvpn_pair(tmp_path / "ovpn")
        start_openvpn(lb, pair)
        lb.wait_for_log("daemon", "decided vpn_tunnel openvpn confirmed block", timeout=20)
        evs = _wait_stored(tmp_path, lambda e: bool(_blocked_openvpn(e)), "flow_blocked")
        ev = _blocked_openvpn(evs)[0]
        assert ev["klass"] == "vpn_tunnel" and ev["confidence"] == "confirmed" and ev["dport"] == pair.port
        assert ev["dst"] == SERVER_IP and str(ev["src"]).startswith("h:")  # the subscriber is pseudonymised
        assert set(ev) <= FLOW_KEYS, set(ev) - FLOW_KEYS
        assert not any(e.get("protocol") in ("tls", "http") for e in evs)
        _wait_stored(tmp_path, lambda e: sum(x["kind"] == "heartbeat" for x in e) >= 2, "two heartbeats")
        beat = [e for e in _stored(tmp_path) if e["kind"] == "heartbeat"][-1]
        assert beat["flows_by_klass"].get("vpn_tunnel", 0) >= 1 and beat["packets_queued"] > 0
        assert beat["config_digest"] == started["config_digest"]
        assert beat["policy_modes"] == started["policy_modes"]
        lat = beat["verdict_latency_ms"]  # userspace time per verdict, single queue
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"], lat

        # the IPFIX copy of the decision reached the sink, with the protocol name in applicationName
        lb.wait_for_log("ipfix", "True", timeout=10)
        assert "ipfix" in lb.log("ipfix") and " 10 " in lb.log("ipfix")  # version 10 messages
        snap = json.loads(lb.run(lb.router, sys.executable, "-m", "tunnelwatch", "status", "--socket",
                                 str(tmp_path / "status.sock"), "--json").stdout)
        assert isinstance(snap["uplink_backlog"], int) and snap["uplink_last_error"] is None, snap

        lb.stop("daemon", signal.SIGTERM, timeout=15)
        _wait_stored(tmp_path, lambda e: any(x["kind"] == "daemon_stopped" for x in e), "daemon_stopped")
        first_run = _stored(tmp_path)
        assert len({e["id"] for e in first_run}) == len(first_run)

        # crash case: collector down, one more blocked flow is spooled, kill -9, collector up, restart
        lb.stop("collector", signal.SIGTERM)
        lb.stop("ovpn-client", signal.SIGTERM)
        lb.stop("ovpn-server", signal.SIGTERM)  # a point-to-point server keeps the old session's state
        _start_daemon(lb, cfg, "daemon2")
        start_openvpn(lb, pair, "ovpn2")
        lb.wait_for_log("daemon2", "decided vpn_tunnel openvpn confirmed block", timeout=20)
        deadline = time.monotonic() + 10
        while not _blocked_openvpn(_spooled(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.1)
        pending = _blocked_openvpn(_spooled(tmp_path))
        assert pending, "the second blocked flow never reached the spool"
        lb.stop("daemon2", signal.SIGKILL)
        _start_collector(lb, tmp_path, pki, "collector2")
        _start_daemon(lb, cfg, "daemon3")
        want = pending[0]["id"]
        evs = _wait_stored(tmp_path, lambda e: any(x["id"] == want for x in e), "the spooled event")
        evs = _wait_stored(tmp_path, lambda e: sum(x["kind"] == "daemon_started" for x in e) >= 3,
                           "the third daemon_started")
        ids = [e["id"] for e in evs]
        assert ids.count(want) == 1 and len(ids) == len(set(ids))
        assert not any(e["kind"] == "daemon_stopped" and e["stream"] == pending[0]["stream"] for e in evs)
        lb.stop("daemon3", signal.SIGTERM, timeout=15)


def test_event_model_is_what_the_collector_stores() -> None:
    # the test above compares against FLOW_KEYS: keep it in step with the event model
    ev = make_event("flow_blocked", device_id=DEVICE, sport=1, dport=2, transport="udp", klass="vpn_tunnel",
                    protocol="openvpn", confidence="confirmed", action="block")
    assert set(ev) <= FLOW_KEYS


def test_registry_sync_applies_a_signed_registry_and_the_tunnel_passes(tmp_path: Path) -> None:
    require_tools(*TOOLS)
    pki = _pki(tmp_path)
    isp = Ed25519PrivateKey.generate()
    pub = isp.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    docs = tmp_path / "regdocs"
    docs.mkdir()
    reg = ("registrations:\n  - id: PTA-SYNC-1\n    customer: lab\n    protocols: [openvpn]\n"
           f"    servers: [{SERVER_IP}]\n")
    (docs / "box.json").write_bytes(sign_document(isp, 1, reg, device=DEVICE))
    cfg = _config(tmp_path, pki, "  registry_sync:\n"
                                 f"    url: https://{SERVER_IP}:8445/box.json\n"
                                 f"    public_key: {base64.b64encode(pub).decode()}\n"
                                 f"    ca_file: {pki.ca}\n"
                                 "    interval: 600\n")
    d = pki.ca.parent
    with lab(tmp_path) as lb:
        lb.spawn(lb.server, [sys.executable, "-m", "tunnelwatch.lab.peers", "https", SERVER_IP, "8445",
                             str(docs), str(d / "collector.pem"), str(d / "collector.key")], "regserver")
        lb.wait_until(lb.server, ["sh", "-c", "ss -ltn | grep -q ':8445 '"])
        _start_collector(lb, tmp_path, pki, "collector")
        _start_daemon(lb, cfg, "daemon")
        lb.wait_for_log("daemon", "registry sync: version 1 applied", timeout=20)
        lb.wait_for_log("daemon", "rules refreshed: 1 registered endpoints bypass the queue", timeout=10)
        evs = _wait_stored(tmp_path, lambda e: any(x["kind"] == "registry_changed" for x in e), "changed")
        changed = next(e for e in evs if e["kind"] == "registry_changed")
        assert changed["source"] == "sync" and changed["version"] == 1 and changed["entries"] == 1
        assert "PTA-SYNC-1" in (tmp_path / "registry.yaml").read_text()
        # vpn_tunnel is enforced, but this server is now registered: the tunnel comes up
        start_openvpn(lb, openvpn_pair(tmp_path / "ovpn"))
        lb.wait_for_log("ovpn-client", "Initialization Sequence Completed", timeout=20)
        assert tunnel_ping(lb)
        assert "confirmed block" not in lb.log("daemon")
        snap = json.loads(lb.run(lb.router, sys.executable, "-m", "tunnelwatch", "status", "--socket",
                                 str(tmp_path / "status.sock"), "--json").stdout)
        assert str(snap["registry_sync"]).startswith("v1"), snap
        assert str(snap["registry_version"]).startswith("v1 (signed)"), snap
        lb.stop("daemon", signal.SIGTERM, timeout=15)
