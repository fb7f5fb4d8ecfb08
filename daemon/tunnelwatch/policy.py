"""The register-or-block policy: from a flow's verdict and the registry to allow / report / block.

Pure and clock-injected (`now` is a parameter) so every branch is unit-testable. Blocking needs all of:
a flagged klass, mode `enforce` (or `grace` past its date), no valid registration, and at least the
rule's minimum confidence. Anything else passes: the customer is never cut off on a guess.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final, Literal

from tunnelwatch.classify.base import Verdict
from tunnelwatch.flow import Flow
from tunnelwatch.registry import Registry
from tunnelwatch.runconfig import Rule, RunConfig

Action = Literal["allow", "report", "block"]
_CONF_RANK: Final = {"port": 0, "heuristic": 1, "confirmed": 2}


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a flow and why; `reject` asks for TCP RST / ICMP unreachable instead of a drop."""

    action: Action
    reason: str
    reject: bool = False


class Policy:
    """Per-klass and per-protocol rules (protocol wins over klass, klass over the default)."""

    def __init__(self, default: Rule, klass: dict[str, Rule] | None = None,
                 protocol: dict[str, Rule] | None = None) -> None:
        self.default = default
        self.klass = dict(klass or {})
        self.protocol = dict(protocol or {})

    @classmethod
    def from_config(cls, cfg: RunConfig) -> Policy:
        """The policy section of a run configuration."""
        return cls(cfg.default, cfg.klass, cfg.protocol)

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
        if rule.mode == "monitor":
            return Decision("report", "monitor mode")
        if rule.mode == "grace" and rule.until is not None and now < rule.until:
            return Decision("report", f"grace until {rule.until.isoformat(timespec='minutes')}")
        if _CONF_RANK[verdict.confidence] < _CONF_RANK[rule.min_confidence]:
            return Decision("report", f"confidence {verdict.confidence} below {rule.min_confidence}")
        return Decision("block", "unregistered", reject=rule.action == "reject")
