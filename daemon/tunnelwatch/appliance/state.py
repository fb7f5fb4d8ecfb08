"""The daemon's status state: fields, counters and recent decisions, thread-safe and bounded.

Every wing writes into it (the supervisor, the reporter, kernel statistics, the registry syncer); the
status server, the heartbeat and `tunnelwatch status` read JSON-able snapshots of it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Final

from tunnelwatch.record import FlowRecord
from tunnelwatch.verdict import FLAGGED

RECENT_MAX: Final = 200
EVIDENCE_KEPT: Final = 3  # evidence lines per recent decision
MAX_LABEL_SETS: Final = 1000  # per counter: a bug feeding unbounded labels cannot exhaust memory
_DECISION_KEYS: Final = ("ts", "src", "sport", "dst", "dport", "transport", "klass", "protocol", "confidence",
                         "action", "reason")
_RESERVED: Final = frozenset({"recent", "counters", "now", "uptime_s", "started"})


def _jsonable(value: object, depth: int = 0) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if depth < 4 and isinstance(value, list | tuple):
        return [_jsonable(v, depth + 1) for v in value]
    if depth < 4 and isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    return str(value)


class StatusState:
    """What the daemon reports about itself: fields, counters and recent tagged/blocked decisions."""

    def __init__(self, *, device_id: str, version: str, mode: str, config_check: str = "ok") -> None:
        self._lock = threading.Lock()
        self._started = time.time()
        self._fields: dict[str, object] = {
            "device_id": device_id, "version": version, "mode": mode, "health": "starting",
            "config_check": config_check, "registry_version": None, "uplink_backlog": None,
        }
        self._recent: deque[dict[str, object]] = deque(maxlen=RECENT_MAX)
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], int]] = {}

    def set(self, **fields: object) -> None:
        """Update fields: health ("starting"/"ok"/"degraded"/"stopping"), mode, registry_version,
        uplink_backlog (int | None), queues, or any other JSON-able fact (numbers become gauges)."""
        bad = _RESERVED.intersection(fields)
        if bad:
            raise ValueError(f"reserved status fields: {sorted(bad)}")
        clean = {k: _jsonable(v) for k, v in fields.items()}
        with self._lock:
            self._fields.update(clean)

    def record_decision(self, rec: FlowRecord) -> None:
        """One decided flow: counted in flows{klass,action}; kept in the recent list when it is tagged
        (a flagged klass) or not simply allowed. The page's columns are kept, plus the first evidence
        lines and the registration (the per-host view answers "why" with them); counters never."""
        keep: dict[str, object] = {}
        for k in _DECISION_KEYS:
            v = getattr(rec, k)
            if isinstance(v, str):
                v = v[:200]
            elif v is not None and not isinstance(v, int | float):
                v = str(v)[:200]
            keep[k] = v
        if keep["ts"] is None:
            keep["ts"] = time.time()
        keep["evidence"] = [e[:128] for e in rec.evidence[:EVIDENCE_KEPT]]
        keep["registration_id"] = rec.registration_id
        klass, action = str(keep["klass"] or "unknown"), str(keep["action"] or "allow")
        self.count("flows", klass=klass, action=action)
        if klass in FLAGGED or action != "allow":
            with self._lock:
                self._recent.appendleft(keep)

    def count(self, name: str, n: int = 1, **labels: str) -> None:
        """Add n to a counter (exported as tunnelwatch_<name>_total{labels})."""
        key = tuple(sorted((k, str(v)) for k, v in labels.items()))
        with self._lock:
            series = self._counters.setdefault(name.removesuffix("_total"), {})
            if key in series or len(series) < MAX_LABEL_SETS:
                series[key] = series.get(key, 0) + n

    def host(self, addr: str) -> list[dict[str, object]]:
        """The recent decisions of one LAN host (as initiator or as the other end), newest first."""
        with self._lock:
            return [dict(r) for r in self._recent if addr in (r.get("src"), r.get("dst"))]

    def snapshot(self) -> dict[str, object]:
        """A JSON-able copy of everything, recent decisions newest first."""
        now = time.time()
        with self._lock:
            snap: dict[str, object] = dict(self._fields)
            snap["recent"] = [dict(r) for r in self._recent]
            snap["counters"] = [{"name": name, "labels": dict(key), "value": value}
                                for name, series in sorted(self._counters.items())
                                for key, value in sorted(series.items())]
        snap.update(started=self._started, now=now, uptime_s=max(0.0, now - self._started))
        return snap
