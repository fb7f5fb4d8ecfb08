"""The appliance side of the daemon: the device id (configured, derived from the machine id, never the raw
id), the strongest policy mode, the registry version, LAN listening addresses, the mDNS TXT record, and
reloads that restart only the servers whose settings changed."""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest

from tunnelwatch import __version__
from tunnelwatch.appliance import appliance as appliance_mod
from tunnelwatch.appliance.appliance import (
    Appliance,
    device_id,
    http_addresses,
    interface_addresses,
    mode_of,
    registry_version,
)
from tunnelwatch.config.runconfig import RunConfig, parse_config
from tunnelwatch.policy.registry import Registry

TOKEN = "0123456789abcdef0123"


class _Server:
    """Stands in for StatusServer: records what it was started with."""

    made: list[_Server] = []

    def __init__(self, state: Any, *, socket_path: str | None, http: list[tuple[str, int]],
                 token: str | None, token_file: str | None = None) -> None:
        self.socket_path, self.http, self.token, self.token_file = socket_path, http, token, token_file
        self.started = self.stopped = False
        _Server.made.append(self)

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture(autouse=True)
def fake_server(monkeypatch: pytest.MonkeyPatch) -> None:
    _Server.made.clear()
    monkeypatch.setattr(appliance_mod, "StatusServer", _Server)


def test_the_configured_device_id_wins() -> None:
    assert device_id(parse_config("discovery: {device_id: cpe-42}\n")) == "cpe-42"


def test_the_device_id_is_derived_from_the_machine_id_never_the_raw_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mid = tmp_path / "machine-id"
    mid.write_text("0123456789abcdef0123456789abcdef\n")
    monkeypatch.setattr(appliance_mod, "_MACHINE_ID", mid)
    got = device_id(RunConfig())
    want = "tw-" + hashlib.sha256(b"tunnelwatch:0123456789abcdef0123456789abcdef").hexdigest()[:12]
    assert got == want and "0123456789abcdef" not in got
    monkeypatch.setattr(appliance_mod, "_MACHINE_ID", tmp_path / "missing")
    assert device_id(RunConfig()) == socket.gethostname()


@pytest.mark.parametrize(("text", "mode"), [
    ("policy: {}\n", "monitor"),
    ("policy: {klass: {vpn_tunnel: {mode: grace, until: 2099-01-01}}}\n", "grace"),
    ("policy: {klass: {voip: {mode: grace, until: 2099-01-01}}, protocol: {tor: enforce}}\n", "enforce"),
    ("policy: {default: enforce}\n", "enforce"),
])
def test_mode_is_the_strongest_any_rule_uses(text: str, mode: str) -> None:
    assert mode_of(parse_config(text)) == mode


def test_registry_version_hashes_the_file_and_counts_entries(tmp_path: Path) -> None:
    assert registry_version(Registry()) == "none (0 entries)"
    reg = tmp_path / "registry.yaml"
    reg.write_text("registrations: []\n")
    digest = hashlib.sha256(b"registrations: []\n").hexdigest()[:12]
    assert registry_version(Registry.load(reg)) == f"sha256:{digest} (0 entries)"
    assert registry_version(Registry([], tmp_path / "gone.yaml")) == "sha256:unreadable (0 entries)"


def test_interface_addresses_of_loopback_and_of_nothing() -> None:
    addrs = interface_addresses("lo")
    assert "127.0.0.1" in addrs
    assert not any(ipaddress.ip_address(a).is_link_local for a in addrs)
    assert interface_addresses("no-such-if0") == []


def test_http_addresses_resolve_interfaces_and_keep_addresses(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    tok = tmp_path / "status.token"
    tok.write_text(TOKEN)
    tok.chmod(0o600)
    monkeypatch.setattr(appliance_mod, "interface_addresses",
                        lambda name: {"br-lan": ["192.168.1.1", "fd00::1"]}.get(name, []))
    cfg = parse_config(f"status:\n  token_file: {tok}\n  port: 9000\n  listen: [br-lan, 192.168.1.1, wlan9, "
                       "10.0.0.1]\n")
    assert http_addresses(cfg) == [("192.168.1.1", 9000), ("fd00::1", 9000), ("10.0.0.1", 9000)]


def test_the_txt_record_names_id_version_and_api_but_not_the_mode() -> None:
    app = Appliance(parse_config("discovery: {device_id: cpe-42}\npolicy: {default: enforce}\n"
                                 "queue: {count: 1}\n"), Registry())
    assert app.properties() == {"id": "cpe-42", "version": __version__, "status": "/api/status"}
    snap = app.state.snapshot()
    assert (snap["device_id"], snap["mode"], snap["queues"]) == ("cpe-42", "enforce", [0])


def test_reload_restarts_the_status_server_only_when_its_settings_change(tmp_path: Path) -> None:
    cfg = parse_config(f"status: {{socket: {tmp_path / 'a.sock'}}}\n")
    app = Appliance(cfg, Registry())
    app.start_status()
    (first,) = _Server.made
    assert first.started and first.socket_path == str(tmp_path / "a.sock") and first.http == []
    app.apply(parse_config(f"status: {{socket: {tmp_path / 'a.sock'}}}\npolicy: {{default: enforce}}\n"),
              Registry())
    assert len(_Server.made) == 1 and not first.stopped
    assert app.state.snapshot()["mode"] == "enforce"
    app.apply(parse_config(f"status: {{socket: {tmp_path / 'b.sock'}}}\n"), Registry())
    assert first.stopped and len(_Server.made) == 2
    assert _Server.made[1].socket_path == str(tmp_path / "b.sock")
    app.stop()
    assert _Server.made[1].stopped and app.server is None


def test_a_status_server_that_cannot_start_is_logged_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: Any, **k: Any) -> None:
        raise OSError("address in use")

    monkeypatch.setattr(appliance_mod, "StatusServer", refuse)
    app = Appliance(RunConfig(), Registry())
    app.start_status()
    assert app.server is None


def test_no_interfaces_means_no_advertisement() -> None:
    app = Appliance(RunConfig(), Registry())
    app.start_discovery()
    assert app.advertiser is None
    app.stop_discovery()
    app.stop()


def test_the_status_server_is_told_where_the_token_lives(tmp_path: Path) -> None:
    tok = tmp_path / "status.token"
    tok.write_text(TOKEN)
    tok.chmod(0o600)
    app = Appliance(parse_config(f"status:\n  socket: null\n  token_file: {tok}\n  listen: [127.0.0.1]\n"),
                    Registry())
    app.start_status()
    (srv,) = _Server.made
    assert srv.token == TOKEN and srv.token_file == str(tok) and srv.http == [("127.0.0.1", 8787)]
    app.stop()


def test_the_registry_rows_reach_the_status_state() -> None:
    from tunnelwatch.policy.registry import parse_registry

    reg = Registry(parse_registry("registrations:\n  - id: A-1\n    customer: Acme\n"
                                  "    protocols: [wireguard]\n    servers: [198.51.100.7]\n"
                                  "    valid_until: 2030-01-01\n"))
    rows = Appliance(RunConfig(), reg).state.snapshot()["registrations"]
    assert isinstance(rows, list) and rows[0]["customer"] == "Acme" and rows[0]["protocols"] == ["wireguard"]
