"""Formatting flow records for people (table) and programs (JSON lines)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from typing import Any, Final, TextIO

from tunnelwatch.verdict import is_flagged

#: (column, widest it may grow): columns are as wide as their widest cell, up to this; evidence gets the
#: rest of the terminal's width
_COLUMNS: Final = (("pcap", 48), ("transport", 9), ("src", 45), ("dst", 45), ("klass", 16),
                   ("protocol", 20), ("confidence", 10), ("packets", 7), ("evidence", 0))
EVIDENCE_MIN: Final = 30


def write_jsonl(records: Iterable[dict[str, Any]], out: TextIO) -> int:
    """Write one JSON object per line; return the count."""
    n = 0
    for r in records:
        out.write(json.dumps(r, separators=(",", ":")) + "\n")
        n += 1
    return n


def _cell(r: dict[str, Any], col: str) -> str:
    if col == "src":
        return _ep(r["src"], r["sport"])
    if col == "dst":
        return _ep(r["dst"], r["dport"])
    if col == "evidence":
        return "; ".join(r.get("evidence", []))
    return str(r.get(col, ""))


def _ep(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def write_table(records: Iterable[dict[str, Any]], out: TextIO, *, only_flagged: bool = False,
                columns: int | None = None) -> int:
    """Write an aligned table (header first; columns sized to their cells, evidence to the terminal's
    width, or `columns`); return the number of rows."""
    rows = [{col: _cell(r, col) for col, _ in _COLUMNS} for r in records
            if not only_flagged or is_flagged(str(r["klass"]))]
    widths = {col: min(cap, max([len(col), *(len(r[col]) for r in rows)])) for col, cap in _COLUMNS if cap}
    total = columns if columns is not None else shutil.get_terminal_size((160, 24)).columns
    widths["evidence"] = max(EVIDENCE_MIN, total - sum(w + 1 for w in widths.values()))
    out.write(" ".join(f"{c:{widths[c]}}" for c, _ in _COLUMNS).rstrip() + "\n")
    for r in rows:
        out.write(" ".join(f"{_fit(r[c], widths[c]):{widths[c]}}" for c, _ in _COLUMNS).rstrip() + "\n")
    return len(rows)
