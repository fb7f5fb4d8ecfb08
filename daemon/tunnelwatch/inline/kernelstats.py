"""Accountable fail-open: the kernel's counters of packets that passed without the daemon, polled.

Owns the polling of firewall.counters() / firewall.limited_hosts() (a few iptables-save runs every
POLL_S seconds, in a thread of the main process: never on the packet path), the figures it puts into
the status state (`kernel`: bypassed packets and flows, new connections dropped by the flood limit, the
hosts over it now) and the `new_flow_limit` event sent upward when the flood limit trips (at most one
per EVENT_EVERY seconds, carrying the drops since the previous one). The heartbeat reads the same
figures from the status state (reporting.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

from tunnelwatch.appliance.state import StatusState
from tunnelwatch.inline import firewall
from tunnelwatch.report.heartbeat import queue_counters

log = logging.getLogger(__name__)

POLL_S: Final = 5.0
EVENT_EVERY: Final = 60.0
Event = Callable[..., None]


class HasSpec(Protocol):
    """The installed rule set (daemon.Rules): its spec changes on reloads."""

    spec: firewall.Spec


class KernelStats:
    """Polls the kernel counters into the status state and reports flood-limit trips."""

    def __init__(self, rules: HasSpec, state: StatusState, event: Event, poll: float = POLL_S) -> None:
        self.rules = rules
        self.state = state
        self.event = event
        self.poll = poll
        self.reported_drops = 0  # flood drops already carried by an event
        self.next_event = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start polling in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="tunnelwatch-kstats", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (waits for the thread at most one poll)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.poll + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.poll_once()
            except Exception:  # a failed iptables run must not end accounting for good
                log.exception("kernel counters: poll failed")

    def poll_once(self, now: float | None = None) -> dict[str, object]:
        """Read the counters once, publish them, report a flood-limit trip; returns the figures."""
        spec = self.rules.spec
        counts = firewall.counters(spec)
        hosts = firewall.limited_hosts(spec) if spec.new_flow_rate else []
        queued, qdropped = queue_counters(range(spec.queue_num, spec.queue_num + spec.queue_count))
        figures: dict[str, object] = {**counts, "limited_hosts": hosts[:16], "queue_packets": queued,
                                      "queue_dropped": qdropped}
        self.state.set(kernel=figures)
        dropped = counts["flood_dropped"]
        if dropped < self.reported_drops:
            self.reported_drops = 0  # the rules were re-installed (a reload): their counters restarted
        now = time.monotonic() if now is None else now
        if dropped > self.reported_drops and now >= self.next_event:
            delta = dropped - self.reported_drops
            self.reported_drops = dropped
            self.next_event = now + EVENT_EVERY
            log.warning("new-connection limit (%d/s per host) tripped: %d new connections dropped%s",
                        spec.new_flow_rate, delta, f" from {', '.join(hosts[:4])}" if hosts else "")
            self.event("new_flow_limit", dropped=delta, limit=spec.new_flow_rate,
                       src=hosts[0] if hosts else None, hosts=len(hosts))
        return figures
