"""Capture-and-classify for integration tests: run real software in a fresh lab while tcpdump records the
router's WAN side, then classify the capture with the whole registry; and a readable table of records."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.netns import Lab, lab, require_tools
from tunnelwatch.offline.classify import classify_file

Record = dict[str, Any]


def capture_classify(tmp_path: Path, tools: tuple[str, ...], drive: Callable[[Lab], None], *,
                     ipv6: bool = True, budget: int = 24) -> list[Record]:
    """Run `drive(lab)` in a fresh lab while the router's wan0 is captured; the capture's flow records."""
    require_tools("tcpdump", "ping", "ss", "ip", *tools)
    pcap = tmp_path / "wan0.pcap"
    with lab(tmp_path, ipv6=ipv6) as lb, lb.capture(lb.router, "wan0", pcap):
        drive(lb)
    return list(classify_file(str(pcap), budget=budget))


def flow_table(records: list[Record]) -> str:
    """One line per flow record, for assertion messages."""
    return "\n".join(f"  {r['src']}:{r['sport']} -> {r['dst']}:{r['dport']} {r['transport']} "
                     f"{r['klass']} {r['protocol']} {r['confidence']} {r['evidence']} pkts={r['packets']}"
                     for r in records)
