"""Health that tells the truth: "ok" or "degraded" with the reasons, worked out from the status state.

Every wing already writes what it knows into the status state (reload refusals, uplink errors, spool
backlog, registry sync outcome, kernel fail-open counters, flow-table evictions, classifier errors);
`Health.assess` reads a snapshot and says what is wrong, worst first. Counters are cumulative, so a
counter degrades health only while it rose within the last `window` seconds: a flood an hour ago is
history, not a current fault. The uplink may fail for `uplink_grace` seconds (a collector restart, a
short outage) before it counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

UPLINK_GRACE: Final = 600.0  # default status.uplink_grace: seconds of uplink failure before health degrades
WINDOW: Final = 600.0  # a counter that rose within this many seconds degrades health
SPOOL_NEAR_FULL: Final = 0.8  # share of report.spool.max_events

#: (section of the snapshot, counter, what it means): counters that must not be rising
_COUNTERS: Final = (
    ("kernel", "bypassed_flows", "fail-open: {n} connection(s) passed without a verdict "
                                 "(queue full, or the daemon away)"),
    ("kernel", "flood_dropped", "flood: {n} new connection(s) over a LAN host's limit dropped"),
    ("flows", "evicted", "flow table full: {n} flow(s) forgotten (raise queue.flows, or a flood)"),
    ("flows", "classifier_errors", "classifier errors: {n} (see the log)"),
)


@dataclass
class Health:
    """Remembers counters and since when the uplink fails; `assess` gives (health, reasons)."""

    uplink_grace: float = UPLINK_GRACE
    window: float = WINDOW
    _seen: dict[str, tuple[int, float]] = field(default_factory=dict)  # counter -> (value, rose at)
    _uplink_failing_since: float | None = None

    def assess(self, snap: Mapping[str, object], now: float) -> tuple[str, list[str]]:
        """("ok", []) or ("degraded", reasons, worst first) for this snapshot at time `now`."""
        reasons: list[str] = []
        check = snap.get("config_check")
        if isinstance(check, str) and check != "ok":
            reasons.append(f"configuration: {check}")
        report = snap.get("report")
        if isinstance(report, str) and report:
            reasons.append(f"reporting: {report}")
        for section, name, text in _COUNTERS:
            rose = self._rose(f"{section}.{name}", _counter(snap, section, name), now)
            if rose:
                reasons.append(text.format(n=rose))
        reasons.extend(self._uplink(snap, now))
        sync = snap.get("registry_sync_error")
        if isinstance(sync, str) and sync:
            # the syncer's messages may already name themselves (regsync.py): one prefix is enough
            reasons.append(f"registry sync: {sync.removeprefix('registry sync: ')}")
        stale = snap.get("registry_stale")  # policy/syncer.py: the registry's document near or past expiry
        if isinstance(stale, str) and stale:
            reasons.append(stale)
        return ("degraded" if reasons else "ok"), reasons

    def _rose(self, key: str, value: int | None, now: float) -> int:
        """The counter's total while it rose within the window, else 0 (also when it is unknown)."""
        if value is None:
            return 0
        last = self._seen.get(key)
        if last is None or value > last[0]:
            self._seen[key] = (value, now if value > 0 else float("-inf"))
        elif value < last[0]:  # counters restart with the process that keeps them
            self._seen[key] = (value, float("-inf"))
        total, rose_at = self._seen[key]
        return total if total > 0 and now - rose_at <= self.window else 0

    def _uplink(self, snap: Mapping[str, object], now: float) -> list[str]:
        out: list[str] = []
        err = snap.get("uplink_last_error")
        if not err:
            self._uplink_failing_since = None
        else:
            if self._uplink_failing_since is None:
                self._uplink_failing_since = now
            failing = now - self._uplink_failing_since
            if failing >= self.uplink_grace:
                # a short configured grace (status.uplink_grace) would otherwise read "failing for 0 min"
                since = f"{failing / 60:.0f} min" if failing >= 120 else f"{failing:.0f} s"
                out.append(f"uplink failing for {since}: {err}")
        backlog, limit = snap.get("uplink_backlog"), snap.get("spool_max_events")
        near = isinstance(backlog, int) and isinstance(limit, int) and limit > 0 \
            and backlog >= SPOOL_NEAR_FULL * limit
        if near and isinstance(backlog, int) and isinstance(limit, int):
            out.append(f"spool {100 * backlog // limit}% full ({backlog} of {limit} events waiting): "
                       "the oldest events go first when it is full")
        return out


def _counter(snap: Mapping[str, object], section: str, name: str) -> int | None:
    part = snap.get(section)
    if isinstance(part, Mapping):
        v = part.get(name)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None
