"""FlowRecord: one decided flow as it travels from the decision to status, events and IPFIX.

Built once by the enforcer from the flow, its verdict and the policy's decision; read (never changed) by
the status state, the reporter and the IPFIX exporter. Addresses are text, evidence is bounded, and there
is no field that could hold payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from tunnelwatch.verdict import FLAGGED, Confidence, Klass

Action = Literal["allow", "report", "block"]
EVIDENCE_MAX: Final = 16  # evidence lines kept per record
EVIDENCE_LEN: Final = 128  # characters kept per evidence line
#: the record's fields in the order events and status list them
FIELDS: Final = ("ts", "src", "sport", "dst", "dport", "transport", "klass", "protocol", "confidence",
                 "evidence", "action", "reason", "bulk", "packets", "bytes", "registration_id", "first_seen",
                 "last_seen")


@dataclass(frozen=True, slots=True)
class FlowRecord:
    """One decided flow: who talked to whom, what it is, what was done and why."""

    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    transport: str
    klass: Klass
    protocol: str
    confidence: Confidence
    action: Action
    reason: str
    evidence: tuple[str, ...] = ()
    bulk: bool = False
    #: the registry entry that let the flow through (None when no registration applied)
    registration_id: str | None = None
    packets: int = 0
    bytes: int = 0
    first_seen: float | None = None
    last_seen: float | None = None

    def __post_init__(self) -> None:
        if len(self.evidence) > EVIDENCE_MAX or any(len(e) > EVIDENCE_LEN for e in self.evidence):
            bounded = tuple(e[:EVIDENCE_LEN] for e in self.evidence[:EVIDENCE_MAX])
            object.__setattr__(self, "evidence", bounded)

    @property
    def kind(self) -> str | None:
        """The event it gives: blocked, registered tunnel used, tagged, or none (benign/unknown)."""
        if self.action == "block":
            return "flow_blocked"
        if self.registration_id:
            return "registered_tunnel_used"
        if self.klass in FLAGGED:
            return "flow_tagged"
        return None

    def fields(self) -> dict[str, object]:
        """The record as event fields: unset values (no registration, not bulk) left out."""
        out: dict[str, object] = {}
        for k in FIELDS:
            v = getattr(self, k)
            if k == "evidence":
                v = list(v)
            elif k == "bulk":
                v = v or None
            if v is not None:
                out[k] = v
        return out
