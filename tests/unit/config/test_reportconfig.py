"""The report section: uplink, spool, IPFIX, registry sync and privacy settings, paths that follow the
state directory, secrets read from private files, and located errors (file:line:col)."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from tunnelwatch.config.runconfig import ConfigError, load_config, parse_config

DATA = Path(__file__).resolve().parents[2] / "data" / "config"
EXAMPLE = Path(__file__).resolve().parents[3] / "config" / "tunnelwatch.yaml"
KEY = base64.b64encode(bytes(32)).decode()


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
                "uplink", "url", "ca_file", "client_cert", "client_key", "batch_size", "max_rate",
                "keepalive", "session_expiry", "ipfix",
                "collector",
                "transport", "enterprise", "registry_sync", "public_key", "interval", "privacy",
                "subscriber_addresses", "key_file", "subscriber_nets"):
        assert f"\n  {key}:" in text or f"\n    {key}:" in text, key


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


@pytest.mark.parametrize(("url", "msg"), [
    ("http://collector.example", "tw.yaml:1:24: report.uplink.url must be https://host[:port][/path] "
                                 "or mqtts://host[:port] (MQTT 5 over TLS) (got 'http://collector.example'); "
                                 "reports and registries only travel over TLS"),
    ("https://", "tw.yaml:1:24: report.uplink.url must be https://host[:port][/path] or mqtts://host[:port] "
                 "(MQTT 5 over TLS) (got 'https://')"),
    ("https://x:99999/", "tw.yaml:1:24: report.uplink.url has a bad port (got 'https://x:99999/')"),
])
def test_the_uplink_url_must_be_https_with_a_host(url: str, msg: str) -> None:
    (p,) = _problems(f"report: {{uplink: {{url: '{url}'}}}}\n")
    assert p.startswith(msg)


def test_client_cert_and_key_go_together() -> None:
    (p,) = _problems("report:\n  uplink:\n    url: https://c.example\n    client_cert: /etc/box.pem\n")
    assert p == ("tw.yaml:4:18: report.uplink.client_cert and client_key go together: set both (mutual TLS) "
                 "or neither")


def test_max_rate_and_batch_size_ranges() -> None:
    problems = _problems("report:\n  uplink: {url: 'https://c.example', max_rate: 0, batch_size: 0}\n")
    assert problems == [
        "tw.yaml:2:48: report.uplink.max_rate must be a number of batches per second between 0.01 and 10000 "
        "(got '0')",
        "tw.yaml:2:63: report.uplink.batch_size must be between 1 and 10000 (got 0)"]


@pytest.mark.parametrize("coll", ["collector.example:4739", "192.0.2.50", "192.0.2.50:0", "[::1]:x"])
def test_the_ipfix_collector_must_be_address_and_port(coll: str) -> None:
    (p,) = _problems(f"report:\n  ipfix: {{collector: '{coll}'}}\n")
    assert p.startswith("tw.yaml:2:22: report.ipfix.collector must be ADDRESS:PORT, e.g. 192.0.2.50:4739")


def test_registry_sync_needs_a_valid_key() -> None:
    (p,) = _problems("report:\n  registry_sync: {url: 'https://isp.example/reg'}\n")
    assert p.startswith("tw.yaml:2:24: report.registry_sync.url needs report.registry_sync.public_key")
    (p,) = _problems("report:\n  registry_sync: {url: 'https://isp.example/reg', public_key: 'c2hvcnQ='}\n")
    assert p.startswith("tw.yaml:2:63: report.registry_sync.public_key must be the ISP's Ed25519 public key")
    sync = parse_config(f"report:\n  registry_sync: {{url: 'https://isp.example/reg', public_key: '{KEY}', "
                        "interval: 60}\n").report.registry_sync
    assert (sync.url, sync.public_key, sync.interval) == ("https://isp.example/reg", KEY, 60)
    (p,) = _problems(f"report:\n  registry_sync: {{url: 'https://i.example', public_key: '{KEY}', "
                     "interval: 5}\n")
    assert "report.registry_sync.interval must be between 10 and 604800 (got 5)" in p


def test_privacy_settings_and_their_errors() -> None:
    priv = parse_config("report:\n  privacy: {subscriber_addresses: clear, subscriber_nets: [10.0.0.0/8]}\n"
                        ).report.privacy
    assert (priv.subscriber_addresses, priv.subscriber_nets) == ("clear", ("10.0.0.0/8",))
    problems = _problems("report:\n  privacy: {subscriber_addresses: hashed, subscriber_nets: [10.0.0.300/8],"
                         " key_file: null}\n")
    where = {p.split(": ", 1)[0]: p for p in problems}
    assert sorted(where) == ["tw.yaml:2:35", "tw.yaml:2:61", "tw.yaml:2:86"]
    assert "did you mean 'hash'?" in where["tw.yaml:2:35"]
    assert "report.privacy.subscriber_nets item must be a network" in where["tw.yaml:2:61"]
    assert "report.privacy.key_file cannot be null" in where["tw.yaml:2:86"]


def test_moving_the_state_dir_moves_every_unnamed_file(tmp_path: Path) -> None:
    rep = parse_config(f"report: {{state_dir: {tmp_path}}}\n").report
    assert rep.state_dir == tmp_path and rep.spool.path == tmp_path / "spool.db"
    assert rep.privacy.key_file == tmp_path / "privacy.key"
    assert _problems("report: {spool: {path: null}}\n") == [
        "tw.yaml:1:24: report.spool.path cannot be null: events are spooled before they are sent"]


def test_a_relative_spool_path_follows_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "tw.yaml"
    cfg.write_text("report: {spool: {path: spool/events.db}, min_confidence: list}\n")
    rep = load_config(cfg).report
    assert rep.spool.path == tmp_path / "spool" / "events.db" and rep.min_confidence == "list"


def test_an_mqtts_uplink_with_its_certificate_and_session_settings(tmp_path: Path) -> None:
    key = tmp_path / "box.key"
    key.write_text("k")
    key.chmod(0o600)
    text = (f"report: {{uplink: {{url: 'mqtts://broker.isp.example:8883', client_cert: c.pem, "
            f"client_key: '{key}', keepalive: 30, session_expiry: 3600}}}}\n")
    up = parse_config(text, "tw.yaml").report.uplink
    assert up.transport == "mqtt" and up.url == "mqtts://broker.isp.example:8883"
    assert (up.keepalive, up.session_expiry, up.client_key) == (30, 3600, key)
    https = parse_config("report: {uplink: {url: 'https://c.example'}}\n").report.uplink
    assert https.transport == "https" and (https.keepalive, https.session_expiry) == (60, 7 * 86_400)
    # the shipped config spells out the MQTT defaults: with an https:// url they are ignored, not refused
    shipped = parse_config("report: {uplink: {url: 'https://c.example', keepalive: 60, "
                           "session_expiry: 604800}}\n")
    assert shipped.report.uplink.transport == "https"


@pytest.mark.parametrize(("text", "msg"), [
    ("report: {uplink: {url: 'mqtt://b.example'}}\n",
     "tw.yaml:1:24: report.uplink.url must be https://host[:port][/path] or mqtts://host[:port]"),
    ("report: {uplink: {url: 'mqtts://b.example'}}\n",
     "tw.yaml:1:24: report.uplink.url mqtts:// needs client_cert and client_key: the broker knows a box by "
     "its certificate"),
    ("report: {uplink: {url: 'mqtts://b.example/topic', client_cert: a, client_key: b}}\n",
     "tw.yaml:1:24: report.uplink.url is mqtts://host[:port] with no path"),
    ("report: {uplink: {url: 'mqtts://b.example:70000', client_cert: a, client_key: b}}\n",
     "tw.yaml:1:24: report.uplink.url has a bad port"),
    ("report: {uplink: {url: 'mqtts://b.example', client_cert: a, client_key: b, session_expiry: 5}}\n",
     "tw.yaml:1:92: report.uplink.session_expiry must be"),
    ("report: {uplink: {url: 'mqtts://b.example', client_cert: a, client_key: b, keepalive: 'x'}}\n",
     "tw.yaml:1:87: report.uplink.keepalive must be"),
])
def test_a_bad_mqtt_uplink_is_refused_with_its_location(text: str, msg: str) -> None:
    problems = _problems(text)
    assert any(p.startswith(msg) for p in problems), problems


def test_an_mqtt_uplink_takes_no_bearer_token(tmp_path: Path) -> None:
    tok = tmp_path / "t.token"
    tok.write_text("secret\n")
    tok.chmod(0o600)
    problems = _problems(f"report:\n  uplink:\n    url: 'mqtts://b.example'\n    client_cert: a\n"
                         f"    client_key: b\n    token_file: '{tok}'\n")
    assert any(p.startswith("tw.yaml:6:17: report.uplink.token_file is for an https:// collector")
               for p in problems), problems


def test_check_config_summary_says_the_registry_also_comes_over_mqtt() -> None:
    from tunnelwatch.config.runconfig import report_summary

    text = (f"report: {{uplink: {{url: 'mqtts://b.example', client_cert: a, client_key: b}}, "
            f"registry_sync: {{public_key: '{KEY}'}}}}\n")
    lines = report_summary(parse_config(text).report)
    assert "report uplink: mqtts://b.example (mTLS)" in lines and "registry sync: pushed over MQTT" in lines
    assert "registry sync: off" in report_summary(parse_config("report: {}\n").report)
