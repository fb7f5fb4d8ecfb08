"""`tunnelwatch lab`, the demo: run as a user would, then check its report and that it left nothing behind."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.netns import can_run_lab, require_tools, sh
from tunnelwatch.lab import demo

TOOLS = ("ip", "ss", "ping", "iptables", "ip6tables", "iptables-save", "iptables-restore", "openvpn",
         "openssl", "curl", "wireguard-go", "wg", "sipp")


def _row(out: str, scenario: str) -> str:
    rows = [ln for ln in out.splitlines() if ln.startswith(scenario)]
    assert len(rows) == 1, out
    return rows[0]


def _daemon_lines(out: str, scenario: str) -> list[str]:
    """The indented daemon lines printed under a scenario's row."""
    lines = out.splitlines()
    i = lines.index(_row(out, scenario))
    block = []
    for ln in lines[i + 1:]:
        if not ln.startswith("    "):
            break
        block.append(ln.strip())
    return block


@pytest.mark.integration
def test_lab_demo_blocks_unregistered_tunnels_and_cleans_up() -> None:
    reason = can_run_lab()
    if reason:
        pytest.skip(reason)
    require_tools(*TOOLS)
    r = subprocess.run([sys.executable, "-m", "tunnelwatch", "lab"], capture_output=True, text=True,
                       timeout=180)
    out, err = r.stdout, r.stderr
    assert r.returncode == 0, f"{out}\n{err}"
    # progress on stderr, numbered
    assert "[1/7] building namespaces" in err and "[7/7] SIP call" in err
    row = _row(out, "OpenVPN/UDP unregistered")
    assert re.search(r"blocked\s+tunnel down, ping \S+ through it fails\s+ok$", row), row
    assert any(d.startswith("daemon: decided vpn_tunnel openvpn confirmed block udp")
               for d in _daemon_lines(out, "OpenVPN/UDP unregistered"))
    row = _row(out, "OpenVPN/UDP registered")
    assert re.search(r"allowed\s+tunnel up, ping \S+ through it ok\s+ok$", row), row
    assert _daemon_lines(out, "OpenVPN/UDP registered") == [
        "(registered endpoint: the kernel bypasses the queue, no packet reached the daemon)"]
    row = _row(out, "WireGuard unregistered")
    assert re.search(r"blocked\s+ping \S+ through the tunnel fails\s+ok$", row), row
    assert any("decided vpn_tunnel wireguard confirmed block" in d
               for d in _daemon_lines(out, "WireGuard unregistered"))
    row = _row(out, "HTTPS (curl)")
    assert re.search(r"allowed\s+curl: HTTP 200\s+ok$", row), row
    assert not any(" block" in d for d in _daemon_lines(out, "HTTPS (curl)"))
    assert re.search(r"allowed\s+call completed.*\s+ok$", _row(out, "SIP call (sipp)"))
    assert "5/5 scenarios as expected" in out
    # nothing left behind: namespaces (with their veths and rules), processes, wireguard-go sockets
    m = re.search(r"building namespaces (tw[0-9a-f]{6})-\S+ and a throw-away PKI in (\S+)", err)
    assert m, err
    prefix, work = m.groups()
    assert not Path(work).exists()
    assert prefix not in sh("ip", "netns", "list").stdout
    assert not list(Path("/var/run/wireguard").glob(f"{prefix}*"))
    ps = sh("ps", "-eo", "args").stdout
    assert not [ln for ln in ps.splitlines() if prefix in ln or work in ln]


def test_lab_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "can_run_lab", lambda: "needs root (network namespaces)")
    err = io.StringIO()
    assert demo.main(out=io.StringIO(), err=err) == 2
    assert "needs root" in err.getvalue() and "run it as root" in err.getvalue()


def test_lab_names_the_missing_debian_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(demo, "can_run_lab", lambda: "")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no tool is found
    err = io.StringIO()
    assert demo.main(out=io.StringIO(), err=err) == 2
    msg = err.getvalue()
    assert "missing Debian packages:" in msg
    for pkg in ("iproute2", "iptables", "openvpn", "openssl", "curl"):
        assert pkg in msg, msg
    assert "apt-get install" in msg
