"""The registry of registered VPNs: strict parsing, lookup rules, and keeping the last good file."""

from __future__ import annotations

import datetime as dt
import logging
import socket
from pathlib import Path

import pytest

from tunnelwatch.classify.flow import Flow, flow_key
from tunnelwatch.classify.packet import TCP, UDP, Packet
from tunnelwatch.config.runconfig import ConfigError
from tunnelwatch.policy.registry import Registry, parse_registry

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
DOC = """\
registrations:
  - id: PTA-1
    customer: ACME
    protocols: [openvpn, wireguard]
    servers:
      - {address: 203.0.113.10, ports: [1194, 51820]}
      - 192.0.2.0/28
    lan_hosts: [198.51.100.20, 198.51.100.128/25]
    valid_from: 2026-01-01
    valid_until: 2026-06-30
  - id: PTA-2
    servers: ["2001:db8:2::/64"]
"""


def _flow(src: str, dst: str, dport: int, proto: int = UDP) -> Flow:
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    version = 6 if fam == socket.AF_INET6 else 4
    a, b = socket.inet_pton(fam, src), socket.inet_pton(fam, dst)
    pkt = Packet(0.0, version, a, b, proto, 40000, dport, 100, b"x")
    return Flow(flow_key(pkt), pkt)


@pytest.fixture
def reg() -> Registry:
    return Registry(parse_registry(DOC, "r.yaml"))


def test_parses_entries(reg: Registry) -> None:
    e = reg.entries[0]
    assert (e.id, e.customer, e.protocols) == ("PTA-1", "ACME", ("openvpn", "wireguard"))
    assert [str(s.net) for s in e.servers] == ["203.0.113.10/32", "192.0.2.0/28"]
    assert e.servers[0].ports == (1194, 51820)
    assert e.valid_from == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert e.valid_until == dt.datetime(2026, 7, 1, tzinfo=dt.UTC)  # inclusive: to the end of that day


def test_lookup_matches_server_port_lan_host_and_protocol(reg: Registry) -> None:
    hit = reg.lookup(_flow("198.51.100.20", "203.0.113.10", 1194), "openvpn", NOW)
    assert hit is not None and hit.id == "PTA-1"
    assert reg.lookup(_flow("198.51.100.200", "192.0.2.5", 443, TCP), "wireguard", NOW) is not None


@pytest.mark.parametrize(("src", "dst", "dport", "protocol"), [
    ("198.51.100.20", "203.0.113.10", 1195, "openvpn"),   # wrong port
    ("198.51.100.21", "203.0.113.10", 1194, "openvpn"),   # LAN host not listed
    ("198.51.100.20", "203.0.113.11", 1194, "openvpn"),   # other server
    ("198.51.100.20", "203.0.113.10", 1194, "ipsec"),     # protocol not registered
    ("203.0.113.10", "198.51.100.20", 1194, "openvpn"),   # server side initiating: not the registration
])
def test_lookup_near_misses(reg: Registry, src: str, dst: str, dport: int, protocol: str) -> None:
    assert reg.lookup(_flow(src, dst, dport), protocol, NOW) is None


def test_validity_window(reg: Registry) -> None:
    f = _flow("198.51.100.20", "203.0.113.10", 1194)
    assert reg.lookup(f, "openvpn", dt.datetime(2025, 12, 31, 23, 59, tzinfo=dt.UTC)) is None
    assert reg.lookup(f, "openvpn", dt.datetime(2026, 6, 30, 23, 59, tzinfo=dt.UTC)) is not None
    assert reg.lookup(f, "openvpn", dt.datetime(2026, 7, 1, tzinfo=dt.UTC)) is None
    assert [e.id for e in reg.active(dt.datetime(2026, 7, 1, tzinfo=dt.UTC))] == ["PTA-2"]


def test_ipv6_entry_without_protocols_covers_any_tunnel(reg: Registry) -> None:
    hit = reg.lookup(_flow("2001:db8:1::2", "2001:db8:2::2", 500), "ike", NOW)
    assert hit is not None and hit.id == "PTA-2"


@pytest.mark.parametrize(("text", "words"), [
    ("registrations:\n  - id: X\n    servers: [203.0.113.300]\n", "r.yaml:3:15: server must be an IP"),
    ("registrations:\n  - id: X\n    servers: [{address: 1.2.3.4, ports: [70000]}]\n",
     "r.yaml:3:42: port must be between"),
    ("registrations:\n  - id: X\n    server: [1.2.3.4]\n", "r.yaml:3:5: unknown key 'server'"),
    ("registrations:\n  - servers: [1.2.3.4]\n", "r.yaml:2:5: registration needs id"),
    ("registrations:\n  - {id: X, servers: [1.2.3.4], valid_until: someday}\n", "must be a date"),
    ("registrations:\n  - {id: X, servers: [1.2.3.4]}\n  - {id: X, servers: [1.2.3.5]}\n",
     "r.yaml:3:5: duplicate registration id 'X'"),
    ("registrations:\n  - {id: X, servers: []}\n", "at least one endpoint"),
])
def test_bad_registry_is_rejected_with_location(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_registry(text, "r.yaml")
    assert words in "\n".join(ei.value.problems), ei.value.problems


def test_empty_registry_is_fine() -> None:
    assert parse_registry("", "r.yaml") == []
    assert parse_registry("registrations: []\n", "r.yaml") == []


def test_reload_keeps_the_last_good_registry(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(DOC)
    reg = Registry.load(path)
    assert len(reg.entries) == 2
    path.write_text("registrations:\n  - id: broken\n    servers: [not-an-ip]\n")
    with caplog.at_level(logging.ERROR):
        assert reg.reload() is False
    assert len(reg.entries) == 2
    assert "registry.yaml:3:15" in caplog.text and "keeping the last good registry" in caplog.text
    path.unlink()
    assert reg.reload() is False and len(reg.entries) == 2
    path.write_text("registrations:\n  - {id: NEW, servers: [192.0.2.1]}\n")
    assert reg.reload() is True
    assert [e.id for e in reg.entries] == ["NEW"]


def test_example_registry_in_the_repo_is_valid() -> None:
    path = Path(__file__).resolve().parents[3] / "config" / "registry.yaml"
    assert [e.id for e in Registry.load(path).entries] == ["PTA-2026-000123"]
