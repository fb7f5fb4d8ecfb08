"""One uplink batch as the ISP side receives it (MQTT message or HTTPS body): decode, check the device
identity chain, and turn each event into a database row.

The identity chain: the broker lets a box publish only on `tunnelwatch/v1/<its certificate CN>/events`
(ACL), so the topic names an authenticated device; the envelope's device id must equal the topic's and
each event's device id must equal the envelope's, else the whole batch is refused. Hostile bytes never
raise anything but BatchError.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from tunnelwatch.report.wire import WIRE_SCHEMA

TOPIC_PREFIX: Final = "tunnelwatch/v1/"
EVENTS_SUFFIX: Final = "/events"
SHARED_EVENTS: Final = "$share/ingest/tunnelwatch/v1/+/events"
MAX_PAYLOAD: Final = 16 * 1024 * 1024       # compressed bytes accepted in one message
MAX_INFLATED: Final = 128 * 1024 * 1024     # guards against a gzip bomb
DEVICE_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BATCH_RE: Final = re.compile(r"^[0-9a-fA-F-]{8,64}$")
_EVENT_ID_RE: Final = re.compile(r"^[0-9a-f]{32}$")
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
#: an event dated further ahead than this is refused (a box clock far off would create odd partitions)
MAX_FUTURE: Final = timedelta(days=1)


class BatchError(ValueError):
    """A batch refused as a whole (bad encoding, shape or identity)."""


class StoreDown(Exception):
    """The store cannot take a batch now (its database is down): the sender must retry later."""


@dataclass(frozen=True)
class Row:
    """One event as stored: the columns the analyst queries plus the whole event as JSON."""

    device_id: str
    event_id: str
    ts: datetime
    kind: str
    klass: str | None
    protocol: str | None
    action: str | None
    bulk: bool | None
    batch_id: str
    doc: str


@dataclass(frozen=True)
class Batch:
    """A checked batch: its rows, and how many of its events were refused one by one (and why)."""

    device_id: str
    batch_id: str
    rows: list[Row]
    refused: int
    reasons: list[str]


def topic_device(topic: str) -> str:
    """The device id in `tunnelwatch/v1/<device>/events`; BatchError for any other topic."""
    if not topic.startswith(TOPIC_PREFIX) or not topic.endswith(EVENTS_SUFFIX):
        raise BatchError(f"not an events topic: {topic[:80]!r}")
    device = topic[len(TOPIC_PREFIX):-len(EVENTS_SUFFIX)]
    if not DEVICE_RE.match(device):
        raise BatchError(f"bad device id in topic: {device[:80]!r}")
    return device


def cert_identities(peercert: dict[str, Any] | None) -> set[str]:
    """The names a verified client certificate vouches for: subject CN and DNS/URI subjectAltNames."""
    if not peercert:
        return set()
    names: set[str] = set()
    for rdn in peercert.get("subject", ()):
        for attr in rdn:
            if isinstance(attr, tuple) and len(attr) == 2 and attr[0] == "commonName":
                names.add(str(attr[1]))
    for alt in peercert.get("subjectAltName", ()):
        if isinstance(alt, tuple) and len(alt) == 2 and alt[0] in ("DNS", "URI"):
            names.add(str(alt[1]))
    return names


def decode(payload: bytes) -> Any:
    """The JSON document in a payload, gzip'd (the uplink's encoding) or plain; BatchError if neither."""
    if len(payload) > MAX_PAYLOAD:
        raise BatchError(f"payload over {MAX_PAYLOAD} bytes")
    return inflate_json(payload, payload[:2] == b"\x1f\x8b", "payload")


def inflate_json(raw: bytes, gzipped: bool, what: str) -> Any:
    """JSON from bytes, gunzipped first when `gzipped`, bounded against a gzip bomb; BatchError naming
    `what` (the MQTT payload, the HTTP body) when it is not."""
    if gzipped:
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            raw = d.decompress(raw, MAX_INFLATED)
        except zlib.error as exc:
            raise BatchError(f"bad gzip {what}: {exc}") from None
        if d.unconsumed_tail:
            raise BatchError(f"{what} inflates past {MAX_INFLATED} bytes")
        if not d.eof:
            raise BatchError(f"truncated gzip {what}")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise BatchError(f"{what} is not JSON: {str(exc)[:80]}") from None


def parse_ts(value: object) -> datetime:
    """An event's RFC 3339 time as an aware UTC datetime; ValueError when it is not one."""
    if not isinstance(value, str) or len(value) > 40 or not value.isascii():
        raise ValueError("ts is not an RFC 3339 string")
    when = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    if when.tzinfo is None:
        raise ValueError("ts has no time zone")
    return when.astimezone(UTC)


def _has_nul(v: object) -> bool:
    if isinstance(v, str):
        return "\x00" in v
    if isinstance(v, dict):
        return any(_has_nul(k) or _has_nul(x) for k, x in v.items())
    if isinstance(v, list):
        return any(_has_nul(x) for x in v)
    return False


def _opt(ev: dict[str, Any], key: str) -> str | None:
    v = ev.get(key)
    return v if isinstance(v, str) and _NAME_RE.match(v) else None


def _row(ev: Any, device: str, batch_id: str, oldest: datetime, newest: datetime) -> Row:
    if not isinstance(ev, dict):
        raise ValueError("event is not an object")
    eid = ev.get("id")
    if not isinstance(eid, str) or not _EVENT_ID_RE.match(eid):
        raise ValueError("bad event id")
    if ev.get("device_id") != device:
        raise BatchError(f"event {eid} names device {str(ev.get('device_id'))[:80]!r}, batch is {device!r}")
    kind = _opt(ev, "kind")
    if kind is None:
        raise ValueError(f"event {eid}: bad kind")
    ts = parse_ts(ev.get("ts"))
    if not oldest <= ts <= newest:
        raise ValueError(f"event {eid}: ts {ts.isoformat()} outside the accepted window")
    bulk = ev.get("bulk")
    if _has_nul(ev):  # jsonb refuses U+0000 (escaped or not) and would refuse the whole transaction
        raise ValueError(f"event {eid}: NUL character")
    doc = json.dumps(ev, separators=(",", ":"), ensure_ascii=False, allow_nan=False)  # jsonb has no NaN
    return Row(device, eid, ts, kind, _opt(ev, "klass"), _opt(ev, "protocol"), _opt(ev, "action"),
               bulk if isinstance(bulk, bool) else None, batch_id, doc)


def check_batch(doc: Any, device: str, *, max_age: timedelta, now: datetime | None = None) -> Batch:
    """Check a decoded batch against the authenticated device id; refuse it whole on any identity
    mismatch, refuse single malformed or out-of-window events (counted) and keep the rest."""
    if not isinstance(doc, dict) or doc.get("schema") != WIRE_SCHEMA:
        raise BatchError("batch must be an object with schema 1")
    claimed, batch_id, events = doc.get("device_id"), doc.get("batch_id"), doc.get("events")
    if claimed != device:
        raise BatchError(f"batch names device {str(claimed)[:80]!r}, its identity is {device!r}")
    if not isinstance(batch_id, str) or not _BATCH_RE.match(batch_id):
        raise BatchError("bad batch_id")
    if not isinstance(events, list):
        raise BatchError("events must be a list")
    t = now or datetime.now(UTC)
    oldest, newest = t - max_age, t + MAX_FUTURE
    rows: list[Row] = []
    reasons: list[str] = []
    seen: set[str] = set()
    for ev in events:
        try:
            row = _row(ev, device, batch_id, oldest, newest)
        except BatchError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:
            reasons.append(str(exc)[:200])
            continue
        if row.event_id not in seen:  # the same event twice in one batch: one row (ON CONFLICT needs it)
            seen.add(row.event_id)
            rows.append(row)
    return Batch(device, batch_id, rows, len(reasons), reasons)
