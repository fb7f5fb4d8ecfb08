"""Heartbeat figures from outside the reporter: the kernel's per-queue counters and the fail-open, flood and
eviction counters kept in the status state."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from tunnelwatch.config.runconfig import parse_config
from tunnelwatch.report.events import make_event
from tunnelwatch.report.heartbeat import (
    _canonical,
    config_digest,
    config_fields,
    fail_open_fields,
    queue_counters,
)


def test_queue_counters_read_the_kernel_table(tmp_path: Path) -> None:
    p = tmp_path / "nfq"
    p.write_text("    5  12345     0 2 65531     3     4      100  1\n"
                 "    7  999     0 2 65531     9     9      50  1\n")
    assert queue_counters(range(5, 6), p) == (100, 7)
    assert queue_counters(range(5, 8), p) == (150, 25)
    assert queue_counters(range(5, 6), tmp_path / "missing") == (0, 0)


def test_queue_counters_skip_headers_short_and_garbled_lines(tmp_path: Path) -> None:
    p = tmp_path / "nfq"
    p.write_text("queue_num portid waiting\n"
                 "    5  1 0 2 65531 x 4 100 1\n"  # garbled drop counter: the line is skipped
                 "    5  1 0\n"                    # too short
                 "    6  1 0 2 65531 1 1 10 1\n")
    assert queue_counters(range(5, 7), p) == (10, 2)


def test_fail_open_fields_take_only_integer_kernel_and_flow_figures() -> None:
    snap: dict[str, object] = {
        "kernel": {"bypassed_packets": 24, "bypassed_flows": "24", "flood_dropped": 3, "limited_hosts": []},
        "flows": {"evicted": 7, "tracked": 1}}
    assert fail_open_fields(snap) == {"bypassed_packets": 24, "flood_dropped": 3, "flows_evicted": 7}
    assert fail_open_fields({}) == {}
    assert fail_open_fields({"kernel": "down", "flows": {"evicted": None}}) == {}


# -- the configuration in force: digest and policy modes (daemon_started, heartbeat) ------------------------

CONFIG = (Path(__file__).resolve().parents[3] / "config/tunnelwatch.yaml").read_text()


def test_config_fields_name_every_klass_mode_and_validate_as_event_fields() -> None:
    cfg = parse_config(CONFIG, "tunnelwatch.yaml",
                       [("50-provision.yaml", "policy:\n  klass: {vpn_tunnel: enforce}\n"
                                              "  protocol: {wireguard: monitor}\n")])
    f = config_fields(cfg)
    assert f["policy_default"] == "monitor"
    assert f["policy_modes"] == {"vpn_tunnel": "enforce", "voip": "monitor", "proxy_obfuscated": "monitor",
                                 "benign": "monitor", "unknown": "monitor"}
    assert f["protocol_modes"] == {"wireguard": "monitor"}
    assert re.fullmatch("[0-9a-f]{64}", str(f["config_digest"]))
    make_event("heartbeat", device_id="b", uptime_s=1.0, flows_by_klass={}, packets_queued=0, queue_drops=0,
               **f)  # raises if a field does not fit the event schema


def test_digest_is_stable_and_follows_the_drop_ins() -> None:
    base = parse_config(CONFIG, "tunnelwatch.yaml")
    assert config_digest(base) == config_digest(parse_config(CONFIG, "tunnelwatch.yaml"))
    # relative paths resolve against the file: a config elsewhere is another effective config
    assert config_digest(base) != config_digest(parse_config(CONFIG, "/elsewhere/tunnelwatch.yaml"))
    enforce = parse_config(CONFIG, "tunnelwatch.yaml", [("50.yaml", "policy:\n  klass: {voip: enforce}\n")])
    assert config_digest(enforce) != config_digest(base)
    # a drop-in restating what the main file says changes nothing in force, so nothing in the digest
    same = parse_config(CONFIG, "tunnelwatch.yaml",
                        [("50.yaml", "policy:\n  klass: {vpn_tunnel: monitor}\n")])
    assert config_digest(same) == config_digest(base)


def test_secrets_change_the_digest_but_never_appear_in_it() -> None:
    cfg = parse_config(CONFIG, "tunnelwatch.yaml")
    up = dataclasses.replace(cfg.report.uplink, url="https://collector.example", token="s3cret-token-value")
    with_token = dataclasses.replace(cfg, report=dataclasses.replace(cfg.report, uplink=up))
    other = dataclasses.replace(with_token, report=dataclasses.replace(
        cfg.report, uplink=dataclasses.replace(up, token="another-token-value")))
    assert config_digest(with_token) != config_digest(other)
    text = json.dumps(_canonical(with_token))
    assert "s3cret-token-value" not in text and "sha256:" in text
