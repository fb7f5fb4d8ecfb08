"""Figures a heartbeat carries that come from outside the reporter: the kernel's queue counters and the
fail-open / flood / eviction counters kept in the status state."""

from __future__ import annotations

from pathlib import Path
from typing import Final

PROC_QUEUES: Final = Path("/proc/net/netfilter/nfnetlink_queue")


def queue_counters(queues: range, path: Path = PROC_QUEUES) -> tuple[int, int]:
    """(packets queued, packets dropped) for our queues, from the kernel's per-queue line:
    queue_num portid waiting copy_mode copy_range queue_dropped user_dropped id_sequence 1."""
    queued = dropped = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0, 0
    for ln in lines:
        f = ln.split()
        if len(f) >= 8 and f[0].isdigit() and int(f[0]) in queues:
            try:
                dropped += int(f[5]) + int(f[6])
                queued += int(f[7])
            except ValueError:
                continue
    return queued, dropped


def fail_open_fields(snap: dict[str, object]) -> dict[str, object]:
    """Heartbeat fields from the status state: the kernel's fail-open/flood counters (kernelstats.py) and
    the flow table's evictions (queue.flows too small, or a flood)."""
    out: dict[str, object] = {}
    kernel, flows = snap.get("kernel"), snap.get("flows")
    if isinstance(kernel, dict):
        out.update({k: kernel[k] for k in ("bypassed_packets", "bypassed_flows", "flood_dropped")
                    if isinstance(kernel.get(k), int)})
    if isinstance(flows, dict) and isinstance(flows.get("evicted"), int):
        out["flows_evicted"] = flows["evicted"]
    return out
