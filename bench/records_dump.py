"""Every flow record of a corpus in four views (offline/inline x without/with endpoint lists), one JSON
line each, sorted keys: a change that must not alter any verdict is checked by comparing two dumps.

    PYTHONPATH=OLD/daemon python bench/records_dump.py /tmp/before.jsonl
    PYTHONPATH=daemon python bench/records_dump.py /tmp/after.jsonl && cmp /tmp/before.jsonl /tmp/after.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tunnelwatch.classify.endpoints import EndpointIndex, ListSource, load_list
from tunnelwatch.offline.classify import classify_file
from tunnelwatch.offline.pcapfile import PcapError

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    """Write the dump; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared/corpus/ndpi/pcap"))
    ap.add_argument("--endpoints", action="append", metavar="LIST.yaml",
                    default=[str(ROOT / "config/endpoints/vpn-apps.yaml"),
                             str(ROOT / "config/endpoints/voice-apps.yaml")])
    a = ap.parse_args()
    index = EndpointIndex([load_list(ListSource(Path(f))) for f in a.endpoints])
    with open(a.out, "w") as out:
        for inline in (False, True):
            for ep in (None, index):
                for name in sorted(os.listdir(a.corpus)):
                    view = [inline, ep is not None]
                    try:
                        for r in classify_file(os.path.join(a.corpus, name), inline=inline, endpoints=ep,
                                               progress=False):
                            out.write(json.dumps([*view, r], sort_keys=True) + "\n")
                    except PcapError as exc:
                        out.write(json.dumps([*view, "error", str(exc)]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
