"""The configuration loader against tests/data/config: every invalid example names its expected message
and line in a first-line `# expect: [FILE:]LINE: message` comment; every valid example loads."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunnelwatch.config.runconfig import (
    ConfigError,
    RunConfig,
    load_config,
    parse_config,
    restart_needed,
    summary,
)

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
    old = parse_config("queue: {num: 0, count: 1}\n")
    same = parse_config("queue: {num: 0, count: 1, packets: 8}\npolicy: {default: enforce}\n")
    assert restart_needed(old, same) == []
    assert restart_needed(old, parse_config("queue: {num: 1, count: 2}\n")) == ["queue.num", "queue.count"]
    assert restart_needed(old, parse_config("queue: {count: 1}\nfirewall: {backend: nftables}\n")) \
        == ["firewall.backend"]


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




def test_queue_count_auto_is_one_queue_per_cpu_and_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunnelwatch.config import runconfig
    monkeypatch.setattr(runconfig.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert parse_config("log: {level: info}\n").queue_count == 3  # no queue section: auto
    cfg = parse_config("queue: {count: auto}\n")
    assert (cfg.queue_count, cfg.queue_auto) == (3, True)
    assert summary(cfg)[0].startswith("queues 0-2 (count auto: 3 of this machine's CPUs)")
    monkeypatch.setattr(runconfig.os, "sched_getaffinity", lambda pid: set(range(32)))
    assert parse_config("queue: {count: auto}\n").queue_count == runconfig.AUTO_QUEUES_MAX
    fixed = parse_config("queue: {count: 5}\n")
    assert (fixed.queue_count, fixed.queue_auto) == (5, False)
    with pytest.raises(ConfigError) as ei:
        parse_config("queue: {count: many}\n")
    assert ei.value.problems == ["<config>:1:16: queue.count must be auto or an integer between 1 and 64 "
                                 "(got 'many')"]
