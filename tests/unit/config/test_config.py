"""The configuration loader against tests/data/config: every invalid example names its expected message
and line in a first-line `# expect: [FILE:]LINE: message` comment; every valid example loads."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunnelwatch.config.runconfig import ConfigError, RunConfig, load_config, parse_config, restart_needed

DATA = Path(__file__).resolve().parents[2] / "data" / "config"
INVALID = sorted((DATA / "invalid").glob("*.yaml"))
VALID = sorted((DATA / "valid").glob("*.yaml"))
PROBLEM = re.compile(r"^(.+?\.yaml):(\d+):(\d+): \S")
EXAMPLE = Path(__file__).resolve().parents[3] / "config" / "tunnelwatch.yaml"


def _copy(kind: str, tmp: Path, token_mode: int) -> Path:
    """The examples in a private directory: git does not keep file modes, the token checks need them."""
    dst = tmp / kind
    shutil.copytree(DATA / kind, dst)
    for tok in dst.rglob("*.token"):
        tok.chmod(token_mode)
    return dst


def _expectation(path: Path) -> tuple[str, int, str]:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: [FILE:]LINE: msg'"
    spec, _, message = first.removeprefix("# expect: ").partition(": ")
    file, _, line = spec.rpartition(":")
    return file or path.name, int(line), message


def test_there_are_enough_examples() -> None:
    assert len(INVALID) >= 10 and len(VALID) >= 3


@pytest.mark.parametrize("example", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_example_reports_its_message_at_its_line(example: Path, tmp_path: Path) -> None:
    path = _copy("invalid", tmp_path, 0o644) / example.name
    file, line, message = _expectation(path)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    where = f"{path.parent / file}:{line}:"
    hits = [p for p in ei.value.problems if p.startswith(where) and message in p]
    assert hits, f"expected {where} ... {message!r}, got:\n" + "\n".join(ei.value.problems)
    # every problem is file:line:col: message, in a file that exists
    for p in ei.value.problems:
        m = PROBLEM.match(p)
        assert m is not None and Path(m[1]).exists() and int(m[2]) >= 1 and int(m[3]) >= 1, p


@pytest.mark.parametrize("example", VALID, ids=[p.stem for p in VALID])
def test_valid_example_loads(example: Path, tmp_path: Path) -> None:
    cfg = load_config(_copy("valid", tmp_path, 0o600) / example.name)
    assert isinstance(cfg, RunConfig)


def test_the_shipped_example_covers_every_option_with_its_default() -> None:
    cfg = load_config(EXAMPLE)
    text = EXAMPLE.read_text()
    for key in ("num", "count", "packets", "maxlen", "flows", "deep", "fail_closed", "hooks", "ipv6",
                "backend", "registry", "default", "klass", "protocol", "bulk_calls", "bulk_action",
                "bulk_window", "socket", "listen", "port", "token_file", "enabled", "interfaces",
                "device_id", "level", "journal"):
        assert f"\n  {key}:" in text or f"\n{key}:" in text or f"\n    {key}:" in text, key
    # apart from the illustrative policy, the example's values are the defaults
    defaults = parse_config("policy: {}\n")
    for attr in ("queue_num", "queue_count", "packets", "maxlen", "flows", "deep", "fail_closed", "hooks",
                 "ipv6", "backend",
                 "voip", "log_level", "log_journal", "status", "discovery"):
        assert getattr(cfg, attr) == getattr(defaults, attr), attr


def test_dropins_deep_merge_mappings_and_replace_lists(tmp_path: Path) -> None:
    cfg = load_config(_copy("valid", tmp_path, 0o600) / "with_dropins.yaml")
    assert (cfg.queue_num, cfg.packets) == (0, 32)
    assert cfg.klass["vpn_tunnel"].mode == "enforce" and cfg.klass["voip"].mode == "monitor"
    assert cfg.hooks == ("input",) and cfg.log_level == "debug"
    assert [Path(s).name for s in cfg.sources] == ["with_dropins.yaml", "10-site.yaml", "20-local.yaml"]


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


def test_problems_of_every_file_are_reported_at_once(tmp_path: Path) -> None:
    main = tmp_path / "tw.yaml"
    main.write_text("queue: {pakets: 1}\nlog: {level: loud}\n")
    (tmp_path / "tw.yaml.d").mkdir()
    (tmp_path / "tw.yaml.d" / "10.yaml").write_text("status: {port: 0}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(main)
    assert len(ei.value.problems) == 3
    assert {Path(p.split(":")[0]).name for p in ei.value.problems} == {"tw.yaml", "10.yaml"}


def test_restart_needed_only_for_the_queue_binding_and_backend() -> None:
    old = parse_config("queue: {num: 0}\n")
    same = parse_config("queue: {num: 0, packets: 8}\npolicy: {default: enforce}\n")
    assert restart_needed(old, same) == []
    assert restart_needed(old, parse_config("queue: {num: 1, count: 2}\n")) == ["queue.num", "queue.count"]
    assert restart_needed(old, parse_config("firewall: {backend: nftables}\n")) == ["firewall.backend"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunnelwatch", *args], capture_output=True, text=True,
                          timeout=60)


def test_check_config_exit_codes_and_output(tmp_path: Path) -> None:
    ok = _cli("check-config", str(EXAMPLE))
    assert ok.returncode == 0, ok.stderr
    assert "configuration OK" in ok.stdout and "registry" in ok.stdout
    bad = _copy("invalid", tmp_path, 0o644) / "typo_hint.yaml"
    r = _cli("check-config", str(bad))
    assert r.returncode == 78
    assert f"{bad}:4:3: unknown key 'pakets' in queue: did you mean 'packets'?" in r.stderr


def test_report_section_resolves_paths_and_secrets(tmp_path: Path) -> None:
    d = _copy("valid", tmp_path, 0o600)
    rep = load_config(d / "reporting.yaml").report
    assert rep.state_dir == d / "state"
    assert rep.spool.path == d / "state" / "spool.db"  # unnamed files follow state_dir
    assert (rep.spool.max_events, rep.spool.max_bytes, rep.spool.retention_days) == (200000, 20000000, 7)
    up = rep.uplink
    assert up.url == "https://collector.isp.example:8443/tw"
    assert (up.ca_file, up.client_cert, up.client_key) == (d / "isp-ca.pem", d / "box.pem", d / "box.key")
    assert up.token is not None and len(up.token) >= 16 and up.token not in repr(up)
    assert (up.batch_size, up.max_rate) == (200, 5.5)
    assert rep.ipfix.collector == ("192.0.2.50", 4739) and rep.ipfix.transport == "tcp"
    assert rep.registry_sync.interval == 600 and rep.registry_sync.public_key is not None
    assert rep.privacy.subscriber_addresses == "hash"
    assert rep.privacy.key_file == d / "state" / "privacy.key"
    assert rep.privacy.subscriber_nets == ("192.168.1.0/24", "2001:db8:1::/64")
    assert rep.heartbeat == 60


def test_report_defaults_are_off_and_in_the_state_dir() -> None:
    rep = parse_config("policy: {}\n").report
    assert rep.uplink.url is None and rep.ipfix.collector is None and rep.registry_sync.url is None
    assert str(rep.spool.path) == "/var/lib/tunnelwatch/spool.db"
    assert rep.spool.max_bytes == 100 * 1024 * 1024 and rep.heartbeat == 300
    assert rep.privacy.subscriber_addresses == "hash"  # the least revealing default
    v6 = parse_config('report: {ipfix: {collector: "[2001:db8::5]:4739"}}\n').report.ipfix
    assert v6.collector == ("2001:db8::5", 4739)


def test_the_shipped_example_lists_every_report_option() -> None:
    text = EXAMPLE.read_text()
    for key in ("state_dir", "heartbeat", "spool", "path", "max_events", "max_bytes", "retention_days",
                "uplink", "url", "ca_file", "client_cert", "client_key", "batch_size", "max_rate", "ipfix",
                "collector",
                "transport", "enterprise", "registry_sync", "public_key", "interval", "privacy",
                "subscriber_addresses", "key_file", "subscriber_nets"):
        assert f"\n  {key}:" in text or f"\n    {key}:" in text, key


def test_spool_location_needs_a_restart_other_report_settings_do_not() -> None:
    old = parse_config("report: {heartbeat: 30}\n")
    assert restart_needed(old, parse_config("report: {spool: {path: /tmp/x.db}}\n"))
    live = parse_config("report: {heartbeat: 5, ipfix: {collector: '10.0.0.1:4739'}}\n")
    assert restart_needed(old, live) == []


def test_deeper_queue_per_port_parses_and_rejects_bad_items() -> None:
    assert parse_config("queue: {deep: []}\n").deep == ()
    cfg = parse_config("queue:\n  deep:\n    - {transport: udp, port: 4500, packets: 40}\n")
    assert cfg.deep == (("udp", 4500, 40),)
    with pytest.raises(ConfigError) as e:
        parse_config("queue:\n  deep:\n    - {transport: tcp, port: 22}\n    - {transport: sctp, port: 1, "
                     "packets: 5}\n")
    text = "\n".join(e.value.problems)
    assert "queue.deep item needs packets" in text and "queue.deep transport must be one of tcp, udp" in text


def test_uplink_client_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "box.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o644)
    text = (f"report:\n  uplink:\n    url: https://collector.example.net\n"
            f"    client_cert: {tmp_path / 'box.pem'}\n    client_key: {key}\n")
    with pytest.raises(ConfigError) as ei:
        parse_config(text)
    want = "readable by group/others (mode 0644): chmod 600"
    assert any(":5:" in p and want in p for p in ei.value.problems), ei.value.problems
    key.chmod(0o600)
    assert parse_config(text).report.uplink.client_key == key
