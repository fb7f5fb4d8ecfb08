"""Junk before the handshake does not buy an unregistered tunnel: real wireguard-go and OpenVPN (UDP) through
a relay of the test's own that sends N junk datagrams from its socket first, the daemon enforcing inline.

The relay (junk_relay.py) runs in the client namespace: the tunnel client talks to 127.0.0.1, the relay's
upstream socket is the one flow the router sees, and it carries N random datagrams (the first 1 byte long,
then 1..1400 bytes) before the client's first one. Unregistered, the tunnel must end blocked (no ping
through it, the daemon logs the block); registered, the same relay and tunnel still pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from enforce_peers import TUN_SERVER_IP, openvpn_pair, start_openvpn, tunnel_ping

from support.netns import SERVER_IP, Lab, lab, require_tools
from tunnelwatch.lab.peers import WIREGUARD_PORT, start_wireguard

pytestmark = pytest.mark.integration

RELAY = Path(__file__).with_name("junk_relay.py")
RELAY_PORT = 40500
OPENVPN_PORT = 1194
WG_TUN = ("10.99.2.1", "10.99.2.2")
PORTS = {"wireguard": WIREGUARD_PORT, "openvpn": OPENVPN_PORT}
TOOLS = {"wireguard": ("wireguard-go", "wg"), "openvpn": ("openvpn", "openssl")}
def _config(tmp: Path, protocol: str, registered: bool) -> Path:
    reg = tmp / "registry.yaml"
    if registered:
        reg.write_text(f"registrations:\n  - id: TEST-J\n    customer: lab\n    protocols: [{protocol}]\n"
                       f"    servers:\n      - {{address: {SERVER_IP}, ports: [{PORTS[protocol]}]}}\n")
    else:
        reg.write_text("registrations: []\n")
    cfg = tmp / "tunnelwatch.yaml"
    cfg.write_text("queue: {num: 5, packets: 16}\nfirewall: {hooks: [forward], ipv6: false}\n"
                   "registry: registry.yaml\npolicy:\n  klass: {vpn_tunnel: {mode: enforce, action: drop}}\n"
                   f"log: {{level: debug}}\nstatus: {{socket: {tmp / 'status.sock'}}}\n")
    return cfg


def _start(lb: Lab, tmp: Path, protocol: str, junk: int, registered: bool) -> None:
    """Daemon in the router, the relay in the client, then the tunnel through the relay."""
    lb.spawn(lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config",
                         str(_config(tmp, protocol, registered))], "daemon")
    lb.wait_for_log("daemon", "ready:", timeout=20)
    lb.spawn(lb.client, [sys.executable, str(RELAY), str(RELAY_PORT), SERVER_IP, str(PORTS[protocol]),
                         str(junk), "90", str(junk)], "relay")
    lb.wait_for_log("relay", "ready:", timeout=10)
    if protocol == "wireguard":
        s_if, c_if = start_wireguard(lb, tmp / "wg", tun=WG_TUN)
        server_key = lb.run(lb.server, "wg", "show", s_if, "public-key").stdout.strip()
        # the client's peer is the relay on loopback: its upstream socket is the flow the router sees
        lb.run(lb.client, "wg", "set", c_if, "peer", server_key, "endpoint", f"127.0.0.1:{RELAY_PORT}")
    else:
        pair = openvpn_pair(tmp / "ovpn")
        text = pair.client_conf.read_text()
        assert f"remote {SERVER_IP} {OPENVPN_PORT}\n" in text
        pair.client_conf.write_text(text.replace(f"remote {SERVER_IP} {OPENVPN_PORT}\n",
                                                 f"remote 127.0.0.1 {RELAY_PORT}\n"))
        start_openvpn(lb, pair)


def _ping(lb: Lab, protocol: str) -> bool:
    return tunnel_ping(lb, 3, WG_TUN[0] if protocol == "wireguard" else TUN_SERVER_IP)


@pytest.mark.parametrize("protocol", ["wireguard", "openvpn"])
# 64: past the kernel's first window (48 packets counted): WireGuard's handshake-sized rule and the later
# windows (OpenVPN retransmits its reset) must still bring the handshake to the daemon
@pytest.mark.parametrize("junk", [1, 5, 16, 64])
def test_unregistered_tunnel_behind_junk_is_blocked(tmp_path: Path, protocol: str, junk: int) -> None:
    require_tools("iptables", "ping", "ss", *TOOLS[protocol])
    with lab(tmp_path, ipv6=False) as lb:
        _start(lb, tmp_path, protocol, junk, registered=False)
        passed = _ping(lb, protocol)  # WireGuard handshakes on the first packet to send
        lb.wait_for_log("relay", f"junk sent: {junk} datagrams", timeout=10)
        lb.wait_for_log("daemon", f"decided vpn_tunnel {protocol} confirmed block", timeout=20)
        assert not passed and not _ping(lb, protocol)
        if protocol == "openvpn":
            assert "Initialization Sequence Completed" not in lb.log("ovpn-client")
        blocked = [ln for ln in lb.log("daemon").splitlines() if f"{protocol} confirmed block" in ln]
        assert any(f"-> {SERVER_IP}:{PORTS[protocol]}" in ln for ln in blocked), blocked


@pytest.mark.parametrize("protocol", ["wireguard", "openvpn"])
def test_registered_tunnel_behind_junk_still_passes(tmp_path: Path, protocol: str) -> None:
    require_tools("iptables", "ping", "ss", *TOOLS[protocol])
    with lab(tmp_path, ipv6=False) as lb:
        _start(lb, tmp_path, protocol, 5, registered=True)
        if protocol == "openvpn":
            lb.wait_for_log("ovpn-client", "Initialization Sequence Completed", timeout=30)
        assert _ping(lb, protocol)
        lb.wait_for_log("relay", "junk sent: 5 datagrams", timeout=10)
        assert f"{protocol} confirmed block" not in lb.log("daemon")
