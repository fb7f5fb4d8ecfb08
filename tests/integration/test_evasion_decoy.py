"""Decoys (zapret-style desync): a low-TTL fake in front of a real tunnel's first segment, through the daemon.

The client namespace runs desync_shim.py, which does what DPI-evasion tools do on a subscriber's machine:
before OpenVPN's first data segment it sends a harmless-looking HTTP request of the same length, with
the same sequence number, and a TTL that passes the router but not the rest of the path. The path is
emulated by a rule in the server namespace that drops what arrives with a TTL under 8 (a server 8 hops
past the router), so the server never reads the decoy, as on the Internet.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_evasion_kernel import TOOLS, _blocked, _config, _daemon, _report, _start_server, _wait

from support.netns import CLIENT_IP, SERVER_IP, Lab, lab, require_tools
from tunnelwatch.appliance.statusweb import fetch_snapshot
from tunnelwatch.lab.peers import openvpn_pair, tunnel_ping

pytestmark = pytest.mark.integration

SHIM = Path(__file__).with_name("desync_shim.py")
PATH_HOPS = 8  # the server namespace drops what arrives with a TTL under this: the rest of the path
DECOY_TTL = 4  # what the shim sends its decoy with: passes the router (3 left), dies before the server


def _lan(tmp: Path) -> str:
    """The report section with the lab's client network as the subscribers' (it is not a private range)."""
    return _report(tmp) + f"  privacy: {{subscriber_nets: ['{CLIENT_IP}/24']}}\n"


def _flows(sock: str) -> dict[str, Any]:
    """The status's flow-table figures (summed over the queue workers)."""
    f = fetch_snapshot(sock).get("flows")
    return f if isinstance(f, dict) else {}


def _far_server(lb: Lab) -> None:
    """The rest of the path: what reaches the server namespace with a TTL under PATH_HOPS dies there."""
    lb.run(lb.server, "iptables", "-w", "-t", "raw", "-A", "PREROUTING", "-m", "ttl", "--ttl-lt",
           str(PATH_HOPS), "-j", "DROP")


def _path_drops(lb: Lab) -> int:
    """Packets the emulated rest of the path dropped (the server namespace's TTL rule)."""
    out = lb.run(lb.server, "iptables", "-w", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n").stdout
    return int(out.splitlines()[2].split()[0])


@pytest.mark.parametrize("lan_known", [True, False], ids=["lan-listed", "lan-unknown"])
def test_a_low_ttl_decoy_before_openvpn_s_first_segment_is_ignored(tmp_path: Path, lan_known: bool) -> None:
    """With the LAN known, the decoy is counted and not classified, and the tunnel is blocked on its real
    first segment. With the lab's client network not listed as the LAN (it is not a private range), the
    same decoy is believed: the flow is decided on an HTTP request the server never read and the tunnel
    carries traffic, which is what the rule is for."""
    require_tools(*TOOLS, "iptables")
    with lab(tmp_path, ipv6=False) as lb:
        sock = str(tmp_path / "status.sock")
        _daemon(lb, _config(tmp_path, extra=_lan(tmp_path) if lan_known else _report(tmp_path)))
        _far_server(lb)
        lb.spawn(lb.client, [sys.executable, str(SHIM), "3", "1194", str(DECOY_TTL), "90"], "shim")
        lb.wait_for_log("shim", "shim ready")
        pair = openvpn_pair(tmp_path / "ovpn", "tcp", server_ip=SERVER_IP, port=1194)
        _start_server(lb, pair, "tcp")
        lb.spawn(lb.client, ["openvpn", "--config", str(pair.client_conf)], "ovpn-client")
        lb.wait_for_log("shim", "sent a decoy", timeout=30)
        # the decoy really went past the router and died on the "path": the server never read it
        _wait(lambda: _path_drops(lb) >= 1, "the decoy to die on the path")
        if not lan_known:
            _wait(lambda: tunnel_ping(lb, count=1), "the tunnel to carry a ping past the believed decoy", 60)
            assert "decided vpn_tunnel" not in lb.log("daemon"), lb.log("daemon")
            return
        _blocked(lb)
        log = lb.log("daemon")
        assert "ignored a decoy: " in log and f"with TTL {DECOY_TTL - 1}," in log, log
        assert "decided benign" not in log, log  # the HTTP request the server never read decided nothing
        # a worker's counters reach the main process's status once a second (workers.STATS_EVERY)
        _wait(lambda: _flows(sock).get("decoys", 0) >= 1, "the status to count the decoy")
        status = subprocess.run([sys.executable, "-m", "tunnelwatch", "status", "--socket", sock],
                                capture_output=True, text=True, timeout=20)
        assert "low-TTL fakes from LAN hosts not classified" in status.stdout, status.stdout + status.stderr


def test_a_client_that_sends_every_packet_with_a_low_ttl_is_still_blocked(tmp_path: Path) -> None:
    """The rule turned against itself: every packet of the client leaves with TTL 20 (reaching a server 8
    hops past the router), hoping to be taken for decoys and not looked at. Held packets are judged by
    the flow's next one: the server's answer shows they were genuine, and the tunnel is blocked."""
    require_tools(*TOOLS, "iptables")
    with lab(tmp_path, ipv6=False) as lb:
        sock = str(tmp_path / "status.sock")
        _daemon(lb, _config(tmp_path, extra=_lan(tmp_path)))
        _far_server(lb)
        lb.run(lb.client, "iptables", "-w", "-t", "mangle", "-A", "POSTROUTING", "-p", "tcp", "--dport",
               "1194", "-j", "TTL", "--ttl-set", "20")
        pair = openvpn_pair(tmp_path / "ovpn", "tcp", server_ip=SERVER_IP, port=1194)
        _start_server(lb, pair, "tcp")
        lb.spawn(lb.client, ["openvpn", "--config", str(pair.client_conf)], "ovpn-client")
        _blocked(lb)
        assert _path_drops(lb) == 0  # every packet reached the server: none was a decoy
        _wait(lambda: _flows(sock).get("created", 0) >= 1, "the status to show the worker's figures")
        assert _flows(sock).get("decoys") == 0, _flows(sock)
