"""FlowRecord: the event kind of a decided flow, its fields as events see them, bounded evidence."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tunnelwatch.record import EVIDENCE_LEN, EVIDENCE_MAX, FlowRecord


def _rec(**kw: Any) -> FlowRecord:
    base: dict[str, Any] = dict(ts=1.0, src="192.0.2.1", sport=40000, dst="198.51.100.7", dport=1194,
                                transport="udp", klass="vpn_tunnel", protocol="openvpn",
                                confidence="confirmed", action="block", reason="unregistered")
    base.update(kw)
    return FlowRecord(**base)


def test_kind_follows_action_registration_and_klass() -> None:
    assert _rec().kind == "flow_blocked"
    used = _rec(action="allow", registration_id="R-1", reason="registered R-1")
    assert used.kind == "registered_tunnel_used"
    assert _rec(action="report").kind == "flow_tagged"
    assert _rec(action="allow", klass="benign", protocol="tls").kind is None


def test_fields_leave_out_what_is_unset_and_bound_evidence() -> None:
    rec = _rec(evidence=tuple("x" * 500 for _ in range(40)))
    assert len(rec.evidence) == EVIDENCE_MAX and all(len(e) == EVIDENCE_LEN for e in rec.evidence)
    f = rec.fields()
    assert "registration_id" not in f and "bulk" not in f and isinstance(f["evidence"], list)
    assert _rec(bulk=True, registration_id="R-1").fields()["registration_id"] == "R-1"


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _rec().action = "allow"  # type: ignore[misc]
