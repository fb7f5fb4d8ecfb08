"""The register-or-block policy: from a flow's verdict and the registry to allow / report / block.

Pure and clock-injected (`now` is a parameter) so every branch is unit-testable. Blocking needs all of:
a flagged klass, mode `enforce` (or `grace` past its date), no valid registration, and at least the
rule's minimum confidence. Anything else passes: the customer is never cut off on a guess.

Bulk VoIP (the grey-traffic signature: one LAN host carrying many calls at once) counts the calls a host
has active at the same time. A call is a media flow: an RTP flow (one per call leg, because SIP signalling
shares one 5-tuple for every call between two endpoints), or a messenger call flow (whatsapp_call,
signal_call, telegram_call), where one UDP socket of the host talks to relays, peers and media at once
and so counts once per socket. A call counts from its decision until its flow ends (`ended`, fed by the
engine's on_end) or, when no end is ever reported, for at most `bulk_window` seconds. The daemon sees only
the first packets of a connection (the kernel handles the rest), so an end means the flow went idle in
the daemon's flow table (its idle timeout after the last queued packet): "active" is "decided and not yet
expired". The host is the flow's initiator. Above `bulk_calls`, every new VoIP flow of that host (SIP
included) is reported or blocked, whatever the voip klass rule says; blocking still needs the voip rule's
minimum confidence. Memory stays bounded: at most `_MAX_TRACKED` calls are remembered (the oldest go first).
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass
from typing import Final

from tunnelwatch.classify.flow import Flow, FlowKey
from tunnelwatch.classify.packet import addr_text
from tunnelwatch.config.runconfig import Rule, RunConfig, VoipRule
from tunnelwatch.policy.registry import Registry
from tunnelwatch.record import Action
from tunnelwatch.verdict import Verdict, confidence_at_least

#: messenger calls: one UDP socket per call, whatever the number of relays and peers it talks to
SOCKET_CALLS: Final = ("whatsapp_call", "signal_call", "telegram_call")
MEDIA_PROTOCOLS: Final = ("rtp", *SOCKET_CALLS)
_MAX_TRACKED: Final = 100_000  # calls remembered at most: memory stays bounded under a flood
CallKey = tuple[bytes, int] | FlowKey


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a flow and why; `reject` asks for TCP RST / ICMP unreachable instead of a drop,
    `bulk` marks a bulk-VoIP decision (logged as a warning), `calls` is the host's concurrent calls when
    bulk VoIP is counted for a VoIP flow (0 otherwise), `registration` the registry entry that allowed it."""

    action: Action
    reason: str
    reject: bool = False
    bulk: bool = False
    calls: int = 0
    registration: str | None = None


class Policy:
    """Per-klass and per-protocol rules (protocol wins over klass, klass over the default)."""

    def __init__(self, default: Rule, klass: dict[str, Rule] | None = None,
                 protocol: dict[str, Rule] | None = None, voip: VoipRule | None = None) -> None:
        self.default = default
        self.klass = dict(klass or {})
        self.protocol = dict(protocol or {})
        self.voip = voip or VoipRule()
        self.calls = _CallCounter(self.voip.bulk_window)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Policy:
        """The policy section of a run configuration."""
        return cls(cfg.default, cfg.klass, cfg.protocol, cfg.voip)

    def ended(self, flow: Flow) -> None:
        """A flow ended (engine on_end): if it was a counted call, the host has one call less."""
        self.calls.end(flow.key)

    def active_calls(self, now: dt.datetime, limit: int = 20) -> dict[str, int]:
        """The hosts with the most concurrent calls now (for the status page), busiest first."""
        return {addr_text(h): n for h, n in self.calls.busiest(now, limit)}

    def rule_for(self, verdict: Verdict) -> Rule:
        """The rule that governs this verdict."""
        return self.protocol.get(verdict.protocol) or self.klass.get(verdict.klass) or self.default

    def decide(self, flow: Flow, verdict: Verdict, registry: Registry, now: dt.datetime) -> Decision:
        """Decide one classified flow."""
        if not verdict.flagged:
            return Decision("allow", "not a tunnel")
        entry = registry.lookup(flow, verdict.protocol, now)
        if entry is not None:
            return Decision("allow", f"registered {entry.id}", registration=entry.id)
        rule = self.rule_for(verdict)
        calls = 0
        if verdict.klass == "voip" and self.voip.bulk_calls:
            bulk = self._bulk(flow, verdict, rule, now)
            if bulk is not None:
                if bulk.bulk:
                    return bulk
                calls = bulk.calls
        if rule.mode == "monitor":
            return Decision("report", "monitor mode", calls=calls)
        if rule.mode == "grace" and rule.until is not None and now < rule.until:
            return Decision("report", f"grace until {rule.until.isoformat(timespec='minutes')}", calls=calls)
        if not confidence_at_least(verdict.confidence, rule.min_confidence):
            return Decision("report", f"confidence {verdict.confidence} below {rule.min_confidence}",
                            calls=calls)
        return Decision("block", "unregistered", reject=rule.action == "reject", calls=calls)

    def _bulk(self, flow: Flow, verdict: Verdict, rule: Rule, now: dt.datetime) -> Decision | None:
        host = flow.src
        if verdict.protocol in MEDIA_PROTOCOLS:
            call: CallKey = (host, flow.sport) if verdict.protocol in SOCKET_CALLS else flow.key
            self.calls.add(host, call, flow.key, now)
        calls = self.calls.count(host, now)
        if calls <= self.voip.bulk_calls:
            return Decision("allow", "", calls=calls) if calls else None
        why = f"bulk VoIP: {calls} concurrent calls from {addr_text(host)} (limit {self.voip.bulk_calls})"
        if self.voip.bulk_action == "report":
            return Decision("report", why, bulk=True, calls=calls)
        if not confidence_at_least(verdict.confidence, rule.min_confidence):
            return Decision("report", f"{why}; confidence {verdict.confidence} below {rule.min_confidence}",
                            bulk=True, calls=calls)
        return Decision("block", why, reject=rule.action == "reject", bulk=True, calls=calls)


class _CallCounter:
    """Calls active per host: added at their decision, removed when their flow ends or after `max_age`.

    Calls are kept oldest first, so expiry pops from the head in O(1); an ended call leaves a stale entry
    in that queue, skipped when it reaches the head (its generation no longer matches).
    """

    def __init__(self, max_age: float) -> None:
        self.max_age = dt.timedelta(seconds=max_age)
        self.order: deque[tuple[dt.datetime, bytes, CallKey, int]] = deque()
        self.by_host: dict[bytes, dict[CallKey, int]] = {}  # host -> call -> generation
        self.flows: dict[FlowKey, tuple[bytes, CallKey]] = {}  # media flow -> its call
        self.members: dict[tuple[bytes, CallKey], int] = {}  # flows still open per call
        self._gen = 0

    def _drop(self, host: bytes, call: CallKey) -> None:
        calls = self.by_host.get(host)
        if calls is not None:
            calls.pop(call, None)
            if not calls:
                del self.by_host[host]
        self.members.pop((host, call), None)

    def _expire(self, now: dt.datetime) -> None:
        order = self.order
        while order and (now - order[0][0] >= self.max_age or len(order) > _MAX_TRACKED):
            _, host, call, gen = order.popleft()
            if self.by_host.get(host, {}).get(call) == gen:
                self._drop(host, call)
        if len(self.flows) > 2 * _MAX_TRACKED:
            # ends never reported for expired calls: forget flows whose call is gone
            self.flows = {k: v for k, v in self.flows.items() if v[0] in self.by_host
                          and v[1] in self.by_host[v[0]]}

    def add(self, host: bytes, call: CallKey, flow: FlowKey, now: dt.datetime) -> None:
        """Count a call of `host` carried by media flow `flow` (the same flow twice counts once)."""
        self._expire(now)
        if flow in self.flows:
            return
        calls = self.by_host.setdefault(host, {})
        if call not in calls:
            self._gen += 1
            calls[call] = self._gen
            self.order.append((now, host, call, self._gen))
        self.flows[flow] = (host, call)
        self.members[(host, call)] = self.members.get((host, call), 0) + 1

    def end(self, flow: FlowKey) -> None:
        """The media flow ended: its call ends with the last of its flows."""
        hc = self.flows.pop(flow, None)
        if hc is None:
            return
        left = self.members.get(hc, 0) - 1
        if left > 0:
            self.members[hc] = left
        else:
            self._drop(*hc)

    def count(self, host: bytes, now: dt.datetime) -> int:
        """Calls `host` has active now."""
        self._expire(now)
        return len(self.by_host.get(host, ()))

    def busiest(self, now: dt.datetime, limit: int) -> list[tuple[bytes, int]]:
        """Up to `limit` hosts with the most active calls, busiest first."""
        self._expire(now)
        return sorted(((h, len(c)) for h, c in self.by_host.items()), key=lambda x: -x[1])[:limit]
