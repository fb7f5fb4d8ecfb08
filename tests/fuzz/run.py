"""Run the atheris harnesses (tests/fuzz/fuzz_*.py) for a bounded time each and report what they found.

    .venv/bin/python tests/fuzz/run.py --seconds 600            # every harness, 10 minutes each
    .venv/bin/python tests/fuzz/run.py --seconds 60 config uplink

Each harness runs in its own subprocess (libFuzzer owns the process) over a scratch corpus directory plus
the checked-in seeds in tests/fuzz/corpus/<harness>/ (never written to, unless --update-corpus merges the
new coverage into them). A crash, timeout or out-of-memory input is saved under --artifacts
(default .fuzz-artifacts/<harness>/) and makes the exit status 1; replay one with
`PYTHONPATH=tests python -m fuzz.fuzz_<harness> FILE`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CORPUS = HERE / "corpus"
#: biggest input per harness (libFuzzer's -max_len); captures and HTTP exchanges need more room
MAX_LEN = {"pcap": 16384, "classify": 8192, "collector": 8192, "config": 8192, "registry": 8192,
           "endpoints": 8192, "regsync": 8192}
_STATS = re.compile(r"^#(\d+)\s+(?:DONE|pulse|NEW|REDUCE|INITED)\s+cov: (\d+) ft: (\d+) corp: (\d+)", re.M)
_SHM = "/dev/shm" if Path("/dev/shm").is_dir() else None
_EXECS = re.compile(r"stat::number_of_executed_units: (\d+)")


def harnesses() -> list[str]:
    """Names of all harnesses (fuzz_<name>.py next to this file)."""
    return sorted(p.stem[len("fuzz_"):] for p in HERE.glob("fuzz_*.py"))


@dataclass
class Result:
    """What one bounded run of one harness did."""

    name: str
    returncode: int
    seconds: float
    execs: int = 0
    cov: int = 0
    features: int = 0
    corpus: int = 0
    artifacts: list[Path] = field(default_factory=list)
    log: str = ""

    @property
    def ok(self) -> bool:
        """True when the run ended without a crash, timeout or OOM input."""
        return self.returncode == 0 and not self.artifacts


def command(name: str, corpus_dirs: list[Path], *, seconds: float, runs: int | None, artifacts: Path
            ) -> list[str]:
    """The libFuzzer command line for one harness."""
    cmd = [sys.executable, "-m", f"fuzz.fuzz_{name}", f"-max_total_time={max(1, int(seconds))}",
           "-timeout=20", "-rss_limit_mb=2048", f"-max_len={MAX_LEN.get(name, 4096)}",
           f"-artifact_prefix={artifacts}/", "-print_final_stats=1", "-detect_leaks=0"]
    if runs is not None:
        cmd.append(f"-runs={runs}")
    return cmd + [str(d) for d in corpus_dirs]


def fuzz_env(scratch: Path | None = None) -> dict[str, str]:
    """Environment for a harness subprocess: tests/ importable, instrumentation on, scratch space."""
    env = dict(os.environ)
    if scratch is not None:
        env["TUNNELWATCH_FUZZ_SCRATCH"] = str(scratch)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), env.get("PYTHONPATH")]))
    env["TUNNELWATCH_FUZZ_INSTRUMENT"] = "1"
    env["PYTHONUNBUFFERED"] = "1"  # the traceback must come out before libFuzzer's own crash report
    return env


def run_harness(name: str, *, seconds: float, runs: int | None = None, artifacts: Path | None = None,
                update_corpus: bool = False) -> Result:
    """Fuzz one harness for `seconds` (or `runs` inputs); the Result says what happened."""
    artifacts = (artifacts or ROOT / ".fuzz-artifacts") / name
    artifacts.mkdir(parents=True, exist_ok=True)
    seeds = CORPUS / name
    seeds.mkdir(parents=True, exist_ok=True)
    before = set(artifacts.iterdir())
    with tempfile.TemporaryDirectory(prefix=f"tw-fuzz-{name}-") as work, \
            tempfile.TemporaryDirectory(prefix=f"tw-fuzz-{name}-scratch-", dir=_SHM) as scratch:
        env = fuzz_env(Path(scratch))
        cmd = command(name, [Path(work), seeds], seconds=seconds, runs=runs, artifacts=artifacts)
        t0 = time.monotonic()
        # the wall-clock bound covers start-up and a stuck input (libFuzzer's own -timeout should fire first)
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  errors="replace", timeout=seconds + 120)
            rc, log = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            rc, log = -1, f"{out}\nrun.py: harness did not stop in time"
        elapsed = time.monotonic() - t0
        if update_corpus and rc == 0:
            subprocess.run([*command(name, [seeds, Path(work)], seconds=seconds, runs=None,
                                     artifacts=artifacts), "-merge=1"], cwd=ROOT, env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=seconds + 300, check=False)
    res = Result(name, rc, elapsed, log=log)
    res.artifacts = sorted(p for p in set(artifacts.iterdir()) - before
                           if p.name.startswith(("crash-", "timeout-", "oom-", "slow-unit-")))
    stats = _STATS.findall(log)
    if stats:
        _, cov, ft, corp = stats[-1]
        res.cov, res.features, res.corpus = int(cov), int(ft), int(corp)
        res.execs = int(stats[-1][0])
    m = _EXECS.search(log)
    if m:
        res.execs = int(m.group(1))
    return res


def describe(res: Result) -> str:
    """One summary line, plus the crash details when there is one."""
    line = (f"{res.name:10s} {'ok' if res.ok else 'CRASH':5s} {res.seconds:6.1f}s execs={res.execs:<8d} "
            f"cov={res.cov:<5d} ft={res.features:<6d} corpus={res.corpus}")
    if res.ok:
        return line
    lines = res.log.splitlines()
    start = next((i for i, ln in enumerate(lines) if "Uncaught Python exception" in ln), len(lines) - 40)
    tail = "\n".join(lines[max(0, start):][:60])
    saved = ", ".join(str(p) for p in res.artifacts) or "(no artifact written)"
    return (f"{line}\n  exit status {res.returncode}; input saved: {saved}\n  replay: PYTHONPATH=tests "
            f"{sys.executable} -m fuzz.fuzz_{res.name} {res.artifacts[0] if res.artifacts else 'FILE'}\n"
            f"{tail}")


def main(argv: list[str] | None = None) -> int:
    """Command line: run the named harnesses (default all) and print one line each."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"harnesses (default all): {', '.join(harnesses())}")
    ap.add_argument("--seconds", type=float, default=60.0, help="time per harness (default 60)")
    ap.add_argument("--runs", type=int, default=None, help="stop each harness after this many inputs")
    ap.add_argument("--artifacts", type=Path, default=ROOT / ".fuzz-artifacts", help="where crashes go")
    ap.add_argument("--update-corpus", action="store_true",
                    help="merge inputs that add coverage into tests/fuzz/corpus/<harness>/ (review the diff)")
    args = ap.parse_args(argv)
    names = args.names or harnesses()
    unknown = set(names) - set(harnesses())
    if unknown:
        ap.error(f"unknown harness(es): {', '.join(sorted(unknown))}")
    if shutil.which(sys.executable) is None:  # pragma: no cover - a broken interpreter path
        ap.error(f"cannot run {sys.executable}")
    failed = 0
    for name in names:
        res = run_harness(name, seconds=args.seconds, runs=args.runs, artifacts=args.artifacts,
                          update_corpus=args.update_corpus)
        print(describe(res), flush=True)
        failed += not res.ok
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
