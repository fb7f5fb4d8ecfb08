"""The ISP side's batch checks: topic parsing, certificate identities, payload decoding and the
device-identity chain (topic = envelope = every event), per-event refusals and the time window."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tunnelwatch.isp.envelope import (
    MAX_INFLATED,
    BatchError,
    cert_identities,
    check_batch,
    decode,
    parse_ts,
    topic_device,
)
from tunnelwatch.report.events import make_event
from tunnelwatch.report.wire import batch_id_for, encode_batch

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
AGE = timedelta(days=90)


def _batch(device: str, n: int = 3, **envelope: Any) -> dict[str, Any]:
    evs = [make_event("flow_blocked", device_id=device, ts=NOW.timestamp() - i, sport=1, dport=1194,
                      transport="udp", klass="vpn_tunnel", protocol="openvpn", confidence="confirmed",
                      action="block") for i in range(n)]
    doc: dict[str, Any] = {"schema": 1, "batch_id": batch_id_for(device, evs), "device_id": device,
                           "events": evs}
    doc.update(envelope)
    return doc


def test_topic_device_accepts_only_the_events_topic() -> None:
    assert topic_device("tunnelwatch/v1/box-0001/events") == "box-0001"
    for bad in ("tunnelwatch/v1/box-0001/registry", "tunnelwatch/v2/box/events", "tunnelwatch/v1//events",
                "tunnelwatch/v1/a/b/events", "tunnelwatch/v1/" + "x" * 200 + "/events", "x"):
        with pytest.raises(BatchError):
            topic_device(bad)


def test_cert_identities_reads_cn_and_dns_uri_sans_only() -> None:
    cert = {"subject": ((("countryName", "FR"),), (("commonName", "box-1"),)),
            "subjectAltName": (("DNS", "box-1.cpe.example"), ("URI", "urn:dev:box-1"),
                               ("IP Address", "192.0.2.1"), ("email", "a@b"))}
    assert cert_identities(cert) == {"box-1", "box-1.cpe.example", "urn:dev:box-1"}
    assert cert_identities(None) == set() and cert_identities({}) == set()
    assert cert_identities({"subject": [["junk"]], "subjectAltName": ["x"]}) == set()


def test_decode_takes_gzip_or_plain_json_and_refuses_the_rest() -> None:
    doc = _batch("box-1")
    assert decode(encode_batch(doc["batch_id"], "box-1", doc["events"])) == doc
    assert decode(json.dumps(doc).encode()) == doc
    for bad in (b"\x1f\x8b\x08garbage", gzip.compress(b"{")[:-6], b"not json", b"[" * 100_000, b"\xff\xfe"):
        with pytest.raises(BatchError):
            decode(bad)


def test_decode_refuses_a_gzip_bomb() -> None:
    bomb = gzip.compress(b"0" * (MAX_INFLATED + 1024), compresslevel=9)
    with pytest.raises(BatchError, match="inflates past"):
        decode(bomb)


def test_a_good_batch_becomes_one_row_per_event() -> None:
    b = check_batch(_batch("box-1"), "box-1", max_age=AGE, now=NOW)
    assert (b.device_id, len(b.rows), b.refused) == ("box-1", 3, 0)
    r = b.rows[0]
    assert (r.kind, r.klass, r.protocol, r.action) == ("flow_blocked", "vpn_tunnel", "openvpn", "block")
    assert r.bulk is None
    assert r.ts == NOW and json.loads(r.doc)["id"] == r.event_id


@pytest.mark.parametrize("change", [{"device_id": "box-2"}, {"device_id": None}, {"schema": 2},
                                    {"batch_id": "x"}, {"events": {}}])
def test_an_envelope_that_is_not_the_topic_s_device_or_is_malformed_is_refused_whole(
        change: dict[str, Any]) -> None:
    with pytest.raises(BatchError):
        check_batch(_batch("box-1", **change), "box-1", max_age=AGE, now=NOW)


def test_one_event_of_another_device_refuses_the_whole_batch() -> None:
    doc = _batch("box-1")
    doc["events"][1]["device_id"] = "box-2"
    with pytest.raises(BatchError, match="box-2"):
        check_batch(doc, "box-1", max_age=AGE, now=NOW)


def test_malformed_or_out_of_window_events_are_refused_one_by_one() -> None:
    doc = _batch("box-1", n=6)
    evs = doc["events"]
    evs[0]["id"] = "not-hex"
    evs[1]["ts"] = "yesterday"
    evs[2]["ts"] = (NOW + timedelta(days=2)).isoformat()
    evs[3]["ts"] = (NOW - timedelta(days=91)).isoformat()
    evs[4] = "not an object"
    b = check_batch(doc, "box-1", max_age=AGE, now=NOW)
    assert (len(b.rows), b.refused) == (1, 5), b.reasons


def test_values_jsonb_cannot_hold_refuse_their_event_only() -> None:
    doc = _batch("box-1", n=4)
    doc["events"][0]["reason"] = "a\x00b"
    doc["events"][1]["evidence"] = [{"k\x00": 1}]
    doc["events"][2]["packets"] = float("inf")  # json.loads gives inf for 1e400
    b = check_batch(doc, "box-1", max_age=AGE, now=NOW)
    assert (len(b.rows), b.refused) == (1, 3), b.reasons


def test_the_same_event_twice_in_a_batch_is_one_row() -> None:
    doc = _batch("box-1", n=2)
    doc["events"].append(dict(doc["events"][0]))
    assert len(check_batch(doc, "box-1", max_age=AGE, now=NOW).rows) == 2


def test_parse_ts() -> None:
    assert parse_ts("2023-11-14T22:15:23.456789Z") == datetime(2023, 11, 14, 22, 15, 23, 456789, tzinfo=UTC)
    assert parse_ts("2023-11-15T00:15:23+02:00") == datetime(2023, 11, 14, 22, 15, 23, tzinfo=UTC)
    for bad in ("2023-11-14T22:15:23", 5, None, "x" * 100, "\uff12\uff10\uff12\uff13-11-14T22:15:23Z"):
        with pytest.raises(ValueError):
            parse_ts(bad)
