"""check-config catches what silently changes policy: protocol typos, impossible or reversed dates (errors,
every one at once), and valid settings that will not do what was meant (warnings: expired or ending
registrations, grace over, rules naming a protocol nothing reports)."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tunnelwatch.config.runconfig import ConfigError, parse_config
from tunnelwatch.policy.advice import warnings
from tunnelwatch.policy.registry import Registry, parse_registry

DATA = Path(__file__).resolve().parents[2] / "data" / "registry" / "invalid"
INVALID = sorted(DATA.glob("*.yaml"))
NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize("example", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_registry_example_reports_its_message_at_its_line(example: Path) -> None:
    m = re.match(r"# expect: (\d+): (.*)", example.read_text().splitlines()[0])
    assert m is not None, f"{example} has no '# expect: LINE: message' first line"
    with pytest.raises(ConfigError) as ei:
        parse_registry(example.read_text(), str(example))
    hits = [p for p in ei.value.problems if p.startswith(f"{example}:{m[1]}:") and m[2] in p]
    assert hits, "\n".join(ei.value.problems)


def test_every_registry_problem_is_reported_at_once() -> None:
    text = "".join(p.read_text().split("registrations:\n", 1)[1] for p in INVALID)
    with pytest.raises(ConfigError) as ei:
        parse_registry("registrations:\n" + text, "all.yaml")
    assert len(ei.value.problems) == len(INVALID)


def _registry(text: str) -> Registry:
    return Registry(parse_registry(text, "reg.yaml"), Path("reg.yaml"))


def test_warnings_for_dates_that_cannot_do_what_was_meant() -> None:
    reg = _registry("registrations:\n"
                    "  - {id: OLD, protocols: [openvpn], servers: [192.0.2.1], valid_until: 2026-11-30}\n"
                    "  - {id: SOON, protocols: [openvpn], servers: [192.0.2.2], valid_until: 2026-12-31}\n"
                    "  - {id: LATER, protocols: [openvpn], servers: [192.0.2.3], valid_from: 2027-03-01}\n"
                    "  - {id: FINE, protocols: [openvpn], servers: [192.0.2.4], valid_until: 2028-01-01}\n")
    cfg = parse_config("policy: {klass: {voip: {mode: grace, until: 2026-11-01}}}\n")
    out = warnings(cfg, reg, NOW)
    assert any("OLD: expired (last valid day 2026-11-30)" in w for w in out)
    assert any("SOON: ends in 28 day(s) (last valid day 2026-12-31)" in w for w in out)
    assert any("LATER: not in force before 2027-03-01" in w for w in out)
    assert any("policy.klass.voip: grace is over (last day 2026-11-01)" in w for w in out)
    assert not any("FINE" in w for w in out) and len(out) == 4


def test_warnings_for_protocols_nothing_reports_unless_an_endpoint_list_does() -> None:
    reg = _registry("registrations:\n  - {id: R, protocols: [openvpn, nordlynx], servers: [192.0.2.1]}\n")
    cfg = parse_config("policy: {protocol: {nordlynx: enforce}}\n")
    out = warnings(cfg, reg, NOW)
    assert sum("'nordlynx'" in w or "policy.protocol.nordlynx" in w for w in out) == 2
    assert warnings(cfg, reg, NOW, list_protocols={"nordlynx"}) == []


def test_check_config_prints_warnings_and_still_passes(tmp_path: Path) -> None:
    (tmp_path / "reg.yaml").write_text(
        "registrations:\n"
        "  - {id: OLD, protocols: [openvpn], servers: [192.0.2.1], valid_until: 2020-01-01}\n")
    (tmp_path / "tw.yaml").write_text("registry: reg.yaml\nstatus: {socket: null}\n")
    r = subprocess.run([sys.executable, "-m", "tunnelwatch", "check-config", str(tmp_path / "tw.yaml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout
    assert "warning: " in r.stderr and "registration OLD: expired (last valid day 2020-01-01)" in r.stderr


def test_a_missing_registry_file_says_so_plainly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        Registry.load(tmp_path / "nope.yaml")
    missing = tmp_path / "nope.yaml"
    assert ei.value.problems == [f"{missing}: cannot read the registry: No such file or directory"]
