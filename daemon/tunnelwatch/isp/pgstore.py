"""The ingest's PostgreSQL store: one transaction per batch, each event stored once, day partitions
created on demand (and a few days ahead), old partitions dropped for retention.

Errors are sorted for the caller: DatabaseDown (connection lost, server restarting: keep the message
un-acknowledged and retry) versus BatchRefused (the database rejects this batch's data: retrying would
loop, so refuse and acknowledge it).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerrors

from tunnelwatch.isp import pgschema
from tunnelwatch.isp.envelope import BatchError, Row, StoreDown, check_batch
from tunnelwatch.report.wire import WIRE_SCHEMA

log = logging.getLogger(__name__)
T = TypeVar("T")


class DatabaseDown(StoreDown):
    """The database could not be reached or lost the connection: retry later."""


class BatchRefused(BatchError):
    """The database refused this batch's data (e.g. a value jsonb cannot hold)."""


@dataclass(frozen=True)
class Stored:
    """What one batch came to: events newly stored, and events already there (duplicates)."""

    stored: int
    duplicates: int


class PgStore:
    """A connection to the ingest database, reopened on demand; one instance per thread."""

    def __init__(self, conninfo: str, *, days_ahead: int = 2, connect_timeout: float = 5.0) -> None:
        self.conninfo = conninfo
        self.days_ahead = days_ahead
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._days: set[date] = set()
        self._schema_ok = False
        self._lock = threading.Lock()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self.close()
        try:
            conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=int(self.connect_timeout))
        except psycopg.Error as exc:
            raise DatabaseDown(_short(exc)) from None
        self._conn = conn
        self._days.clear()  # another instance may have dropped partitions meanwhile
        return conn

    def close(self) -> None:
        """Close the connection (a later call reopens it)."""
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def ensure_schema(self) -> None:
        """Create the tables if missing and today's partitions plus days_ahead more."""
        with self._lock:
            self._run(self._ensure_schema)

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute(pgschema.DDL_LOCK)
            conn.execute(pgschema.DDL)
            conn.execute("INSERT INTO tw_meta VALUES ('schema_version', %s) ON CONFLICT (key) DO NOTHING",
                         (str(pgschema.SCHEMA_VERSION),))
            row = conn.execute("SELECT value FROM tw_meta WHERE key = 'schema_version'").fetchone()
        if row is None or row[0] != str(pgschema.SCHEMA_VERSION):
            raise RuntimeError(f"database schema version {row[0] if row else None}, "
                               f"this ingest writes {pgschema.SCHEMA_VERSION}")
        self._schema_ok = True
        today = datetime.now(UTC).date()
        self._ensure_days(conn, {today + timedelta(days=i) for i in range(self.days_ahead + 1)})

    def _ensure_days(self, conn: psycopg.Connection[Any], days: set[date]) -> None:
        missing = sorted(days - self._days)
        if not missing:
            return
        with conn.transaction():
            conn.execute(pgschema.DDL_LOCK)
            for day in missing:
                conn.execute(pgschema.create_partition(day).encode())
        self._days.update(missing)

    def store(self, rows: Sequence[Row], device_id: str) -> Stored:
        """Store one batch's rows in one transaction; return counts once it is committed."""
        return self.store_many([(device_id, rows)])[0]

    def store_many(self, batches: Sequence[tuple[str, Sequence[Row]]]) -> list[Stored]:
        """Store several batches (device id, rows) in one transaction: one COMMIT for all of them,
        since a transaction costs far more than a row; counts per batch once it is committed."""
        with self._lock:
            return self._run(lambda conn: self._store_many(conn, batches))

    def _store_many(self, conn: psycopg.Connection[Any],
                    batches: Sequence[tuple[str, Sequence[Row]]]) -> list[Stored]:
        if not self._schema_ok:  # the database was down when the ingest started
            self._ensure_schema(conn)
        self._ensure_days(conn, {pgschema.utc_day(r.ts) for _, rows in batches for r in rows})
        out: list[Stored] = []
        devices: dict[str, tuple[datetime, datetime | None, int]] = {}
        try:
            with conn.transaction():
                for device_id, rows in batches:
                    stored = 0
                    for part in pgschema.chunks(rows):
                        cur = conn.execute(pgschema.insert_sql(len(part)).encode(),
                                           pgschema.insert_params(part))
                        stored += len(cur.fetchall())
                    out.append(Stored(stored, len(rows) - stored))
                    if rows:
                        devices[device_id] = _summary(devices.get(device_id), rows, stored)
                # one upsert per device, in a fixed order: two instances never wait on each other in a circle
                for device_id in sorted(devices):
                    last, beat, stored = devices[device_id]
                    conn.execute(pgschema.DEVICE_UPSERT.encode(), (device_id, last, beat, stored))
        except pgerrors.CheckViolation:
            # "no partition of relation found": another instance's retention dropped one we had cached
            self._days.clear()
            raise DatabaseDown("partition missing; recreating") from None
        return out

    def prune(self, keep_days: int) -> list[date]:
        """Drop the partitions of days older than keep_days (UTC); return the days dropped."""
        with self._lock:
            return self._run(lambda conn: self._prune(conn, keep_days))

    def _prune(self, conn: psycopg.Connection[Any], keep_days: int) -> list[date]:
        keep_from = datetime.now(UTC).date() - timedelta(days=keep_days)
        with conn.transaction():
            conn.execute(pgschema.DDL_LOCK)
            names = [r[0] for r in conn.execute(pgschema.LIST_PARTITIONS).fetchall()]
            days = pgschema.expired(names, keep_from)
            for day in days:
                conn.execute(pgschema.drop_partition(day).encode())
        self._days.difference_update(days)
        return days

    def _run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        conn = self._connection()
        try:
            return work(conn)
        except (pgerrors.DataError, pgerrors.IntegrityError) as exc:
            raise BatchRefused(_short(exc)) from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.close()
            raise DatabaseDown(_short(exc)) from None
        except psycopg.Error as exc:
            # anything else (a server shutting down mid-statement, an admin's lock timeout): retry
            self.close()
            raise DatabaseDown(_short(exc)) from None


def _summary(prev: tuple[datetime, datetime | None, int] | None, rows: Sequence[Row],
             stored: int) -> tuple[datetime, datetime | None, int]:
    """A device's (newest event time, newest heartbeat time, events stored), merged with prev."""
    last = max(r.ts for r in rows)
    beats = [r.ts for r in rows if r.kind == "heartbeat"]
    beat = max(beats) if beats else None
    if prev is None:
        return last, beat, stored
    pbeat = prev[1]
    return max(prev[0], last), max(pbeat, beat) if pbeat and beat else pbeat or beat, prev[2] + stored


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


class PgBatches:
    """The reference collector's store interface over PgStore: the HTTPS uplink into the same database
    and the same checks as the MQTT path (a batch naming another device raises BatchError)."""

    def __init__(self, conninfo: str, *, keep_days: int = 90) -> None:
        self.pg = PgStore(conninfo)
        self.max_age = timedelta(days=keep_days)

    def add(self, device: str, batch_id: str, events: list[dict[str, Any]]) -> tuple[int, int, bool]:
        """Store a batch once: (events stored, events not stored, batch already fully stored); raises
        BatchError, DatabaseDown or BatchRefused."""
        doc = {"schema": WIRE_SCHEMA, "batch_id": batch_id, "device_id": device, "events": events}
        batch = check_batch(doc, device, max_age=self.max_age)
        if batch.refused:
            log.warning("batch %s of %s: %d event(s) refused, first: %s", batch_id, device, batch.refused,
                        batch.reasons[0])
        res = self.pg.store(batch.rows, device)
        return res.stored, res.duplicates + batch.refused, bool(batch.rows) and res.stored == 0
