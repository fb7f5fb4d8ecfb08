"""Property tests for the reporting path's parsers: registry-sync documents, collector request bodies and
event fields; plus the reproducers of the crashes fuzzing found in them."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import math
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelwatch.isp.collector import _decode
from tunnelwatch.policy.regsync import FORMAT, SIG_CONTEXT, Rejected, sign_document, verify_document
from tunnelwatch.report.events import EventError, make_event, validate_event
from tunnelwatch.report.ipfix import IpfixExporter

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = KEY.public_key()


def envelope(raw: bytes, *, sign: bool = True) -> bytes:
    sig = KEY.sign(SIG_CONTEXT + raw) if sign else b"\0" * 64
    return json.dumps({"format": FORMAT, "payload": base64.b64encode(raw).decode(),
                       "signature": base64.b64encode(sig).decode()}).encode()


JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), JSONISH.map(lambda v: json.dumps(v).encode()),
                 st.builds(lambda p, s: json.dumps({"format": FORMAT, "payload": p, "signature": s}).encode(),
                           st.text(max_size=20), st.text(max_size=20))))
def test_unsigned_documents_are_rejected(body: bytes) -> None:
    with pytest.raises(Rejected):
        verify_document(body, PUB)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), JSONISH.map(lambda v: json.dumps(v).encode())))
def test_signed_payloads_give_a_payload_or_rejected(raw: bytes) -> None:
    try:
        payload = verify_document(envelope(raw), PUB)
    except Rejected:
        return
    assert isinstance(payload["version"], int) and payload["version"] >= 1
    assert isinstance(payload["registry"], str)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), JSONISH.map(lambda v: json.dumps(v).encode())),
       st.sampled_from(["identity", "gzip", "GZIP", "br", ""]), st.booleans())
def test_collector_bodies_decode_or_raise_valueerror(raw: bytes, encoding: str, compress: bool) -> None:
    body = gzip.compress(raw, mtime=0) if compress and encoding.lower() == "gzip" else raw
    with contextlib.suppress(ValueError):
        _decode(body, encoding)


FIELDS = st.sampled_from(["src", "dst", "sport", "dport", "transport", "klass", "protocol", "confidence",
                          "evidence", "action", "reason", "packets", "bytes", "first_seen", "uptime_s",
                          "flows_by_klass", "software", "mode", "path", "errors", "summary"])
HOSTILE = st.one_of(JSONISH, st.sampled_from([10**400, -(10**400), math.inf, math.nan, "a\n", "\x00", b"x",
                                              "2026-01-01T00:00:00.000000Z\n", ["ok\n"], {"voip\n": 1}]))


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["flow_tagged", "heartbeat", "daemon_started", "daemon_stopped", "config_rejected",
                        "policy_changed", "nope"]),
       st.one_of(st.just("box1"), HOSTILE), st.one_of(st.none(), HOSTILE), st.dictionaries(FIELDS, HOSTILE))
def test_make_event_raises_only_eventerror(kind: str, device_id: Any, ts: Any,
                                           fields: dict[str, Any]) -> None:
    try:
        ev = make_event(kind, device_id=device_id, ts=ts, **fields)
    except EventError:
        return
    validate_event(json.loads(json.dumps(ev, allow_nan=False)))


# -- reproducers of crashes found by fuzzing (tests/fuzz/regressions/{regsync,collector,events}/) -----------

@pytest.mark.parametrize("body", [
    b"[" * 3000,  # RecursionError in json.loads, before the signature check
    b'{"format": "tunnelwatch-registry/1", "v": ' + b"9" * 5000 + b"}",  # ValueError: int digit limit
    json.dumps({"format": FORMAT, "payload": "\u00e9", "signature": ""}, ensure_ascii=False).encode(),
])
def test_hostile_unsigned_documents_are_rejected(body: bytes) -> None:
    with pytest.raises(Rejected):
        verify_document(body, PUB)


@pytest.mark.parametrize("raw", [b"[" * 3000, b'{"version": ' + b"9" * 5000 + b"}",
                                 json.dumps({"version": 1, "registry": "\ud800"}).encode()])
def test_hostile_signed_payloads_are_rejected(raw: bytes) -> None:
    with pytest.raises(Rejected):
        verify_document(envelope(raw), PUB)


def test_signed_document_still_verifies() -> None:
    doc = sign_document(KEY, 7, "registrations: []\n", issued="2026-11-23T00:00:00Z")
    assert verify_document(doc, PUB)["version"] == 7


def test_collector_rejects_deep_nesting_as_bad_json() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        _decode(b"[" * 3000, "identity")


@pytest.mark.parametrize("kw", [
    {"ts": "1"}, {"ts": 10**400}, {"ts": True}, {"uptime_s": 10**400}, {"device_id": "box\n"},
    {"reason": "stopped\n"}, {"uptime_s": math.nan},
])
def test_hostile_event_fields_are_eventerrors(kw: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"device_id": "box1", "reason": "SIGTERM", "uptime_s": 1.0, **kw}
    with pytest.raises(EventError):
        make_event("daemon_stopped", **fields)


def test_time_field_beyond_float_range_is_an_eventerror() -> None:
    with pytest.raises(EventError):
        make_event("flow_tagged", device_id="b", sport=1, dport=2, transport="udp", klass="voip",
                   protocol="sip", confidence="confirmed", action="report", first_seen=10**400)


def test_trailing_newline_in_keys_and_lists_is_refused() -> None:
    with pytest.raises(EventError):
        make_event("heartbeat", device_id="b", uptime_s=1, flows_by_klass={"voip\n": 1}, packets_queued=0,
                   queue_drops=0)
    with pytest.raises(EventError):
        make_event("config_rejected", device_id="b", path="/x", errors=["x:1:1: bad\n"])
    ev = make_event("config_rejected", device_id="b", path="/x", errors=["x:1:1: bad"])
    assert ev["errors"] == ["x:1:1: bad"]


class _CaptureExporter(IpfixExporter):
    """The real exporter, writing into a list instead of a socket."""

    def __init__(self) -> None:
        super().__init__(("192.0.2.10", 4739), clock=lambda: 1_790_000_000.0)
        self.sent: list[bytes] = []

    def _ensure_socket(self) -> Any:
        exporter = self

        class _Sock:
            def sendto(self, data: bytes, addr: object) -> int:
                exporter.sent.append(data)
                return len(data)

            def close(self) -> None:
                pass
        return _Sock()


def test_ipfix_time_beyond_float_range_falls_back_to_now() -> None:
    # float(10**400) raised OverflowError, which _ms did not catch: the whole export call failed
    ex = _CaptureExporter()
    ex.export([{"src": "192.0.2.1", "dst": "192.0.2.2", "sport": 1, "dport": 2, "transport": "udp",
                "first_seen": 10**400, "last_seen": -(10**400)}])
    assert ex.stats["records"] == 1 and ex.stats["skipped"] == 0
    data = ex.sent[-1]
    assert data[:2] == b"\x00\x0a" and int.from_bytes(data[2:4], "big") == len(data)
