"""The uplink's wire contract shared by the box and the collector: Retry-After, batch ids, the body, and
what each HTTP reply means for the sender."""

from __future__ import annotations

import email.utils
import gzip
import json
import uuid
from typing import Any

import pytest

from tunnelwatch.report.wire import (
    RETRY_AFTER_CEILING,
    batch_id_for,
    encode_batch,
    judge_reply,
    parse_retry_after,
)

DEVICE = "cpe-unit-1"


def _events(n: int) -> list[dict[str, Any]]:
    return [{"id": uuid.uuid4().hex, "kind": "heartbeat", "stream": "s1", "seq": i} for i in range(n)]


def test_retry_after_seconds_date_and_garbage() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("99999999") == RETRY_AFTER_CEILING
    for bad in (None, "", "soon", "-5", "1.5e3", "Wed, 99 Foo 2024 25:00:00 GMT"):
        assert parse_retry_after(bad) is None, bad


def test_batch_id_depends_only_on_content() -> None:
    evs = _events(3)
    a = batch_id_for(DEVICE, evs)
    assert a == batch_id_for(DEVICE, [dict(reversed(list(e.items()))) for e in evs])  # key order irrelevant
    assert uuid.UUID(a)
    assert a != batch_id_for("cpe-other", evs)
    assert a != batch_id_for(DEVICE, evs[:2])
    assert a != batch_id_for(DEVICE, [*evs[:2], {**evs[2], "seq": 99}])


def test_body_is_gzip_json_with_envelope() -> None:
    evs = _events(2)
    doc = json.loads(gzip.decompress(encode_batch("b-1", DEVICE, evs)))
    assert doc == {"schema": 1, "batch_id": "b-1", "device_id": DEVICE, "events": evs}


@pytest.mark.parametrize(("status", "kind"), [
    (200, "ok"), (204, "ok"), (400, "reject"), (401, "permanent"), (403, "permanent"), (404, "permanent"),
    (408, "retry"), (413, "smaller"), (422, "reject"), (429, "retry"), (500, "retry"), (502, "retry"),
    (503, "retry")])
def test_reply_mapping(status: int, kind: str) -> None:
    assert judge_reply(status, "x", None, b"").kind == kind


def test_reply_retry_after_and_duplicate() -> None:
    assert judge_reply(429, "Too Many", "7", b"").retry_after == 7.0
    assert judge_reply(500, "err", "7", b"").retry_after is None  # only 429/503 carry a usable Retry-After
    assert judge_reply(200, "OK", None, b'{"status": "duplicate"}').duplicate
    assert not judge_reply(200, "OK", None, b'{"status": "stored"}').duplicate
