"""Formatting flow records for people (table) and programs (JSON lines)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, TextIO

from tunnelwatch.verdict import is_flagged

_COLUMNS = (("pcap", 22), ("transport", 5), ("src", 22), ("dst", 22), ("klass", 16), ("protocol", 10),
            ("confidence", 10), ("packets", 7), ("evidence", 0))


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


def write_table(records: Iterable[dict[str, Any]], out: TextIO, *, only_flagged: bool = False) -> int:
    """Write an aligned table (header first); return the number of rows."""
    out.write(" ".join(f"{c:{w}}" if w else c for c, w in _COLUMNS).rstrip() + "\n")
    n = 0
    for r in records:
        if only_flagged and not is_flagged(str(r["klass"])):
            continue
        cells = []
        for col, w in _COLUMNS:
            text = _cell(r, col)
            cells.append(f"{text[:w]:{w}}" if w else text)
        out.write(" ".join(cells).rstrip() + "\n")
        n += 1
    return n
