"""The per-host view: one LAN host's recent decisions with what, why and evidence, from the CLI (unix
socket) and from /api/status?host=, and the explain line that says what would let a block through."""

from __future__ import annotations

import argparse
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tunnelwatch.appliance.hostview import host_decisions, render_host
from tunnelwatch.appliance.state import StatusState
from tunnelwatch.appliance.statusweb import StatusServer, cli_status
from tunnelwatch.record import FlowRecord

TOKEN = "host-view-token-123456"
HOST, OTHER = "192.168.1.20", "192.168.1.30"


def _rec(src: str, **kw: Any) -> FlowRecord:
    base: dict[str, Any] = dict(
        ts=1700000000.0, src=src, sport=51000, dst="203.0.113.7", dport=1194, transport="udp",
        klass="vpn_tunnel", protocol="openvpn", confidence="confirmed", action="block", reason="unregistered",
        evidence=("P_CONTROL_HARD_RESET_CLIENT_V2", "server reset acks the session id"))
    base.update(kw)
    return FlowRecord(**base)


def _state() -> StatusState:
    st = StatusState(device_id="cpe-7", version="0", mode="enforce")
    st.set(health="ok")
    st.record_decision(_rec(HOST))
    st.record_decision(_rec(OTHER, protocol="wireguard", dport=51820))
    st.record_decision(_rec(HOST, action="allow", reason="registered ACME-1", registration_id="ACME-1",
                            dst="198.51.100.9"))
    return st


def test_the_view_shows_only_that_host_with_why_and_evidence() -> None:
    snap = _state().snapshot()
    rows = host_decisions(snap, HOST)
    assert [r["action"] for r in rows] == ["allow", "block"]  # newest first, the other host left out
    text = render_host(snap, HOST)
    assert OTHER not in text and "wireguard" not in text
    assert "action:   BLOCK: unregistered" in text and "registration: ACME-1" in text
    assert "evidence: P_CONTROL_HARD_RESET_CLIENT_V2; server reset acks the session id" in text
    assert ("tunnelwatch explain --host 192.168.1.20 --server 203.0.113.7 --port 1194 --transport udp "
            "--protocol openvpn") in text
    assert "none among" in render_host(snap, "192.168.1.99")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[StatusServer, str]]:
    srv = StatusServer(_state(), socket_path=str(tmp_path / "status.sock"), http=[("127.0.0.1", 0)],
                       token=TOKEN)
    srv.start()
    try:
        yield srv, str(tmp_path / "status.sock")
    finally:
        srv.stop()


def test_api_filters_by_host(served: tuple[StatusServer, str]) -> None:
    srv, _ = served
    req = urllib.request.Request(f"http://127.0.0.1:{srv.bound[0][1]}/api/status?host={OTHER}",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        snap = json.loads(r.read())
    assert [d["protocol"] for d in snap["recent"]] == ["wireguard"]


def test_cli_status_host(served: tuple[StatusServer, str], capsys: pytest.CaptureFixture[str]) -> None:
    _, sock = served
    assert cli_status(argparse.Namespace(socket=sock, json=False, host=HOST)) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{HOST}: 2 recent tagged or blocked flow(s)") and "BLOCK: unregistered" in out
    assert cli_status(argparse.Namespace(socket=sock, json=False, host="no such\x1bhost")) == 2
