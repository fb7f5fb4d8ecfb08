"""Harness: events.make_event with hostile fields, and validate_event on what it returns.

The input is a JSON object {"kind": ..., "device_id": ..., "ts": ..., field: value...} when it parses,
else hostile values (edge numbers, control characters, bytes, nesting) built from its bytes. make_event
may only raise EventError; an event it returns must hold no control character, validate, serialise to JSON
and survive a round trip.
"""

from __future__ import annotations

import json
from typing import Any

from fuzz._fuzzlib import Bytes, fuzz_main, instrumented, json_or_values, value

with instrumented():
    from tunnelwatch.report.events import FIELD_SPECS, KINDS, EventError, make_event, validate_event

FIELDS = sorted(FIELD_SPECS)


def _fields(data: bytes) -> dict[str, Any]:
    doc = json_or_values(data)
    if isinstance(doc, dict) and all(isinstance(k, str) for k in doc):
        return doc
    b = Bytes(data)
    out: dict[str, Any] = {"kind": b.pick(KINDS), "device_id": value(b) if b.byte() & 1 else "box1"}
    for _ in range(b.byte() % 12):
        out[b.pick(FIELDS) if b.byte() < 240 else b.text(12)] = value(b)
    return out


def strings(v: Any) -> list[str]:
    """Every string in a value, keys of maps included."""
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict):
        return [s for k, x in v.items() for s in strings(k) + strings(x)]
    if isinstance(v, list | tuple):
        return [s for x in v for s in strings(x)]
    return []


def one_input(data: bytes) -> None:
    """Build one event from hostile fields."""
    fields = _fields(data)
    kind = fields.pop("kind", "heartbeat")
    device_id = fields.pop("device_id", "box1")
    ts = fields.pop("ts", None)
    fields = {k: v for k, v in fields.items() if k.isidentifier()}
    if not isinstance(kind, str):
        kind = str(kind)
    try:
        ev = make_event(kind, device_id=device_id, ts=ts, **fields)
    except EventError:
        return
    validate_event(ev)
    for s in strings(ev):
        # events carry metadata only: no control character may ride along (a newline forges log lines)
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in s), s
    text = json.dumps(ev, allow_nan=False)
    validate_event(json.loads(text))


if __name__ == "__main__":
    fuzz_main(one_input)
