"""The durable event spool: one SQLite file (WAL) in the state directory between the daemon and the uplink.

An event counts as reported only once `put` returned: the transaction is committed with
synchronous=FULL, i.e. the WAL is fsync'd before the commit returns, so a committed event survives
kill -9 *and* power loss (as far as the storage honours fsync). NORMAL would survive kill -9 but may lose
the last commits on power loss, which the reporting contract forbids; batching (`put_many`) is how a
busy box pays one fsync for many events.

Bounded: past `max_events` (or `max_bytes` of stored JSON) the oldest events go first and one meta row
counts them; `retention_days` deletes older events unsent (privacy) and counts them apart. Row ids are
AUTOINCREMENT, never reused, so a late `ack` of rows already dropped can never delete newer events.

Several processes may each open their own `Spool` on the same file (SQLite locks; writes are serialised
by BEGIN IMMEDIATE with a busy timeout; workers may pass check=False to skip the integrity scan the main
process already did); one `Spool` may be shared by threads (a lock serialises them).
A corrupt or foreign file at open is moved aside as PATH.corrupt-TIMESTAMP and a fresh spool started:
`recovered` says where it went, so the daemon can report it; it never turns into a crash loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Final, Literal

log = logging.getLogger(__name__)

FORMAT: Final = 1  # PRAGMA user_version of a spool file
MAX_EVENT_BYTES: Final = 64 * 1024
_BUSY_MS: Final = 10_000
_RETENTION_EVERY: Final = 60.0  # seconds between retention sweeps per connection
_CHUNK: Final = 500  # ids per DELETE ... IN (...), below every SQLite's variable limit
_VACUUM_PAGES: Final = 256  # free pages worth returning to the filesystem

_SCHEMA: Final = (
    "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, body TEXT NOT NULL)",
    # The one "dropped record": counters updated in place, never a row per loss.
    "CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), backlog INTEGER NOT NULL,"
    " bytes INTEGER NOT NULL, dropped INTEGER NOT NULL, expired INTEGER NOT NULL,"
    " first_drop REAL, last_drop REAL)",
    "INSERT INTO meta VALUES (1, 0, 0, 0, 0, NULL, NULL)",
    f"PRAGMA user_version = {FORMAT}",
)


class SpoolError(RuntimeError):
    """The spool cannot be used (unwritable directory, disk full, corruption found while running)."""


class Spool:
    """A bounded, durable FIFO of events (JSON objects) on disk; see the module docstring."""

    def __init__(self, path: str, *, max_events: int = 1_000_000, max_bytes: int | None = None,
                 retention_days: float | None = None,
                 synchronous: Literal["FULL", "NORMAL"] = "FULL", check: bool = True) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        if max_bytes is not None and max_bytes < MAX_EVENT_BYTES:
            raise ValueError(f"max_bytes must be at least {MAX_EVENT_BYTES}")
        if retention_days is not None and not retention_days > 0:
            raise ValueError("retention_days must be positive")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        self.path = path
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.retention_s = None if retention_days is None else retention_days * 86400.0
        self.synchronous = synchronous
        self.check = check
        #: where a corrupt file was moved at open (None when the file was fine)
        self.recovered: str | None = None
        self._lock = threading.Lock()
        self._next_sweep = 0.0
        self._drops_logged = 0
        self._db = self._open()
        with self._lock:
            self._sweep()

    # -- opening and recovery ---------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        # Several workers may start at once: the lock file makes check-and-recover atomic between them,
        # so one process never moves aside a fresh spool another has just created.
        try:
            lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise SpoolError(f"spool {self.path}: cannot create lock file: {e.strerror}") from e
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                return self._connect_checked()
            except sqlite3.OperationalError as e:
                # locked, unreadable, read-only, I/O error: the file may be fine, so never move it
                raise SpoolError(f"spool {self.path}: cannot open: {e}") from e
            except sqlite3.DatabaseError as e:  # not a database, malformed, or not our format
                self.recovered = self._move_aside(str(e))
            try:
                return self._connect_checked()
            except sqlite3.Error as e:
                raise SpoolError(f"spool {self.path}: cannot start a fresh spool: {e}") from e
        finally:
            os.close(lock_fd)

    def _connect_checked(self) -> sqlite3.Connection:
        if os.path.isdir(self.path):
            raise SpoolError(f"spool {self.path} is a directory")
        db = sqlite3.connect(self.path, timeout=_BUSY_MS / 1000, isolation_level=None,
                             check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
            # quick_check reads every page once: it finds torn or foreign files here, not mid-run.
            # Workers opening a spool the main process has just checked may skip it (check=False).
            bad = [r[0] for r in db.execute("PRAGMA quick_check(5)")] if self.check else ["ok"]
            if bad != ["ok"]:
                raise sqlite3.DatabaseError("quick_check: " + "; ".join(map(str, bad)))
            # Read-only checks first: a foreign file is moved aside byte for byte as it was.
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            fresh = version == 0 and not tables
            if not fresh and (version != FORMAT or not {"events", "meta"} <= tables):
                raise sqlite3.DatabaseError(f"not a spool of format {FORMAT} (user_version {version}, "
                                            f"tables {sorted(tables)[:5]})")
            if fresh:
                # Only settable before the first table: lets a drained spool give its pages back.
                db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                raise SpoolError(f"spool {self.path}: WAL mode refused (filesystem without shared memory?)")
            db.execute(f"PRAGMA synchronous = {self.synchronous}")
            # The WAL is truncated back to this size after checkpoints, so a drained spool is small again.
            db.execute("PRAGMA journal_size_limit = 4194304")
            if fresh:
                with _transaction(db):
                    for statement in _SCHEMA:
                        db.execute(statement)
            if db.execute("SELECT count(*) FROM meta WHERE id = 1").fetchone()[0] != 1:
                raise sqlite3.DatabaseError("meta row missing")
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, why: str) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = f"{self.path}.corrupt-{stamp}"
        n = 1
        while os.path.exists(dest):
            n += 1
            dest = f"{self.path}.corrupt-{stamp}-{n}"
        try:
            os.replace(self.path, dest)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, dest + suffix)
        except OSError as e:
            raise SpoolError(f"spool {self.path} is unusable ({why}) and cannot be moved aside: {e}") from e
        log.error("spool %s is unusable (%s): moved aside to %s, starting a fresh spool",
                  self.path, why, dest)
        return dest

    # -- the queue --------------------------------------------------------------------------------

    def put(self, event: dict[str, object]) -> None:
        """Append one event; durable when it returns (drops the oldest and counts them when full)."""
        self.put_many([event])

    def put_many(self, events: Sequence[dict[str, object]]) -> None:
        """Append events in one transaction (one fsync): all or none are stored."""
        if not events:
            return
        rows = []
        size = 0
        now = time.time()
        for ev in events:
            body = json.dumps(ev, separators=(",", ":"), allow_nan=False)  # ASCII: length(body) = bytes
            if len(body) > MAX_EVENT_BYTES:
                raise ValueError(f"event of {len(body)} bytes is larger than {MAX_EVENT_BYTES}")
            rows.append((now, body))
            size += len(body)
        with self._lock, self._write():
            self._db.executemany("INSERT INTO events (ts, body) VALUES (?, ?)", rows)
            self._db.execute("UPDATE meta SET backlog = backlog + ?, bytes = bytes + ? WHERE id = 1",
                             (len(rows), size))
            self._enforce_bounds()
            self._sweep(in_transaction=True)

    def peek(self, limit: int) -> list[tuple[int, dict[str, object]]]:
        """Up to `limit` oldest events as (rowid, event), without removing them."""
        with self._lock, self._errors():
            rows = self._db.execute("SELECT id, body FROM events ORDER BY id LIMIT ?",
                                    (max(0, limit),)).fetchall()
        out: list[tuple[int, dict[str, object]]] = []
        for rowid, body in rows:
            try:
                ev = json.loads(body)
            except ValueError:
                ev = None
            if not isinstance(ev, dict):
                # Only a damaged file can hold this: give it up (counted) rather than block the queue forever.
                log.error("spool %s: row %d is not a JSON event, dropping it", self.path, rowid)
                self._drop_rows([rowid])
                continue
            out.append((rowid, ev))
        return out

    def ack(self, rowids: Sequence[int]) -> None:
        """Delete delivered events (after the collector's 2xx); unknown or already dropped ids are ignored."""
        if not rowids:
            return
        with self._lock:
            with self._write():
                self._delete_ids(rowids)
                empty = self._db.execute("SELECT backlog FROM meta WHERE id = 1").fetchone()[0] == 0
            # After an outage the file grew to hold the backlog; once drained, hand the space back
            # (cheap: every page is free, nothing to move) so a small box's disk is not held forever.
            if empty:
                with self._errors():
                    if self._db.execute("PRAGMA freelist_count").fetchone()[0] > _VACUUM_PAGES:
                        # executescript steps the pragma to the end; execute() would free one page
                        self._db.executescript("PRAGMA incremental_vacuum;")

    def backlog(self) -> int:
        """Events waiting to be delivered."""
        return self._meta("backlog")

    def dropped(self) -> int:
        """Events dropped, oldest first, because the spool was full (since the file was created)."""
        return self._meta("dropped")

    def expired(self) -> int:
        """Events deleted unsent by the retention limit (since the file was created)."""
        return self._meta("expired")

    def stored_bytes(self) -> int:
        """Bytes of event JSON held (what `max_bytes` bounds; the file itself is larger)."""
        return self._meta("bytes")

    def close(self) -> None:
        """Close this connection (the data stays on disk)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------

    def _meta(self, column: str) -> int:
        with self._lock, self._errors():
            self._sweep()
            return int(self._db.execute(f"SELECT {column} FROM meta WHERE id = 1").fetchone()[0])

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise SpoolError(f"spool {self.path}: {e}") from e

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        with self._errors(), _transaction(self._db):
            yield

    def _delete_ids(self, rowids: Sequence[int]) -> int:
        """Delete these rows and keep the meta counters exact; return how many existed."""
        gone = 0
        size = 0
        for i in range(0, len(rowids), _CHUNK):
            chunk = [int(r) for r in rowids[i:i + _CHUNK]]
            marks = ",".join("?" * len(chunk))
            for (n,) in self._db.execute(f"DELETE FROM events WHERE id IN ({marks}) RETURNING length(body)",
                                         chunk).fetchall():
                gone += 1
                size += n
        if gone:
            self._db.execute("UPDATE meta SET backlog = backlog - ?, bytes = bytes - ? WHERE id = 1",
                             (gone, size))
        return gone

    def _drop_rows(self, rowids: Sequence[int], column: str = "dropped") -> None:
        with self._lock, self._write():
            self._count_drop(self._delete_ids(rowids), column)

    def _count_drop(self, n: int, column: str) -> None:
        if n:
            now = time.time()
            self._db.execute(f"UPDATE meta SET {column} = {column} + ?, "
                             "first_drop = coalesce(first_drop, ?), last_drop = ? WHERE id = 1",
                             (n, now, now))

    def _enforce_bounds(self) -> None:
        backlog, size = self._db.execute("SELECT backlog, bytes FROM meta WHERE id = 1").fetchone()
        excess = backlog - self.max_events
        if self.max_bytes is not None and size > self.max_bytes:
            over = size - self.max_bytes
            n = 0
            last = 0
            while over > 0:
                rows = self._db.execute("SELECT id, length(body) FROM events WHERE id > ? ORDER BY id "
                                        "LIMIT ?", (last, _CHUNK)).fetchall()
                if not rows:
                    break
                for rowid, length in rows:
                    last = rowid
                    n += 1
                    over -= length
                    if over <= 0:
                        break
            excess = max(excess, n)
        if excess > 0:
            ids = [r[0] for r in self._db.execute("SELECT id FROM events ORDER BY id LIMIT ?", (excess,))]
            n = self._delete_ids(ids)
            self._count_drop(n, "dropped")
            # Log at 1, 10, 100 ... drops by this connection: visible, but no flood while the uplink is down.
            before = self._drops_logged
            self._drops_logged += n
            if len(str(self._drops_logged)) > len(str(before)) or before == 0:
                log.warning("spool %s full: dropped the oldest events (%d so far by this process)",
                            self.path, self._drops_logged)

    def _sweep(self, in_transaction: bool = False) -> None:
        """Delete events past the retention limit (at most once a minute per connection)."""
        now = time.time()
        if self.retention_s is None or now < self._next_sweep:
            return
        self._next_sweep = now + _RETENTION_EVERY
        if in_transaction:
            self._expire(now - self.retention_s)
        else:
            with self._write():
                self._expire(now - self.retention_s)

    def _expire(self, cutoff: float) -> None:
        while True:
            # Rows are in insertion order, so expired rows are a prefix: look at the head only.
            ids = [r[0] for r in self._db.execute("SELECT id, ts FROM events ORDER BY id LIMIT ?", (_CHUNK,))
                   if r[1] < cutoff]
            if not ids:
                return
            self._count_drop(self._delete_ids(ids), "expired")
            if len(ids) < _CHUNK:
                return


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front: no deadlock between readers upgrading to writers.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
