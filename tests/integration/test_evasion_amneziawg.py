"""AmneziaWG on the wire, blocked inline: real wireguard-go with a relay on each side that rewrites its
messages into AmneziaWG 1.x form (junk before every initiation, S1/S2 padding, custom H1..H4 types).

There is no AmneziaWG package for Debian; the relays (awg_relay.py) produce its wire format from the
AmneziaWG description around real WireGuard cryptography, so the tunnel works end to end. Unregistered,
the daemon must confirm and block it as `amneziawg`; registered, it passes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from enforce_peers import tunnel_ping

from support.netns import SERVER_IP, Lab, lab, require_tools
from tunnelwatch.lab.peers import WIREGUARD_PORT, start_wireguard

pytestmark = pytest.mark.integration

RELAY = Path(__file__).with_name("awg_relay.py")
CLIENT_PORT = 40600
AWG_PORT = 51999
TUN = ("10.99.3.1", "10.99.3.2")


def _config(tmp: Path, registered: bool) -> Path:
    reg = tmp / "registry.yaml"
    reg.write_text("registrations:\n  - id: TEST-A\n    customer: lab\n    protocols: [amneziawg]\n"
                   f"    servers:\n      - {{address: {SERVER_IP}, ports: [{AWG_PORT}]}}\n" if registered
                   else "registrations: []\n")
    cfg = tmp / "tunnelwatch.yaml"
    cfg.write_text("queue: {num: 6, packets: 16}\nfirewall: {hooks: [forward], ipv6: false}\n"
                   "registry: registry.yaml\npolicy:\n  klass: {vpn_tunnel: {mode: enforce, action: drop}}\n"
                   f"log: {{level: debug}}\nstatus: {{socket: {tmp / 'status.sock'}}}\n")
    return cfg


def _start(lb: Lab, tmp: Path, registered: bool) -> None:
    cfg = _config(tmp, registered)
    lb.spawn(lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)], "daemon")
    lb.wait_for_log("daemon", "ready:", timeout=20)
    s_if, c_if = start_wireguard(lb, tmp / "wg", tun=TUN)
    lb.spawn(lb.server, [sys.executable, str(RELAY), "server", SERVER_IP, str(AWG_PORT), str(WIREGUARD_PORT),
                         "90"], "awg-server")
    lb.spawn(lb.client, [sys.executable, str(RELAY), "client", str(CLIENT_PORT), SERVER_IP, str(AWG_PORT),
                         "90"], "awg-client")
    lb.wait_for_log("awg-server", "ready:", timeout=10)
    lb.wait_for_log("awg-client", "ready:", timeout=10)
    server_key = lb.run(lb.server, "wg", "show", s_if, "public-key").stdout.strip()
    lb.run(lb.client, "wg", "set", c_if, "peer", server_key, "endpoint", f"127.0.0.1:{CLIENT_PORT}")


def test_unregistered_amneziawg_is_confirmed_and_blocked(tmp_path: Path) -> None:
    require_tools("iptables", "ping", "ss", "wireguard-go", "wg")
    with lab(tmp_path, ipv6=False) as lb:
        _start(lb, tmp_path, registered=False)
        passed = tunnel_ping(lb, 3, TUN[0])
        lb.wait_for_log("daemon", "decided vpn_tunnel amneziawg confirmed block", timeout=20)
        assert not passed and not tunnel_ping(lb, 3, TUN[0])
        line = next(ln for ln in lb.log("daemon").splitlines() if "amneziawg confirmed block" in ln)
        assert f"-> {SERVER_IP}:{AWG_PORT}" in line and "padded handshake" in line, line


def test_registered_amneziawg_passes(tmp_path: Path) -> None:
    require_tools("iptables", "ping", "ss", "wireguard-go", "wg")
    with lab(tmp_path, ipv6=False) as lb:
        _start(lb, tmp_path, registered=True)
        assert tunnel_ping(lb, 3, TUN[0])
        assert "amneziawg confirmed block" not in lb.log("daemon")
