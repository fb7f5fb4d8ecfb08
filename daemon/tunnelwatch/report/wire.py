"""The uplink's wire contract (docs/uplink.md), shared by the box's uplink and the ISP-side collector:
paths and headers, the batch id and body, and what each HTTP reply means for the sender."""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import http.client
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

from tunnelwatch.text import digits

WIRE_SCHEMA: Final = 1
EVENTS_PATH: Final = "/v1/events"
BATCH_HEADER: Final = "X-Tunnelwatch-Batch-Id"
DEVICE_HEADER: Final = "X-Tunnelwatch-Device"
#: A Retry-After longer than this is treated as this: a broken header must not silence a box for days.
RETRY_AFTER_CEILING: Final = 3600.0
_BATCH_NS: Final = uuid.UUID("6f1d2c3a-8b4e-5a7f-9c0d-1e2f3a4b5c6d")
_MAX_REPLY: Final = 64 * 1024

Event = dict[str, Any]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None when absent or bad."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if digits(text):
        return min(float(text), RETRY_AFTER_CEILING)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):  # OverflowError: an absurd hour or year
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive result means the zone was missing
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), RETRY_AFTER_CEILING)


def batch_id_for(device_id: str, events: list[Event]) -> str:
    """A batch id that depends only on the batch's content, so a restarted sender reuses it."""
    h = hashlib.sha256(device_id.encode())
    for ev in events:
        h.update(b"\n")
        h.update(json.dumps(ev, sort_keys=True, separators=(",", ":")).encode())
    return str(uuid.uuid5(_BATCH_NS, h.hexdigest()))


def encode_batch(batch_id: str, device_id: str, events: list[Event]) -> bytes:
    """The gzip'd JSON body of one POST."""
    doc = {"schema": WIRE_SCHEMA, "batch_id": batch_id, "device_id": device_id, "events": events}
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    return gzip.compress(raw, compresslevel=6, mtime=0)


@dataclass(frozen=True)
class Outcome:
    """What one POST came to: 'ok', 'retry', 'permanent', 'reject' (bad event) or 'smaller' (too big)."""

    kind: str
    message: str
    retry_after: float | None = None
    duplicate: bool = False


def judge_reply(status: int, reason: str, retry_after: str | None, body: bytes) -> Outcome:
    """Map an HTTP reply to an Outcome (the retry semantics documented in docs/uplink.md)."""
    if 200 <= status < 300:
        dup = b'"duplicate"' in body[:_MAX_REPLY]
        return Outcome("ok", f"HTTP {status}", duplicate=dup)
    text = f"HTTP {status} {reason}".strip()
    if status in (429, 503):
        return Outcome("retry", text, retry_after=parse_retry_after(retry_after))
    if status == 413:
        return Outcome("smaller", text)
    if status in (400, 422):
        return Outcome("reject", text)
    if status == 408 or status >= 500:
        return Outcome("retry", text)
    return Outcome("permanent", text)  # 401/403/404/...: configuration, not data; keep the events


def read_reply(resp: http.client.HTTPResponse) -> tuple[Outcome, bool]:
    """Read a begun reply (at most 64 KiB of body): its Outcome, and whether the connection must be
    closed (the server will close it, or an unread rest of the body is still on it)."""
    body = resp.read(_MAX_REPLY)
    outcome = judge_reply(resp.status, resp.reason, resp.getheader("Retry-After"), body)
    return outcome, bool(resp.will_close or resp.length)
