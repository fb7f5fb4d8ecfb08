"""The dry-run answers as the daemon would decide: registered passes (and says by which registration),
unregistered is blocked (and says which registration of that host or server does not cover it, and why)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

from tunnelwatch.config.runconfig import parse_config
from tunnelwatch.policy.explain import explain
from tunnelwatch.policy.registry import Registry, parse_registry

NOW = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
REG = ("registrations:\n"
       "  - id: ACME-1\n    customer: ACME call centre\n    protocols: [openvpn]\n"
       "    servers: [{address: 203.0.113.0/24, ports: [1194]}]\n    lan_hosts: [192.168.1.20]\n"
       "  - id: OLD-2\n    protocols: [wireguard]\n    servers: [198.51.100.9]\n"
       "    valid_until: 2026-01-31\n")
CFG = "policy: {klass: {vpn_tunnel: enforce}, protocol: {sip: monitor}}\n"


def _explain(**kw: object) -> object:
    reg = Registry(parse_registry(REG, "reg.yaml"))
    return explain(parse_config(CFG), reg, now=NOW, **kw)  # type: ignore[arg-type]


def test_registered_flow_passes_by_its_registration_and_the_kernel_bypass() -> None:
    a = _explain(host="192.168.1.20", server="203.0.113.7", port=1194, protocol="openvpn")
    assert (a.action, a.registration) == ("allow", "ACME-1 (ACME call centre)")  # type: ignore[attr-defined]
    assert a.rule == "policy.klass.vpn_tunnel: enforce (min confirmed, drop)"  # type: ignore[attr-defined]
    assert a.bypass is not None and "never queued" in a.bypass  # type: ignore[attr-defined]


def test_unregistered_cases_are_blocked_with_the_reason_each_registration_does_not_apply() -> None:
    other_host = _explain(host="192.168.1.21", server="203.0.113.7", port=1194, protocol="openvpn")
    assert other_host.action == "block" and other_host.bypass is None  # type: ignore[attr-defined]
    assert other_host.near == [  # type: ignore[attr-defined]
        "ACME-1 (ACME call centre): LAN hosts 192.168.1.20/32 (not 192.168.1.21)"]
    wrong_port = _explain(host="192.168.1.20", server="203.0.113.7", port=443, transport="tcp",
                          protocol="openvpn")
    assert wrong_port.action == "block"  # type: ignore[attr-defined]
    assert "servers 203.0.113.0/24 ports 1194 (not 203.0.113.7:443)" in wrong_port.near[0]  # type: ignore
    expired = _explain(host="192.168.1.5", server="198.51.100.9", port=51820, protocol="wireguard")
    assert expired.action == "block" and "expired" in expired.near[0]  # type: ignore[attr-defined]


def test_protocol_rule_wins_and_benign_is_not_a_tunnel() -> None:
    sip = _explain(host="192.168.1.5", server="198.51.100.1", port=5060, protocol="sip")
    assert (sip.action, sip.rule) == ("report", "policy.protocol.sip: monitor (min confirmed, drop)")  # type: ignore
    tls = _explain(host="192.168.1.20", server="198.51.100.1", port=443, protocol="tls")
    assert (tls.action, tls.reason, tls.near) == ("allow", "not a tunnel", [])  # type: ignore[attr-defined]
    weak = _explain(host="192.168.1.5", server="198.51.100.1", port=1194, protocol="openvpn",
                    confidence="heuristic")
    assert weak.action == "report" and "below confirmed" in weak.reason  # type: ignore[attr-defined]


def test_cli_exit_codes(tmp_path: Path) -> None:
    (tmp_path / "reg.yaml").write_text(REG)
    (tmp_path / "tw.yaml").write_text("registry: reg.yaml\nstatus: {socket: null}\n" + CFG)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tunnelwatch", "explain", "--config",
                               str(tmp_path / "tw.yaml"), *args], capture_output=True, text=True, timeout=60)

    ok = run("--host", "192.168.1.20", "--server", "203.0.113.7", "--port", "1194", "--protocol", "openvpn")
    assert ok.returncode == 0 and "ALLOW: registered ACME-1" in ok.stdout
    blocked = run("--host", "192.168.1.21", "--server", "203.0.113.7", "--port", "1194",
                  "--protocol", "openvpn")
    assert blocked.returncode == 1 and "BLOCK: unregistered" in blocked.stdout
    mixed = run("--host", "192.168.1.21", "--server", "2001:db8::1", "--protocol", "openvpn")
    assert mixed.returncode == 2 and "both be IPv4 or both IPv6" in mixed.stderr
