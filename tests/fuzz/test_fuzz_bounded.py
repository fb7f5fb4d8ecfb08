"""The fuzz harnesses in CI: every seed and crash reproducer replayed, then a short atheris run each.

The replay (no atheris needed) keeps every fixed crash fixed: reproducers live in
tests/fuzz/regressions/<harness>/. The bounded run gives each harness TUNNELWATCH_FUZZ_SECONDS (default
10) of coverage-guided fuzzing in a subprocess, about two and a half minutes for all of them; a crash fails
the test with the input saved under .fuzz-artifacts/<harness>/ and the command that replays it.
Longer runs: `python tests/fuzz/run.py --seconds 600`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
from pathlib import Path

import pytest

from fuzz import run

HERE = Path(__file__).resolve().parent
SECONDS = float(os.environ.get("TUNNELWATCH_FUZZ_SECONDS", "10"))


def inputs(name: str) -> list[Path]:
    """Seeds and regression inputs of one harness."""
    dirs = (HERE / "corpus" / name, HERE / "regressions" / name)
    return sorted(p for d in dirs for p in d.glob("*") if p.is_file())


def test_every_harness_has_seeds() -> None:
    names = run.harnesses()
    assert {"packet", "pcap", "classify", "config", "registry", "uplink", "regsync", "collector", "ipfix",
            "events"} <= set(names)
    assert all(len(list((HERE / "corpus" / n).glob("*"))) >= 2 for n in names), "a harness lacks seeds"


@pytest.mark.parametrize("name", run.harnesses())
def test_replay_seeds_and_regressions(name: str) -> None:
    mod = importlib.import_module(f"fuzz.fuzz_{name}")
    files = inputs(name)
    assert files
    for path in files:
        try:
            mod.one_input(path.read_bytes())
        except BaseException as exc:
            raise AssertionError(f"fuzz_{name} fails on {path.relative_to(HERE)}") from exc


@pytest.mark.parametrize("name", run.harnesses())
def test_fuzz_bounded(name: str) -> None:
    if importlib.util.find_spec("atheris") is None:
        if platform.machine() != "x86_64":  # PyPI has atheris wheels for x86_64 Linux only
            pytest.skip(f"no atheris wheel for {platform.machine()}; the replay above still runs")
        pytest.fail("atheris is not installed: pip install atheris (it is in the test extra)")
    res = run.run_harness(name, seconds=SECONDS)
    assert res.execs > 0, f"fuzz_{name} did not run:\n{res.log[-3000:]}"
    assert res.ok, run.describe(res)
