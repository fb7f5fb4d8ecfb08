"""The appliance sections: the status token read from a private file (never shown), LAN-only listening
addresses, interface names, and discovery's device id, each error located as file:line:col."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tunnelwatch.config.appconfig import DEFAULT_SOCKET, read_secret
from tunnelwatch.config.runconfig import ConfigError, load_config, parse_config

DATA = Path(__file__).resolve().parents[2] / "data" / "config"
TOKEN = "0123456789abcdef0123"


def _copy(kind: str, tmp: Path, token_mode: int) -> Path:
    """The examples in a private directory: git does not keep file modes, the token checks need them."""
    dst = tmp / kind
    shutil.copytree(DATA / kind, dst)
    for tok in dst.rglob("*.token"):
        tok.chmod(token_mode)
    return dst


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        parse_config(text, "tw.yaml")
    return ei.value.problems


def _token(tmp: Path, text: str = TOKEN + "\n", mode: int = 0o600) -> Path:
    p = tmp / "status.token"
    p.write_text(text)
    p.chmod(mode)
    return p



def test_token_is_read_from_a_private_file_and_never_shown(tmp_path: Path) -> None:
    path = _copy("valid", tmp_path, 0o600) / "router_lan_status.yaml"
    cfg = load_config(path)
    token = (path.parent / "status.token").read_text().strip()
    assert cfg.status.token == token and cfg.status.listen == ("br-lan", "192.168.1.1", "fd00::1")
    assert token not in repr(cfg)
    (path.parent / "status.token").chmod(0o640)
    with pytest.raises(ConfigError, match="readable by group/others"):
        load_config(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_token_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    path = _copy("valid", tmp_path, 0o600) / "router_lan_status.yaml"
    os.chown(path.parent / "status.token", 65534, 65534)
    with pytest.raises(ConfigError, match="owned by uid 65534: chown root"):
        load_config(path)


def test_read_secret_takes_the_first_line_of_a_private_file(tmp_path: Path) -> None:
    assert read_secret(_token(tmp_path, f"  {TOKEN}  \nsecond line\n")) == TOKEN
    with pytest.raises(ValueError, match="at least 16 characters"):
        read_secret(_token(tmp_path, "short\n"))
    with pytest.raises(ValueError, match="at least 16 characters"):
        read_secret(_token(tmp_path, ""))
    with pytest.raises(ValueError, match=r"mode 0604.*chmod 600"):
        read_secret(_token(tmp_path, mode=0o604))
    with pytest.raises(ValueError, match="cannot read"):
        read_secret(tmp_path / "missing.token")


def test_status_defaults_and_socket_off() -> None:
    st = parse_config("policy: {}\n").status
    assert (st.socket, st.listen, st.port, st.token) == (DEFAULT_SOCKET, (), 8787, None)
    assert parse_config("status: {socket: null}\n").status.socket is None
    assert _problems("status: {socket: run/status.sock}\n") == [
        "tw.yaml:1:18: status.socket must be an absolute path or null (got 'run/status.sock')"]


def test_listening_without_a_token_is_refused_where_listen_is() -> None:
    assert _problems("status:\n  listen: [br-lan]\n") == [
        "tw.yaml:2:11: status.listen needs status.token_file: the HTTP API is only served with a token"]


@pytest.mark.parametrize(("item", "why"), [
    ("0.0.0.0", "listens on every interface, WAN included"),
    ("::", "listens on every interface, WAN included"),
    ("8.8.8.8", "is a global address (reachable from the Internet side)"),
])
def test_only_lan_addresses_may_serve_the_status_api(tmp_path: Path, item: str, why: str) -> None:
    tok = _token(tmp_path)
    problems = _problems(f"status:\n  token_file: {tok}\n  listen: [br-lan, '{item}']\n")
    assert problems == [f"tw.yaml:3:20: status.listen: {item} {why}: the status API is for the LAN only; "
                        "name the LAN interface (e.g. br-lan) or its address"]


def test_bad_interface_names_and_addresses_are_located(tmp_path: Path) -> None:
    tok = _token(tmp_path)
    problems = _problems(f"status:\n  token_file: {tok}\n  listen: [10.0.0.300, 'bad name', "
                         "a-very-long-interface-name]\n")
    assert [p.split(": ", 1)[0] for p in problems] == ["tw.yaml:3:12", "tw.yaml:3:24", "tw.yaml:3:36"]
    assert "status.listen item must be an interface name or an IP address, e.g. br-lan (got '10.0.0.300')" \
        in problems[0]
    assert _problems("discovery: {interfaces: [192.168.1.1]}\n") == [
        "tw.yaml:1:26: discovery.interfaces item must be an interface name, e.g. br-lan (got '192.168.1.1')"]


def test_listen_names_are_kept_once_in_order(tmp_path: Path) -> None:
    tok = _token(tmp_path)
    st = parse_config(f"status:\n  token_file: {tok}\n  listen: [br-lan, 192.168.1.1, br-lan]\n  port: 9000\n"
                      ).status
    assert (st.listen, st.port, st.token, st.token_file) == (("br-lan", "192.168.1.1"), 9000, TOKEN, tok)


def test_a_relative_token_file_is_found_next_to_the_config(tmp_path: Path) -> None:
    _token(tmp_path)
    cfg = tmp_path / "tw.yaml"
    cfg.write_text("status:\n  token_file: status.token\n  listen: [br-lan]\n")
    assert load_config(cfg).status.token == TOKEN


def test_discovery_device_id_and_switches() -> None:
    d = parse_config("discovery: {enabled: false, interfaces: [br-lan, wlan0], device_id: cpe-7.a_b}\n"
                     ).discovery
    assert (d.enabled, d.interfaces, d.device_id) == (False, ("br-lan", "wlan0"), "cpe-7.a_b")
    assert parse_config("discovery: {device_id: null}\n").discovery.device_id is None
    assert _problems("discovery: {device_id: 'cpe 7'}\n") == [
        "tw.yaml:1:24: discovery.device_id must be 1-63 letters, digits, '.', '_' or '-'"]
    assert _problems("discovery: {enabled: maybe}\n") == [
        "tw.yaml:1:22: discovery.enabled must be true or false (got 'maybe')"]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_read_secret_refuses_a_file_of_another_user(tmp_path: Path) -> None:
    tok = _token(tmp_path)
    os.chown(tok, 65534, 65534)
    with pytest.raises(ValueError, match="owned by uid 65534"):
        read_secret(tok)


def test_uplink_grace_defaults_to_600_s_and_is_checked() -> None:
    assert parse_config("status: {socket: null}\n").status.uplink_grace == 600
    assert parse_config("status: {uplink_grace: 5}\n").status.uplink_grace == 5
    problems = _problems("status: {uplink_grace: 0}\n")
    assert len(problems) == 1 and "status.uplink_grace" in problems[0], problems
