"""Events: every kind builds and validates, the checked-in JSON Schema is current and agrees with the
runtime checks, and payload-like or unknown input is refused by both."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tunnelwatch.report import events
from tunnelwatch.report.events import KINDS, SCHEMA_VERSION, EventError, make_event, validate_event

SCHEMA_FILE = Path(__file__).resolve().parents[3] / "docs" / "events.schema.json"
FLOW: dict[str, Any] = dict(src="192.0.2.10", sport=51234, dst="198.51.100.7", dport=1194, transport="udp",
                            klass="vpn_tunnel", protocol="openvpn", confidence="confirmed", action="report",
                            evidence=["P_CONTROL_HARD_RESET_CLIENT_V2", "opcode 7, key id 0"],
                            reason="unregistered", packets=4, bytes=512)
EXAMPLES: dict[str, dict[str, Any]] = {
    "flow_tagged": FLOW,
    "flow_blocked": {**FLOW, "action": "block", "bulk": False, "first_seen": 1_700_000_000.25},
    "registered_tunnel_used": {**FLOW, "action": "allow", "registration_id": "corp-vpn-17",
                               "reason": "registered"},
    "policy_changed": {"summary": "vpn_tunnel: monitor -> enforce",
                       "changes": ["klass vpn_tunnel mode enforce"]},
    "config_changed": {"path": "/etc/tunnelwatch/tunnelwatch.yaml", "digest": "ab" * 32},
    "config_rejected": {"path": "/etc/tunnelwatch/tunnelwatch.yaml",
                        "errors": ["tunnelwatch.yaml:12:5: unknown key 'modee'"]},
    "registry_changed": {"source": "sync", "entries": 12, "version": 41, "digest": "cd" * 32},
    "registry_rejected": {"source": "sync", "reason": "bad signature", "version": 40, "current_version": 41},
    "daemon_started": {"software": "0.1.0", "mode": "nfqueue", "queues": 2,
                       "warnings": ["spool was corrupt: moved aside"], "config_digest": "ef" * 32,
                       "policy_default": "monitor",
                       "policy_modes": {"vpn_tunnel": "enforce", "voip": "grace", "benign": "monitor"},
                       "protocol_modes": {"wireguard": "monitor"}},
    "daemon_stopped": {"reason": "SIGTERM", "uptime_s": 3600.5},
    "heartbeat": {"uptime_s": 60.0, "flows_by_klass": {"vpn_tunnel": 3, "benign": 120},
                  "packets_queued": 9000, "queue_drops": 0,
                  "verdict_latency_ms": {"p50": 0.04, "p99": 0.3, "max": 2.5}, "backlog": 7,
                  "spool_dropped": 0, "bypassed_packets": 24, "bypassed_flows": 24, "flood_dropped": 0,
                  "flows_evicted": 0, "config_digest": "ef" * 32, "policy_default": "monitor",
                  "policy_modes": {"vpn_tunnel": "monitor"}, "protocol_modes": {}},
    "registry_stale": {"reason": "registry expires at 2027-01-15T08:00:00Z (5.0 h left)",
                       "expires": "2027-01-15T08:00:00.000000Z", "version": 41},
    "new_flow_limit": {"dropped": 4210, "limit": 500, "src": "198.51.100.7", "hosts": 1},
}


@pytest.fixture(scope="module")
def validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    doc = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    return jsonschema.Draft202012Validator(doc, format_checker=jsonschema.FormatChecker())


def test_examples_cover_every_kind() -> None:
    assert set(EXAMPLES) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_builds_and_validates(kind: str, validator: Any) -> None:
    ev = make_event(kind, device_id="box-0001", **EXAMPLES[kind])
    assert ev["kind"] == kind and ev["schema"] == SCHEMA_VERSION and ev["device_id"] == "box-0001"
    wire = json.loads(json.dumps(ev))
    validate_event(wire)
    validator.validate(wire)


def test_envelope_ids_seq_and_time() -> None:
    a = make_event("daemon_stopped", device_id="b", ts=0, reason="x", uptime_s=1)
    b = make_event("daemon_stopped", device_id="b", ts=1_700_000_000.5, reason="x", uptime_s=1)
    assert a["id"] != b["id"] and len(str(a["id"])) == 32
    assert a["stream"] == b["stream"]
    assert isinstance(a["seq"], int) and b["seq"] == a["seq"] + 1
    assert a["ts"] == "1970-01-01T00:00:00.000000Z"
    assert b["ts"] == "2023-11-14T22:13:20.500000Z"
    ev = make_event("flow_blocked", device_id="b", **EXAMPLES["flow_blocked"])
    assert ev["first_seen"] == "2023-11-14T22:13:20.250000Z"


def test_none_means_absent_so_privacy_can_omit_addresses(validator: Any) -> None:
    ev = make_event("flow_tagged", device_id="b", **{**FLOW, "src": None, "dst": None})
    assert "src" not in ev and "dst" not in ev
    validator.validate(ev)


def test_forked_child_gets_its_own_stream() -> None:
    parent = make_event("daemon_stopped", device_id="b", reason="x", uptime_s=1)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            ev = make_event("daemon_stopped", device_id="b", reason="x", uptime_s=1)
            os.write(w, json.dumps([ev["stream"], ev["seq"]]).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        stream, seq = json.loads(fh.read())
    os.waitpid(pid, 0)
    assert stream != parent["stream"] and seq == 0


BAD_FIELDS: list[tuple[str, str, object]] = [
    ("flow_tagged", "payload", "GET / HTTP/1.1"),  # unknown field
    ("flow_tagged", "evidence", [b"\x00\x01raw"]),  # bytes inside a list
    ("flow_tagged", "src", b"\xc0\x00\x02\x01"),
    ("flow_tagged", "evidence", ["x" * 129]),  # too long for a short fact
    ("flow_tagged", "evidence", ["line\nbreak"]),  # control characters
    ("flow_tagged", "evidence", ["ok"] * 17),
    ("flow_tagged", "reason", "r" * 257),
    ("flow_tagged", "sport", 70000),
    ("flow_tagged", "dport", -1),
    ("flow_tagged", "dport", True),  # a bool is not a port
    ("flow_tagged", "packets", 1.5),
    ("flow_tagged", "klass", "evil"),
    ("flow_tagged", "confidence", "sure"),
    ("flow_tagged", "protocol", "Open VPN"),
    ("flow_tagged", "src", "192.0.2.1 with spaces"),
    ("flow_blocked", "action", "allow"),  # a blocked flow must say block
    ("registered_tunnel_used", "action", "block"),
    ("config_changed", "digest", "not-a-digest"),
    ("registry_changed", "source", "carrier pigeon"),
    ("daemon_stopped", "uptime_s", -3),
    ("heartbeat", "flows_by_klass", {"Bad Key": 1}),
    ("heartbeat", "flows_by_klass", {"vpn_tunnel": -1}),
    ("heartbeat", "verdict_latency_ms", {"p50": "fast"}),
    ("heartbeat", "config_digest", "EF" * 32),
    ("heartbeat", "policy_modes", {"vpn_tunnel": "off"}),  # not a mode the daemon has
    ("heartbeat", "policy_modes", {"VPN": "monitor"}),
    ("heartbeat", "policy_modes", ["vpn_tunnel", "monitor"]),
    ("daemon_started", "policy_default", "block"),
    ("daemon_started", "protocol_modes", {f"p{i}": "monitor" for i in range(65)}),
    ("daemon_started", "policy_modes", {"voip": 1}),
    ("registry_stale", "expires", "tomorrow"),
]


@pytest.mark.parametrize(("kind", "name", "value"), BAD_FIELDS)
def test_bad_field_is_refused_by_make_event(kind: str, name: str, value: object) -> None:
    with pytest.raises(EventError):
        make_event(kind, device_id="b", **{**EXAMPLES[kind], name: value})


@pytest.mark.parametrize(("kind", "name", "value"), [b for b in BAD_FIELDS if not isinstance(b[2], bytes)
                                                     and "b'" not in repr(b[2])])
def test_schema_and_runtime_agree_on_bad_fields(kind: str, name: str, value: object, validator: Any) -> None:
    ev = json.loads(json.dumps(make_event(kind, device_id="b", **EXAMPLES[kind])))
    ev[name] = value
    with pytest.raises(EventError):
        validate_event(ev)
    assert not validator.is_valid(ev), f"the schema accepts {name}={value!r} but make_event does not"


def test_payload_bytes_are_refused_with_a_clear_message() -> None:
    with pytest.raises(EventError, match="payload"):
        make_event("flow_tagged", device_id="b", **{**FLOW, "evidence": [bytearray(b"\x16\x03\x01")]})


@pytest.mark.parametrize("drop", ["sport", "klass", "action"])
def test_missing_required_field(drop: str) -> None:
    with pytest.raises(EventError, match="missing"):
        make_event("flow_tagged", device_id="b", **{k: v for k, v in FLOW.items() if k != drop})


@pytest.mark.parametrize("device_id", ["", "box 1", "x" * 129, "box\n1"])
def test_bad_device_id(device_id: str) -> None:
    with pytest.raises(EventError):
        make_event("daemon_stopped", device_id=device_id, reason="x", uptime_s=1)


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), -1.0, 1e20])
def test_bad_time(ts: float) -> None:
    with pytest.raises(EventError):
        make_event("daemon_stopped", device_id="b", ts=ts, reason="x", uptime_s=1)


def test_unknown_kind() -> None:
    with pytest.raises(EventError, match="unknown event kind"):
        make_event("flow_sniffed", device_id="b")


@pytest.mark.parametrize("mutate", [
    lambda e: e.pop("id"),
    lambda e: e.update(schema=2),
    lambda e: e.update(id="Z" * 32),
    lambda e: e.update(ts="yesterday"),
    lambda e: e.update(ts=1.5),
    lambda e: e.update(seq=-1),
    lambda e: e.update(kind="nope"),
    lambda e: e.update(reason=None),
])
def test_validate_event_refuses_damaged_envelopes(mutate: Any, validator: Any) -> None:
    ev = json.loads(json.dumps(make_event("daemon_stopped", device_id="b", reason="x", uptime_s=1)))
    bad = copy.deepcopy(ev)
    mutate(bad)
    with pytest.raises(EventError):
        validate_event(bad)
    assert not validator.is_valid(bad)


def test_validate_event_refuses_non_objects() -> None:
    for bad in ([], "event", None, 3):
        with pytest.raises(EventError):
            validate_event(bad)


def test_make_event_is_cheap() -> None:
    # The daemon builds one per decided flow; a generous bound that still catches an accidental
    # jsonschema-at-runtime (milliseconds per call).
    import time
    t0 = time.perf_counter()
    for _ in range(500):
        make_event("flow_tagged", device_id="b", **FLOW)
    assert (time.perf_counter() - t0) / 500 < 0.001


def test_rfc3339_is_public_and_strict() -> None:
    assert events.rfc3339(86400.000001) == "1970-01-02T00:00:00.000001Z"
    with pytest.raises(EventError):
        events.rfc3339(float("nan"))


def test_every_example_in_the_docs_validates(validator: Any) -> None:
    text = (SCHEMA_FILE.parent / "events.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```json\n")[1:]]
    kinds = set()
    for block in blocks:
        ev = json.loads(block)
        validate_event(ev)
        validator.validate(ev)
        kinds.add(ev["kind"])
    assert kinds == set(KINDS)
