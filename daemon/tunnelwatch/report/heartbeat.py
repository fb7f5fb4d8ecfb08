"""Figures a heartbeat carries that come from outside the reporter: the kernel's queue counters, the
fail-open / flood / eviction counters kept in the status state, and what configuration is in force (its
digest and the policy modes, also in daemon_started) so the ISP sees a box switched to monitor."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from pathlib import Path
from typing import Final

from tunnelwatch.config.runconfig import RunConfig
from tunnelwatch.verdict import KLASSES

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


def _canonical(node: object, depth: int = 0) -> object:
    """A JSON-able, order-independent form of a config value; secrets (repr=False fields) only hashed."""
    if depth > 32:  # the config is a fixed, shallow tree: this only guards against a future cycle
        return "..."
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        out: dict[str, object] = {}
        for f in dataclasses.fields(node):
            if not f.compare:  # bookkeeping such as the list of files read, not configuration
                continue
            value = _canonical(getattr(node, f.name), depth + 1)
            if not f.repr and value is not None:
                # a token must change the digest when it changes, yet never appear, even in a digest alone
                value = "sha256:" + hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
            out[f.name] = value
        return out
    if isinstance(node, dict):
        return {str(k): _canonical(v, depth + 1) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_canonical(v, depth + 1) for v in node]
    if isinstance(node, set | frozenset):
        return sorted((_canonical(v, depth + 1) for v in node), key=str)
    if isinstance(node, bytes | bytearray):
        return "sha256:" + hashlib.sha256(node).hexdigest()
    if isinstance(node, dt.date | dt.datetime):
        return node.isoformat()
    if node is None or isinstance(node, bool | int | float | str):
        return node
    return str(node)  # Path, addresses and networks: their text form is their identity


def config_digest(cfg: RunConfig) -> str:
    """sha256 (hex) of the effective configuration (main file plus drop-ins, as loaded), canonical JSON."""
    text = json.dumps(_canonical(cfg), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")  # events.KEY_PATTERN: a map key the event schema takes


def config_fields(cfg: RunConfig) -> dict[str, object]:
    """daemon_started / heartbeat fields: config digest, default mode, mode per klass and per protocol."""
    return {"config_digest": config_digest(cfg),
            "policy_default": cfg.default.mode,
            # every klass with the mode that applies to it, so "all monitor" needs no knowledge of defaults
            "policy_modes": {k: cfg.klass.get(k, cfg.default).mode for k in KLASSES},
            "protocol_modes": {p: r.mode for p, r in sorted(cfg.protocol.items()) if _KEY.fullmatch(p)}}
