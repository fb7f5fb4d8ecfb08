"""A tunnel on the 5-tuple of a flow the daemon already decided must not inherit that decision.

The trick: the client first talks plain DNS from UDP port P to the server's port 53, then brings up
wireguard-go with listen-port P to the same server port: the same conntrack entry, carrying whatever the
DNS flow earned. A few queries leave the flow inside the first queued window; twenty take it past the
window, and the daemon's allow is then final in the connmark, so the kernel stops queueing the
connection (except WireGuard-handshake-sized packets, the rule this test guards). On the server a small
front of the test's own answers DNS queries itself and relays everything else to the wireguard-go server
on loopback. The daemon enforces vpn_tunnel; either way the tunnel must end blocked.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from evasion_relays import DNS_FRONT, DNS_QUERIES

from support.netns import CLIENT_IP, SERVER_IP, Lab, lab, require_tools
from tunnelwatch.inline import firewall
from tunnelwatch.lab.peers import start_wireguard

pytestmark = pytest.mark.integration

SPORT = 40053
WG_LOOPBACK_PORT = 51821
WG_TUN_SERVER = "10.99.2.1"
WG_BLOCKED = "decided vpn_tunnel wireguard confirmed block"


def _config(tmp: Path, backend: str) -> Path:
    (tmp / "registry.yaml").write_text("registrations: []\n")
    cfg = tmp / "tunnelwatch.yaml"
    cfg.write_text("queue: {num: 17, packets: 16}\n"
                   f"firewall: {{hooks: [forward], ipv6: false, backend: {backend}}}\n"
                   "registry: registry.yaml\n"
                   "policy: {klass: {vpn_tunnel: enforce}}\n"
                   f"status: {{socket: {tmp / 'status.sock'}}}\n"
                   "discovery: {interfaces: [], device_id: tw-reuse}\n"
                   "log: {level: debug, journal: false}\n")
    return cfg


def _connmark(lb: Lab) -> int:
    out = lb.run(lb.router, "conntrack", "-L", "-p", "udp", "--sport", str(SPORT), check=False).stdout
    marks = [int(w[5:]) for w in out.split() if w.startswith("mark=")]
    return marks[0] & firewall.MARK_MASK if marks else -1


# iptables only: this kernel has no nft queue statement (docs/enforcement.md); the nft form of the rule
# is checked in tests/unit/inline/test_firewall.py
@pytest.mark.parametrize("queries,backend", [(3, "iptables"), (20, "iptables")],
                         ids=["in-window", "allowed-for-good"])
def test_wireguard_on_the_tuple_of_a_dns_flow_is_blocked(tmp_path: Path, queries: int, backend: str) -> None:
    require_tools("nft" if backend == "nftables" else backend, "conntrack", "wireguard-go", "wg")
    with lab(tmp_path, ipv6=False) as lb:
        cfg = _config(tmp_path, backend)
        lb.spawn(lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)],
                 "daemon")
        lb.wait_for_log("daemon", "ready: queue", timeout=30)
        s_if, c_if = start_wireguard(lb, tmp_path / "wg", port=WG_LOOPBACK_PORT)
        lb.spawn(lb.server, [sys.executable, "-c", DNS_FRONT, SERVER_IP, "53", str(WG_LOOPBACK_PORT)],
                 "front")
        lb.wait_for_log("front", "relay ready")
        lb.run(lb.client, sys.executable, "-c", DNS_QUERIES, CLIENT_IP, str(SPORT), SERVER_IP, str(queries))
        lb.wait_for_log("daemon", "decided benign dns confirmed allow", timeout=20)
        if queries > 16:
            deadline = time.monotonic() + 10
            while _connmark(lb) != firewall.MARK_ALLOW and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _connmark(lb) == firewall.MARK_ALLOW, "the DNS flow was not allowed for good"
        # the same 5-tuple now carries WireGuard
        pub = lb.run(lb.server, "wg", "show", s_if, "public-key").stdout.strip()
        lb.run(lb.client, "wg", "set", c_if, "listen-port", str(SPORT), "peer", pub, "endpoint",
               f"{SERVER_IP}:53")
        deadline = time.monotonic() + 30
        through = False
        while time.monotonic() < deadline and WG_BLOCKED not in lb.log("daemon"):
            ping = lb.run(lb.client, "ping", "-c", "1", "-W", "1", WG_TUN_SERVER, check=False)
            through = through or ping.returncode == 0
        log = lb.log("daemon")
        assert WG_BLOCKED in log, \
            f"the tunnel inherited the DNS flow's decision (ping through: {through}):\n{log[-3000:]}"
        assert "classified afresh" in log.split(WG_BLOCKED, 1)[0], log[-3000:]
        assert lb.run(lb.client, "ping", "-c", "2", "-W", "1", WG_TUN_SERVER, check=False).returncode != 0
        assert _connmark(lb) == firewall.MARK_DROP
