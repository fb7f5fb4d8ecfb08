"""Reading a daemon's event spool from a test (the uplink points at a closed port, so events stay there)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunnelwatch.report.spool import Spool


def spool_events(path: Path, limit: int = 100_000) -> list[dict[str, Any]]:
    """Every event waiting in the spool file at `path`, oldest first."""
    sp = Spool(str(path), check=False)
    try:
        return [ev for _, ev in sp.peek(limit)]
    finally:
        sp.close()
