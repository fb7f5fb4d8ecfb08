"""Real tunnels between lab namespaces, captured on the router's WAN side and classified offline.

Each test brings a real peer pair up (OpenVPN in its TLS and static-key modes, wireguard-go, or plain
HTTPS + DNS), proves the tunnel carries traffic with a ping through it, captures with tcpdump on the
router's wan0, then asserts the label of the tunnel flow and that no other flow in the capture is flagged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from peers_vpn import (
    DNS_PORT,
    HTTPS_PORT,
    OPENVPN_PORT,
    WG_PORT,
    WG_SERVER_TUN_IP,
    dns_query,
    openvpn_static,
    openvpn_tls,
    ping_through,
    start_dns,
    start_https,
    start_openvpn,
    start_wireguard,
)

from support.netns import CLIENT_IP, CLIENT_IP6, SERVER_IP, SERVER_IP6, Lab, lab, require_tools
from tunnelwatch.offline.classify import classify_file

pytestmark = pytest.mark.integration

Record = dict[str, Any]
BENIGN = ("benign", "unknown")
GOLDEN = Path(__file__).resolve().parent.parent / "data" / "captures"


def _capture(tmp_path: Path, tools: tuple[str, ...], drive: Callable[[Lab], None]) -> list[Record]:
    """Run `drive` in a fresh lab while tcpdump records the router's WAN side; classify the capture."""
    require_tools("tcpdump", "ping", "ss", *tools)
    pcap = tmp_path / "wan0.pcap"
    with lab(tmp_path) as lb, lb.capture(lb.router, "wan0", pcap):
        drive(lb)
    return list(classify_file(str(pcap)))


def _flow(records: list[Record], transport: str, dport: int, client: str = CLIENT_IP,
          server: str = SERVER_IP) -> Record:
    """The one client->server flow of `transport` to `dport` (the client initiated it)."""
    hits = [r for r in records if r["transport"] == transport and r["dport"] == dport
            and r["src"] == client and r["dst"] == server]
    assert len(hits) == 1, f"expected one {transport}/{dport} flow from the client, got:\n{_table(records)}"
    return hits[0]


def _table(records: list[Record]) -> str:
    return "\n".join(f"  {r['src']}:{r['sport']} -> {r['dst']}:{r['dport']} {r['transport']} "
                     f"{r['klass']} {r['protocol']} {r['confidence']} {r['evidence']} pkts={r['packets']}"
                     for r in records)


def _assert_tunnel(records: list[Record], transport: str, dport: int, protocol: str, confidence: str,
                   client: str = CLIENT_IP, server: str = SERVER_IP) -> Record:
    """The tunnel flow carries the expected label; every other flow of the capture is unflagged."""
    rec = _flow(records, transport, dport, client, server)
    assert (rec["klass"], rec["protocol"], rec["confidence"]) == ("vpn_tunnel", protocol, confidence), \
        f"tunnel flow mislabelled:\n{_table([rec])}"
    assert rec["evidence"], "a flagged flow must say why"
    _assert_nothing_else_flagged(records, rec)
    return rec


def _assert_nothing_else_flagged(records: list[Record], tunnel: Record | None = None) -> None:
    flagged = [r for r in records if r is not tunnel and r["klass"] not in BENIGN]
    assert not flagged, f"flows wrongly flagged:\n{_table(flagged)}\nall flows:\n{_table(records)}"


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_openvpn_tls_mode(tmp_path: Path, proto: str) -> None:
    peers = openvpn_tls(tmp_path / "ovpn", proto)

    def drive(lb: Lab) -> None:
        start_openvpn(lb, peers)
        ping_through(lb, peers.server_tun_ip)

    records = _capture(tmp_path, ("openvpn", "openssl"), drive)
    rec = _assert_tunnel(records, proto, OPENVPN_PORT, "openvpn", "confirmed")
    assert any("server HARD_RESET_SERVER" in e for e in rec["evidence"])


@pytest.mark.parametrize("wrap", ["tls-auth", "tls-crypt"])
def test_openvpn_tls_wrapped_control_channel(tmp_path: Path, wrap: str) -> None:
    peers = openvpn_tls(tmp_path / "ovpn", "udp", wrap)

    def drive(lb: Lab) -> None:
        start_openvpn(lb, peers)
        ping_through(lb, peers.server_tun_ip)

    records = _capture(tmp_path, ("openvpn", "openssl"), drive)
    _assert_tunnel(records, "udp", OPENVPN_PORT, "openvpn", "confirmed")


def test_openvpn_static_key(tmp_path: Path) -> None:
    peers = openvpn_static(tmp_path / "ovpn")

    def drive(lb: Lab) -> None:
        start_openvpn(lb, peers)
        # Several sizes each way: static-key mode shows nothing but its framing, so the heuristic
        # needs a handful of packets of distinct lengths in both directions.
        ping_through(lb, peers.server_tun_ip, sizes=(56, 200, 500, 1000))

    records = _capture(tmp_path, ("openvpn",), drive)
    rec = _assert_tunnel(records, "udp", OPENVPN_PORT, "openvpn", "heuristic")
    assert any("static-key" in e for e in rec["evidence"])


@pytest.mark.parametrize("family", [4, 6])
def test_wireguard_go(tmp_path: Path, family: int) -> None:
    client, server = (CLIENT_IP, SERVER_IP) if family == 4 else (CLIENT_IP6, SERVER_IP6)

    def drive(lb: Lab) -> None:
        start_wireguard(lb, tmp_path / "wg", server)
        ping_through(lb, WG_SERVER_TUN_IP, sizes=(56, 300))

    records = _capture(tmp_path, ("wireguard-go", "wg"), drive)
    rec = _assert_tunnel(records, "udp", WG_PORT, "wireguard", "confirmed", client, server)
    assert rec["packets"] >= 4  # handshake pair plus data both ways


def test_plain_https_and_dns_are_not_flagged(tmp_path: Path) -> None:
    def drive(lb: Lab) -> None:
        start_https(lb, tmp_path / "web")
        start_dns(lb)
        r = lb.run(lb.client, "curl", "-sSk", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
                   f"https://{SERVER_IP}:{HTTPS_PORT}/", check=False, timeout=20)
        assert r.stdout == "200", f"curl: {r.stdout} {r.stderr}"
        assert dns_query(lb) == "192.0.2.1"

    records = _capture(tmp_path, ("openssl", "curl"), drive)
    https = _flow(records, "tcp", HTTPS_PORT)
    assert https["klass"] in BENIGN and https["protocol"] == "tls", _table([https])
    dns = _flow(records, "udp", DNS_PORT)
    assert dns["klass"] in BENIGN, _table([dns])
    _assert_nothing_else_flagged(records)


# Recorded by test_openvpn_static_key (OpenVPN 2.6.14, --secret, AES-256-CBC + HMAC-SHA1, UDP 1194; throw-away
# keys; filtered to the tunnel flow). In each, one client packet's ciphertext starts with a byte that reads as
# a TLS-mode hard reset with key id 0: 0x38 (HARD_RESET_CLIENT_V2) as the 3rd packet, 0x40
# (HARD_RESET_SERVER_V2) as the 7th. Static-key framing must still be recognised.
@pytest.mark.parametrize("name", ["openvpn_static_key_reset_lookalike.pcap",
                                  "openvpn_static_key_server_reset_lookalike.pcap"])
def test_golden_static_key_capture_with_reset_lookalike(name: str) -> None:
    records = list(classify_file(str(GOLDEN / name)))
    rec = _assert_tunnel(records, "udp", OPENVPN_PORT, "openvpn", "heuristic")
    assert any("static-key" in e for e in rec["evidence"]), _table([rec])
