"""Instructions per pass of the engine over the nDPI corpus, counted by callgrind (repeatable on a noisy
machine, unlike seconds). Compares two checkouts of the package when given two daemon directories:

    python bench/engine_icount.py                       # this checkout
    python bench/engine_icount.py OLD/daemon daemon     # before vs after

Each directory is measured with 0 and 1 passes over the corpus; the difference is one pass, so
interpreter start-up and imports are excluded (and printed apart). Needs valgrind.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

_PASS = r"""
import os, sys
from tunnelwatch.classify.engine import Engine
from tunnelwatch.classify.packet import parse_ip
from tunnelwatch.offline.pcapfile import PcapReader, ip_offset
d = sys.argv[2]
frames = []
for n in sorted(os.listdir(d)):
    with open(os.path.join(d, n), "rb") as fh:
        for ts, lt, fr in PcapReader(fh, n):
            o = ip_offset(lt, fr)
            if o >= 0:
                frames.append((ts, fr[o:]))
e = Engine()
for r in range(int(sys.argv[1])):
    for ts, raw in frames:
        p = parse_ip(raw, ts + r * 1e6)
        if p is not None:
            e.process(p)
e.flush()
print(len(frames), file=sys.stderr)
"""


def callgrind(pkg_dir: str, script: str, *args: str) -> int:
    """Instructions of one `python -c script args...` run with pkg_dir first on the path (callgrind's
    'Collected' total)."""
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
                            sys.executable, "-c", script, *args],
                           env={**os.environ, "PYTHONPATH": pkg_dir}, capture_output=True, text=True,
                           timeout=1800, check=True)
    m = re.search(r"Collected\s*:\s*(\d+)", r.stderr)
    if m is None:
        raise SystemExit(f"no callgrind total in:\n{r.stderr[-2000:]}")
    return int(m.group(1))


def count(pkg_dir: str, passes: int, corpus: str) -> int:
    """Instructions of one run of the corpus script."""
    return callgrind(pkg_dir, _PASS, str(passes), corpus)


def main() -> int:
    """Print start-up and per-pass instruction counts for each package directory."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="*", default=[str(Path(__file__).resolve().parents[1] / "daemon")])
    ap.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared/corpus/ndpi/pcap"))
    args = ap.parse_args()
    per_pass = []
    for d in args.dirs:
        base, one = count(d, 0, args.corpus), count(d, 1, args.corpus)
        per_pass.append(one - base)
        print(f"{d}: start-up {base / 1e6:,.1f} M, one pass {(one - base) / 1e6:,.1f} M instructions")
    if len(per_pass) == 2:
        print(f"per pass, second / first: {per_pass[1] / per_pass[0]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
