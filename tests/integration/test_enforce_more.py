"""More inline enforcement through the router namespace: WireGuard, OpenVPN over IPv6, ordinary DNS, HTTPS
and SIP traffic, and the daemon's reduced privileges, all with real peers and `tunnelwatch run`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from enforce_more_peers import (
    DNS_ANSWER,
    OVPN6_TUN_SERVER_IP,
    OVPN_PORT,
    WG_PORT,
    WG_SERVER_IP,
    dns_query,
    openvpn6_configs,
    ping_until,
    sip_call,
    start_dns,
    start_sip_uas,
    start_wireguard,
    wg_handshakes,
)
from enforce_peers import make_pki

from support.netns import SERVER_IP, SERVER_IP6, Lab, lab, require_tools
from tunnelwatch.appliance.privileges import CAP_NET_ADMIN, CAP_NET_RAW, capabilities
from tunnelwatch.inline import firewall

pytestmark = pytest.mark.integration

BASE_TOOLS = ("iptables", "ip6tables", "iptables-save", "ip6tables-save", "iptables-restore", "ping", "ss")
WG_TOOLS = (*BASE_TOOLS, "wireguard-go", "wg")
KEPT = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW)


def _config(tmp: Path, mode: str, *, registry: str = "registrations: []\n", queues: int = 1,
            voip: str = "") -> Path:
    (tmp / "registry.yaml").write_text(registry)
    cfg = tmp / "tunnelwatch.yaml"
    cfg.write_text(f"queue: {{num: 5, count: {queues}, packets: 16}}\n"
                   "firewall: {hooks: [forward], ipv6: true}\n"
                   "registry: registry.yaml\npolicy:\n"
                   f"  klass: {{vpn_tunnel: {{mode: {mode}}}, voip: monitor}}\n"
                   f"{voip}log: {{level: debug}}\n"
                   f"status: {{socket: {tmp / 'status.sock'}}}\n")
    return cfg


def _registered(protocol: str, address: str, port: int) -> str:
    return (f"registrations:\n  - id: TEST-{protocol}\n    customer: lab\n    protocols: [{protocol}]\n"
            f"    servers:\n      - {{address: '{address}', ports: [{port}]}}\n")


def _daemon(lb: Lab, cfg: Path, name: str = "daemon") -> subprocess.Popen[bytes]:
    p = lb.spawn(lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)], name)
    lb.wait_for_log(name, "ready:", timeout=20)
    return p


def _queued(lb: Lab, queue: int = 5) -> int:
    """Packets sent to userspace so far on `queue` (/proc/net/netfilter/nfnetlink_queue)."""
    text = lb.run(lb.router, "cat", "/proc/net/netfilter/nfnetlink_queue").stdout
    for f in (ln.split() for ln in text.splitlines()):
        if f and int(f[0]) == queue:
            return int(f[7])
    raise AssertionError(f"queue {queue} not bound:\n{text}")


def _blocked_lines(lb: Lab) -> list[str]:
    return [ln for ln in lb.log("daemon").splitlines() if "decided" in ln and " block" in ln]


def test_unregistered_wireguard_is_blocked_in_enforce_mode(tmp_path: Path) -> None:
    require_tools(*WG_TOOLS)
    with lab(tmp_path) as lb:
        _daemon(lb, _config(tmp_path, "enforce"))
        client_if, _ = start_wireguard(lb, tmp_path / "wg")
        # the first tunnel packet makes wireguard-go send its handshake initiation
        lb.run(lb.client, "ping", "-c1", "-W1", WG_SERVER_IP, check=False)
        lb.wait_for_log("daemon", "decided vpn_tunnel wireguard confirmed block udp", timeout=20)
        assert not ping_until(lb, lb.client, WG_SERVER_IP, timeout=4)
        assert wg_handshakes(lb, client_if) == 0
        assert lb.run(lb.client, "ping", "-c1", "-W2", SERVER_IP, check=False).returncode == 0


def test_unregistered_wireguard_passes_in_monitor_mode(tmp_path: Path) -> None:
    require_tools(*WG_TOOLS)
    with lab(tmp_path) as lb:
        _daemon(lb, _config(tmp_path, "monitor"))
        client_if, _ = start_wireguard(lb, tmp_path / "wg")
        assert ping_until(lb, lb.client, WG_SERVER_IP), lb.log("daemon")[-2000:]
        assert wg_handshakes(lb, client_if) == 1
        lb.wait_for_log("daemon", "decided vpn_tunnel wireguard confirmed report udp", timeout=10)


def test_registered_wireguard_passes_in_enforce_mode_without_being_queued(tmp_path: Path) -> None:
    require_tools(*WG_TOOLS)
    with lab(tmp_path) as lb:
        _daemon(lb, _config(tmp_path, "enforce", registry=_registered("wireguard", SERVER_IP, WG_PORT)))
        assert "1 registered endpoints bypass the queue" in lb.log("daemon")
        before = _queued(lb)
        client_if, _ = start_wireguard(lb, tmp_path / "wg")
        assert ping_until(lb, lb.client, WG_SERVER_IP), lb.log("daemon")[-2000:]
        assert wg_handshakes(lb, client_if) == 1
        assert _queued(lb) == before
        assert "wireguard" not in lb.log("daemon")


def test_unregistered_openvpn_over_ipv6_is_blocked(tmp_path: Path) -> None:
    require_tools(*BASE_TOOLS, "openvpn", "openssl")
    with lab(tmp_path) as lb:
        _daemon(lb, _config(tmp_path, "enforce"))
        server, client = openvpn6_configs(tmp_path, make_pki(tmp_path / "pki"))
        lb.spawn(lb.server, ["openvpn", "--config", str(server)], "ovpn6-server")
        lb.wait_until(lb.server, ["sh", "-c", f"ss -lun | grep -q '\\[{SERVER_IP6}\\]:{OVPN_PORT} '"])
        lb.spawn(lb.client, ["openvpn", "--config", str(client)], "ovpn6-client")
        lb.wait_for_log("daemon", "decided vpn_tunnel openvpn confirmed block udp", timeout=20)
        assert [ln for ln in _blocked_lines(lb) if SERVER_IP6 in ln and f":{OVPN_PORT} " in ln], \
            lb.log("daemon")[-2000:]
        assert not ping_until(lb, lb.client, OVPN6_TUN_SERVER_IP, timeout=3)
        assert "Initialization Sequence Completed" not in lb.log("ovpn6-client")
        assert lb.run(lb.client, "ping", "-6", "-c1", "-W2", SERVER_IP6, check=False).returncode == 0


def test_dns_https_and_a_sip_call_are_unaffected_in_enforce_mode(tmp_path: Path) -> None:
    require_tools(*BASE_TOOLS, "openssl", "curl", "sipp")
    with lab(tmp_path) as lb:
        start_dns(lb)
        start_sip_uas(lb)
        pki = make_pki(tmp_path / "pki")
        lb.spawn(lb.server, ["openssl", "s_server", "-quiet", "-www", "-accept", f"{SERVER_IP}:8443",
                             "-cert", str(pki / "server.crt"), "-key", str(pki / "server.key")], "https")
        lb.wait_until(lb.server, ["sh", "-c", "ss -ltn | grep -q ':8443 '"])
        # the bulk VoIP rule is on and blocking: one call is far below it
        _daemon(lb, _config(tmp_path, "enforce", voip="  voip: {bulk_calls: 3, bulk_action: block}\n"))
        before = _queued(lb)
        assert dns_query(lb) == DNS_ANSWER
        # query and answer both went through the daemon (two packets cannot decide a flow: it stays
        # undecided, which passes)
        assert _queued(lb) - before >= 2
        r = lb.run(lb.client, "curl", "-sS", "-k", "--max-time", "10", "-o", "/dev/null",
                   "-w", "%{http_code}", f"https://{SERVER_IP}:8443/", check=False, timeout=20)
        assert r.stdout == "200", r.stderr
        code, stats = sip_call(lb, tmp_path / "uac_stats.csv")
        assert code == 0, stats
        header, *rows = [ln.split(";") for ln in stats.splitlines() if ln]
        assert int(rows[-1][header.index("SuccessfulCall(C)")]) == 1, stats
        assert int(rows[-1][header.index("FailedCall(C)")]) == 0, stats
        # the daemon was in the path, classified the TLS and SIP flows and blocked nothing
        log = lb.log("daemon")
        assert "decided benign tls confirmed allow tcp 198.51.100.2:" in log, log[-3000:]
        assert f"-> {SERVER_IP}:5060 (monitor mode)" in log, log[-3000:]
        assert _blocked_lines(lb) == []


def _tree(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(k) for k in kids)]


@pytest.mark.parametrize("queues", [1, 2])
def test_daemon_keeps_only_net_admin_and_net_raw_and_still_reloads(tmp_path: Path, queues: int) -> None:
    require_tools(*BASE_TOOLS)
    with lab(tmp_path) as lb:
        cfg = _config(tmp_path, "enforce", queues=queues)
        daemon = _daemon(lb, cfg)
        lb.wait_for_log("daemon", "privileges dropped: effective capabilities cap_net_admin, cap_net_raw",
                        timeout=10)
        assert "firewall backend: " in lb.log("daemon")
        procs = _tree(daemon.pid)
        assert len(procs) == (1 if queues == 1 else 3)
        # capabilities are per thread: every thread (status server, reporter, kernel stats ...) is checked
        tasks = [f"{pid}/task/{tid}" for pid in procs for tid in os.listdir(f"/proc/{pid}/task")]
        assert len(tasks) > len(procs)  # the main process runs threads besides the packet loop
        for task in tasks:
            caps = capabilities(task)
            assert (caps["CapEff"], caps["CapPrm"], caps["CapBnd"], caps["CapInh"], caps["CapAmb"]) == \
                (KEPT, KEPT, KEPT, 0, 0), (task, caps)
        # a registry change still refreshes the kernel rules (iptables-restore runs with what is left)
        (tmp_path / "registry.yaml").write_text(_registered("wireguard", SERVER_IP, WG_PORT))
        os.kill(daemon.pid, signal.SIGHUP)
        lb.wait_for_log("daemon", "rules refreshed: 1 registered endpoints bypass the queue", timeout=10)
        saved = lb.run(lb.router, "iptables-save").stdout
        assert f"--ctorigdst {SERVER_IP} --ctorigdstport {WG_PORT} -j RETURN" in saved
        # and stop still removes every rule
        lb.stop("daemon")
        assert daemon.returncode == 0, lb.log("daemon")[-2000:]
        for tool in ("iptables-save", "ip6tables-save"):
            assert "TUNNELWATCH" not in lb.run(lb.router, tool).stdout


def test_nft_backend_ruleset_loads_and_enforces_marks_in_the_kernel(tmp_path: Path) -> None:
    """Everything of the nftables backend but the queue statement (absent on this kernel: the probe says so
    and the daemon picks iptables); the daemon's verdict is simulated by setting the mark in its place."""
    require_tools("nft", "conntrack", "ping")
    with lab(tmp_path) as lb:
        probe = lb.run(lb.router, sys.executable, "-c",
                       "from tunnelwatch.inline.firewall import choose_backend; "
                       "print(*choose_backend(), sep='|')")
        backend, why = probe.stdout.strip().split("|", 1)
        if backend == "iptables":
            assert "nft queue expression unavailable" in why
        assert lb.run(lb.router, "nft", "list", "tables").stdout.strip() == ""  # the probe left nothing
        spec = firewall.Spec(queue_num=5, bypass=(firewall.Bypass(f"{SERVER_IP6}/128"),), backend="nftables")
        queue_stmt = "meta mark set meta mark | 0x08000000 queue num 5 bypass"
        script = firewall.nft_script(spec)
        assert queue_stmt in script
        # decided on the reply, as the daemon does (a flow dropped on its first packet never gets a
        # confirmed conntrack entry to carry the connmark)
        drop = script.replace(queue_stmt, f"ct state established meta mark set 0x{firewall.MARK_DROP:x}")
        for _ in range(2):  # loading again replaces the table: idempotent
            lb.run(lb.router, "nft", "-f", "-", input=drop)
        listing = lb.run(lb.router, "nft", "list", "ruleset").stdout
        assert listing.count("table inet tunnelwatch") == 1 and listing.count("chain queue_forward") == 1
        # "the daemon" marks every new connection blocked: dropped in the kernel, saved in the connmark
        assert lb.run(lb.client, "ping", "-c1", "-W1", SERVER_IP, check=False).returncode != 0
        # a registered endpoint (any protocol to it) never reaches the queue statement
        assert lb.run(lb.client, "ping", "-6", "-c1", "-W2", SERVER_IP6, check=False).returncode == 0
        # the decision was saved in the connmark: later packets are handled by the kernel alone
        marked = lb.run(lb.router, "conntrack", "-L", "-p", "icmp", "--mark",
                        f"0x{firewall.MARK_DROP:x}/0x{firewall.MARK_MASK:x}", check=False).stdout
        assert f"dst={SERVER_IP}" in marked, marked
        allow = script.replace(queue_stmt, f"meta mark set 0x{firewall.MARK_ALLOW:x}")
        lb.run(lb.router, "nft", "-f", "-", input=allow)
        assert lb.run(lb.client, "ping", "-c1", "-W2", SERVER_IP, check=False).returncode == 0
        lb.run(lb.router, "nft", "delete", "table", "inet", firewall.NFT_TABLE)
        assert lb.run(lb.router, "nft", "list", "ruleset").stdout.strip() == ""
