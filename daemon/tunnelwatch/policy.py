"""The register-or-block policy: from a flow's verdict and the registry to allow / report / block.

Pure and clock-injected (`now` is a parameter) so every branch is unit-testable. Blocking needs all of:
a flagged klass, mode `enforce` (or `grace` past its date), no valid registration, and at least the
rule's minimum confidence. Anything else passes: the customer is never cut off on a guess.

Bulk VoIP (the grey-traffic signature: one LAN host carrying many calls at once) is counted in RTP
media flows, one per call leg, because SIP signalling shares one 5-tuple for every call between two
endpoints. The daemon only sees the first packets of a connection (the kernel handles the rest), so a
call cannot be watched until it ends: "concurrent" means media flows the host started within the last
`bulk_window` seconds. The host is the flow's initiator. Above `bulk_calls`, every new VoIP flow of that
host (SIP included) is reported or blocked, whatever the voip klass rule says; blocking still needs
the voip rule's minimum confidence.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

from tunnelwatch.classify.base import Verdict
from tunnelwatch.flow import Flow, FlowKey
from tunnelwatch.packet import addr_text
from tunnelwatch.registry import Registry
from tunnelwatch.runconfig import Rule, RunConfig, VoipRule

Action = Literal["allow", "report", "block"]
_CONF_RANK: Final = {"port": 0, "list": 1, "heuristic": 2, "confirmed": 3}
MEDIA_PROTOCOLS: Final = ("rtp",)
_MAX_TRACKED: Final = 100_000  # media flows remembered at most: memory stays bounded under a flood


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a flow and why; `reject` asks for TCP RST / ICMP unreachable instead of a drop,
    `bulk` marks a bulk-VoIP decision (logged as a warning)."""

    action: Action
    reason: str
    reject: bool = False
    bulk: bool = False


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

    def rule_for(self, verdict: Verdict) -> Rule:
        """The rule that governs this verdict."""
        return self.protocol.get(verdict.protocol) or self.klass.get(verdict.klass) or self.default

    def decide(self, flow: Flow, verdict: Verdict, registry: Registry, now: dt.datetime) -> Decision:
        """Decide one classified flow."""
        if verdict.klass in ("benign", "unknown"):
            return Decision("allow", "not a tunnel")
        entry = registry.lookup(flow, verdict.protocol, now)
        if entry is not None:
            return Decision("allow", f"registered {entry.id}")
        rule = self.rule_for(verdict)
        if verdict.klass == "voip" and self.voip.bulk_calls:
            bulk = self._bulk(flow, verdict, rule, now)
            if bulk is not None:
                return bulk
        if rule.mode == "monitor":
            return Decision("report", "monitor mode")
        if rule.mode == "grace" and rule.until is not None and now < rule.until:
            return Decision("report", f"grace until {rule.until.isoformat(timespec='minutes')}")
        if _CONF_RANK[verdict.confidence] < _CONF_RANK[rule.min_confidence]:
            return Decision("report", f"confidence {verdict.confidence} below {rule.min_confidence}")
        return Decision("block", "unregistered", reject=rule.action == "reject")

    def _bulk(self, flow: Flow, verdict: Verdict, rule: Rule, now: dt.datetime) -> Decision | None:
        host = flow.src
        if verdict.protocol in MEDIA_PROTOCOLS:
            self.calls.add(host, flow.key, now)
        calls = self.calls.count(host, now)
        if calls <= self.voip.bulk_calls:
            return None
        why = f"bulk VoIP: {calls} calls from {addr_text(host)} within {self.voip.bulk_window} s " \
              f"(limit {self.voip.bulk_calls})"
        if self.voip.bulk_action == "report":
            return Decision("report", why, bulk=True)
        if _CONF_RANK[verdict.confidence] < _CONF_RANK[rule.min_confidence]:
            return Decision("report", f"{why}; confidence {verdict.confidence} below {rule.min_confidence}",
                            bulk=True)
        return Decision("block", why, reject=rule.action == "reject", bulk=True)


class _CallCounter:
    """Media flows per host started within a sliding window (oldest first, so expiry is O(1) each)."""

    def __init__(self, window: float) -> None:
        self.window = dt.timedelta(seconds=window)
        self.order: deque[tuple[dt.datetime, bytes, FlowKey]] = deque()
        self.by_host: dict[bytes, set[FlowKey]] = {}

    def _expire(self, now: dt.datetime) -> None:
        while self.order and (now - self.order[0][0] >= self.window or len(self.order) > _MAX_TRACKED):
            _, host, key = self.order.popleft()
            keys = self.by_host.get(host)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_host[host]

    def add(self, host: bytes, key: FlowKey, now: dt.datetime) -> None:
        """Count a media flow of `host` (the same flow twice counts once)."""
        self._expire(now)
        keys = self.by_host.setdefault(host, set())
        if key not in keys:
            keys.add(key)
            self.order.append((now, host, key))

    def count(self, host: bytes, now: dt.datetime) -> int:
        """Media flows `host` started within the window."""
        self._expire(now)
        return len(self.by_host.get(host, ()))
