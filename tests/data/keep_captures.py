"""pytest plugin: keep every capture the lab records, to refresh the real-software samples.

    TUNNELWATCH_KEEP_CAPTURES=/tmp/raw .venv/bin/python -m pytest -p data.keep_captures \
        tests/integration/test_capture_*.py

Each `Lab.capture` file is copied, once complete, to $TUNNELWATCH_KEEP_CAPTURES/<test id>--<stem>.pcap;
`make_samples.py` then cuts the flows that matter out of them (see README.md in this folder).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tunnelwatch.lab import netlab

_current = {"test": "unknown"}
_orig = netlab.Lab.capture


@contextmanager
def _keeping(self: netlab.Lab, ns: str, iface: str, pcap: Path, *args: Any, **kw: Any) -> Iterator[Path]:
    with _orig(self, ns, iface, pcap, *args, **kw) as p:
        yield p
    out = os.environ.get("TUNNELWATCH_KEEP_CAPTURES")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(pcap, Path(out) / f"{_current['test']}--{pcap.stem}.pcap")


netlab.Lab.capture = _keeping  # type: ignore[method-assign,assignment]


@pytest.fixture(autouse=True)
def _name_captures(request: pytest.FixtureRequest) -> None:
    _current["test"] = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
