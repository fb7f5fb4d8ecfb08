"""The flow table: direction-agnostic lookup, idle expiry driven by packet time, and a hard size bound.

Flows are kept in least-recently-seen order, so both idle expiry and eviction under pressure pop from
the head in O(1). Lifecycle hooks (`on_end`) let the caller finalise and report a flow exactly once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

from tunnelwatch.classify.flow import Flow, FlowKey
from tunnelwatch.classify.packet import Packet


class FlowTable:
    """Bounded table of live flows."""

    def __init__(self, idle_timeout: float = 120.0, max_flows: int = 262_144,
                 on_end: Callable[[Flow, str], None] | None = None) -> None:
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self.on_end = on_end
        self._flows: OrderedDict[FlowKey, Flow] = OrderedDict()
        self.created = 0
        self.expired = 0
        self.evicted = 0
        # Idle expiry is checked at most once per second of packet time, not on every packet.
        self._next_expiry = float("-inf")

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[Flow]:
        return iter(list(self._flows.values()))

    def get(self, pkt: Packet) -> tuple[Flow, bool]:
        """Return (flow, created) for the packet, creating the flow and expiring idle ones as needed."""
        # flow_key() and the expiry check inlined: this runs for every packet (docs/performance.md)
        src, sport, dst, dport, ts = pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.ts
        if src < dst or (src == dst and sport <= dport):
            key = (src, sport, dst, dport, pkt.proto)
        else:
            key = (dst, dport, src, sport, pkt.proto)
        flows = self._flows
        flow = flows.get(key)
        if flow is not None:
            if ts - flow.last_ts <= self.idle_timeout:
                if ts > flow.last_ts:  # out-of-order capture timestamps never move time back
                    flow.last_ts = ts
                flows.move_to_end(key)
                if ts >= self._next_expiry:
                    self._expire(ts)
                return flow, False
            # Same 5-tuple after a long silence: a new flow, as nfstream and conntrack would see it.
            del flows[key]
            self.expired += 1
            self._end(flow, "idle")
        if ts >= self._next_expiry:
            self._expire(ts)
        while len(flows) >= self.max_flows:
            _, old = flows.popitem(last=False)
            self.evicted += 1
            self._end(old, "evicted")
        flow = Flow(key, pkt)
        flows[key] = flow
        self.created += 1
        return flow, True

    def _expire(self, now: float) -> None:
        self._next_expiry = now + 1.0
        flows = self._flows
        limit = now - self.idle_timeout
        while flows:
            key, flow = next(iter(flows.items()))
            if flow.last_ts >= limit:
                return
            del flows[key]
            self.expired += 1
            self._end(flow, "idle")

    def peek(self, key: FlowKey) -> Flow | None:
        """The flow with this key, if tracked (no accounting, no expiry)."""
        return self._flows.get(key)

    def end(self, key: FlowKey, reason: str) -> bool:
        """End one flow now (e.g. its 5-tuple was reused by a new connection); False when not tracked."""
        flow = self._flows.pop(key, None)
        if flow is None:
            return False
        self._end(flow, reason)
        return True

    def flush(self) -> None:
        """End every remaining flow (end of capture or shutdown)."""
        while self._flows:
            _, flow = self._flows.popitem(last=False)
            self._end(flow, "flush")

    def _end(self, flow: Flow, reason: str) -> None:
        if self.on_end is not None:
            self.on_end(flow, reason)
