"""The ingest's PostgreSQL schema (docs/ingest.md) and the SQL built from it: the day partitions of the
events table, the idempotent multi-row insert and the per-device summary upsert.

Pure text and values, no connection: pgstore.py runs it. Identifiers here are built only from dates and
constants, never from received data (which always travels as bound parameters).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Final

from tunnelwatch.isp.envelope import Row

#: bumped when the DDL changes; stored in tw_meta so an old ingest does not write a newer schema
SCHEMA_VERSION: Final = 1
EVENT_COLUMNS: Final = ("device_id", "event_id", "ts", "kind", "klass", "protocol", "action", "bulk",
                        "batch_id", "doc")
#: rows per INSERT statement: 10 parameters a row stays far below PostgreSQL's 65535 bind parameters
ROWS_PER_INSERT: Final = 1000
_PARTITION_RE: Final = re.compile(r"^events_p(\d{8})$")

DDL: Final = """
CREATE TABLE IF NOT EXISTS tw_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    device_id   text        NOT NULL,
    event_id    text        NOT NULL,
    ts          timestamptz NOT NULL,
    kind        text        NOT NULL,
    klass       text,
    protocol    text,
    action      text,
    bulk        boolean,
    batch_id    text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    doc         jsonb       NOT NULL,
    PRIMARY KEY (device_id, event_id, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX IF NOT EXISTS events_kind_ts ON events (kind, ts);
CREATE TABLE IF NOT EXISTS devices (
    device_id         text        PRIMARY KEY,
    first_seen        timestamptz NOT NULL,
    last_event_ts     timestamptz NOT NULL,
    last_heartbeat_ts timestamptz,
    last_received_at  timestamptz NOT NULL,
    events            bigint      NOT NULL DEFAULT 0
);
"""

#: one advisory lock serialises DDL between ingest instances (CREATE ... IF NOT EXISTS races otherwise)
DDL_LOCK: Final = "SELECT pg_advisory_xact_lock(7406113151)"

DEVICE_UPSERT: Final = """
INSERT INTO devices AS d (device_id, first_seen, last_event_ts, last_heartbeat_ts, last_received_at, events)
VALUES (%s, now(), %s, %s, now(), %s)
ON CONFLICT (device_id) DO UPDATE SET
    last_event_ts = greatest(d.last_event_ts, excluded.last_event_ts),
    last_heartbeat_ts = greatest(d.last_heartbeat_ts, excluded.last_heartbeat_ts),
    last_received_at = now(),
    events = d.events + excluded.events
"""

LIST_PARTITIONS: Final = """
SELECT c.relname FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
WHERE p.relname = 'events'
"""


def utc_day(ts: datetime) -> date:
    """The UTC calendar day of an aware datetime: the partition it belongs to."""
    return ts.astimezone(UTC).date()


def partition_name(day: date) -> str:
    """The partition table of one UTC day, e.g. events_p20231114."""
    return f"events_p{day:%Y%m%d}"


def partition_day(name: str) -> date | None:
    """The day of a partition table name; None for any other name."""
    m = _PARTITION_RE.match(name)
    if not m:
        return None
    try:
        return datetime.strptime(m.group(1), "%Y%m%d").date()
    except ValueError:
        return None


def create_partition(day: date) -> str:
    """DDL for the partition of one UTC day (idempotent)."""
    lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
    hi = lo + timedelta(days=1)
    return (f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF events "
            f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')")


def drop_partition(day: date) -> str:
    """DDL that removes one day's partition and its rows (retention)."""
    return f"DROP TABLE IF EXISTS {partition_name(day)}"


def expired(names: Iterable[str], keep_from: date) -> list[date]:
    """The days of partitions wholly before keep_from, oldest first."""
    days = [d for d in (partition_day(n) for n in names) if d is not None and d < keep_from]
    return sorted(days)


def insert_sql(n: int) -> str:
    """An INSERT of n event rows that skips rows already stored and returns one line per stored row."""
    if not 1 <= n <= ROWS_PER_INSERT:
        raise ValueError(f"rows per insert must be 1..{ROWS_PER_INSERT}, not {n}")
    one = "(" + ", ".join(["%s"] * (len(EVENT_COLUMNS) - 1)) + ", %s::jsonb)"
    return (f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES "
            + ", ".join([one] * n)
            + " ON CONFLICT (device_id, event_id, ts) DO NOTHING RETURNING event_id")


def insert_params(rows: Sequence[Row]) -> list[object]:
    """The flat bound parameters of insert_sql(len(rows)), in column order."""
    out: list[object] = []
    for r in rows:
        out += [r.device_id, r.event_id, r.ts, r.kind, r.klass, r.protocol, r.action, r.bulk, r.batch_id,
                r.doc]
    return out


def chunks(rows: Sequence[Row], size: int = ROWS_PER_INSERT) -> list[Sequence[Row]]:
    """rows cut into INSERT-sized pieces."""
    return [rows[i:i + size] for i in range(0, len(rows), size)]
