"""The spool: FIFO with peek/ack, durable across reopen, bounded (oldest dropped and counted), retention,
several connections and threads at once, and hostile files at open (moved aside, never a crash loop)."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from tunnelwatch.report import spool as spool_mod
from tunnelwatch.report.events import make_event
from tunnelwatch.report.spool import MAX_EVENT_BYTES, Spool, SpoolError


def ev(i: int) -> dict[str, object]:
    return make_event("heartbeat", device_id="box", uptime_s=float(i), flows_by_klass={"benign": i},
                      packets_queued=i, queue_drops=0)


def uptimes(sp: Spool, limit: int = 10_000) -> list[float]:
    return [float(e["uptime_s"]) for _, e in sp.peek(limit)]  # type: ignore[arg-type]


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "spool.db")


def test_fifo_peek_does_not_remove_and_ack_does(path: str) -> None:
    with Spool(path) as sp:
        for i in range(5):
            sp.put(ev(i))
        sp.put_many([ev(5), ev(6)])
        assert sp.backlog() == 7
        first = sp.peek(3)
        assert [e["uptime_s"] for _, e in first] == [0.0, 1.0, 2.0]
        assert sp.peek(3) == first
        sp.ack([rowid for rowid, _ in first])
        assert uptimes(sp) == [3.0, 4.0, 5.0, 6.0]
        assert sp.backlog() == 4
        sp.ack([10_000, -5])  # unknown ids: ignored
        assert sp.backlog() == 4
        assert sp.peek(0) == []


def test_events_survive_reopen_and_counters_stay_exact(path: str) -> None:
    with Spool(path) as sp:
        sp.put_many([ev(i) for i in range(100)])
        sp.ack([r for r, _ in sp.peek(40)])
        size = sp.stored_bytes()
    with Spool(path) as sp:
        assert sp.recovered is None
        assert uptimes(sp) == [float(i) for i in range(40, 100)]
        assert sp.backlog() == 60 and sp.stored_bytes() == size > 0
        sp.ack([r for r, _ in sp.peek(1000)])
        assert sp.backlog() == 0 and sp.stored_bytes() == 0


def test_rowids_are_never_reused_so_a_late_ack_cannot_delete_newer_events(path: str) -> None:
    with Spool(path) as sp:
        sp.put(ev(1))
        [(old, _)] = sp.peek(1)
        sp.ack([old])
    with Spool(path) as sp:
        sp.put(ev(2))
        [(new, _)] = sp.peek(1)
        assert new > old
        sp.ack([old])  # a duplicate ack from a retried batch
        assert uptimes(sp) == [2.0]


def test_full_spool_drops_oldest_and_counts_them(path: str, caplog: pytest.LogCaptureFixture) -> None:
    with Spool(path, max_events=10) as sp:
        in_flight = [r for r, _ in sp.peek(10)]
        for i in range(25):
            sp.put(ev(i))
        assert sp.backlog() == 10 and sp.dropped() == 15
        assert uptimes(sp) == [float(i) for i in range(15, 25)]
        in_flight = [r for r, _ in sp.peek(3)]
        sp.put_many([ev(100), ev(101), ev(102)])  # drops exactly the rows the uplink is sending
        sp.ack(in_flight)  # their late ack must not touch the survivors
        assert sp.backlog() == 10 and sp.dropped() == 18
        assert uptimes(sp)[-3:] == [100.0, 101.0, 102.0]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "full" in r.getMessage()]
    assert 1 <= len(warnings) <= 3  # logged, not once per event
    with Spool(path, max_events=10) as sp:
        assert sp.dropped() == 18  # the count is on disk, not in the process


def test_max_bytes_bounds_stored_json(path: str) -> None:
    limit = MAX_EVENT_BYTES
    with Spool(path, max_bytes=limit) as sp:
        for i in range(0, 2000, 100):
            sp.put_many([ev(j) for j in range(i, i + 100)])
        assert 0 < sp.stored_bytes() <= limit
        assert sp.dropped() > 0 and sp.backlog() + sp.dropped() == 2000
        assert uptimes(sp)[-1] == 1999.0


def test_retention_expires_old_events_and_counts_them_apart(path: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000_000.0]
    monkeypatch.setattr(spool_mod.time, "time", lambda: now[0])
    with Spool(path, retention_days=1) as sp:
        sp.put_many([ev(i) for i in range(5)])
        now[0] += 3600
        sp.put(ev(5))
        now[0] += 86400 - 1800  # the first five are now older than a day, the sixth is not
        assert sp.backlog() == 1 and sp.expired() == 5 and sp.dropped() == 0
        assert uptimes(sp) == [5.0]


def test_put_many_is_all_or_nothing(path: str) -> None:
    with Spool(path) as sp:
        sp.put(ev(0))
        with pytest.raises(TypeError):
            sp.put_many([ev(1), {"kind": "x", "bad": {1, 2}}])
        with pytest.raises(ValueError):
            sp.put_many([ev(2), {"kind": "x", "nan": float("nan")}])
        with pytest.raises(ValueError, match="larger"):
            sp.put_many([ev(3), {"kind": "x", "big": "a" * MAX_EVENT_BYTES}])
        assert uptimes(sp) == [0.0] and sp.backlog() == 1


def test_several_connections_and_threads_interleave_without_loss(path: str) -> None:
    shared = Spool(path)
    other = Spool(path)
    errors: list[BaseException] = []

    def writer(sp: Spool, base: int) -> None:
        try:
            for i in range(50):
                sp.put(ev(base + i))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(sp, n * 1000))
               for n, sp in enumerate([shared, shared, other, other])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    got = uptimes(shared)
    assert sorted(got) == sorted(float(n * 1000 + i) for n in range(4) for i in range(50))
    for n in range(4):  # each writer's events in its own order
        mine = [u for u in got if n * 1000 <= u < n * 1000 + 1000]
        assert mine == sorted(mine)
    assert other.backlog() == 200
    shared.close()
    other.close()


def test_undecodable_row_is_dropped_not_stuck(path: str) -> None:
    with Spool(path) as sp:
        sp.put(ev(0))
        db = sqlite3.connect(path)
        db.execute("INSERT INTO events (ts, body) VALUES (0, '{not json')")
        db.execute("UPDATE meta SET backlog = backlog + 1, bytes = bytes + 9")
        db.commit()
        db.close()
        sp.put(ev(2))
        assert uptimes(sp) == [0.0, 2.0]
        assert sp.dropped() == 1 and sp.backlog() == 2


def _check_recovered(path: str, original: bytes, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="tunnelwatch.report.spool"), Spool(path) as sp:
        assert sp.recovered is not None and ".corrupt-" in sp.recovered
        assert Path(sp.recovered).read_bytes() == original  # kept for a post-mortem, not destroyed
        sp.put(ev(7))
        assert uptimes(sp) == [7.0]
    assert any("moved aside" in r.getMessage() for r in caplog.records)
    with Spool(path) as sp:  # the fresh file is fine: no loop of recoveries
        assert sp.recovered is None and sp.backlog() == 1


def test_random_bytes_file_is_moved_aside(path: str, caplog: pytest.LogCaptureFixture) -> None:
    junk = os.urandom(8192)
    Path(path).write_bytes(junk)
    _check_recovered(path, junk, caplog)


def _filled(path: str) -> bytes:
    with Spool(path) as sp:
        sp.put_many([ev(i) for i in range(2000)])
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return Path(path).read_bytes()


def test_truncated_spool_is_moved_aside(path: str, caplog: pytest.LogCaptureFixture) -> None:
    data = _filled(path)[: 40 * 1024]
    Path(path).write_bytes(data)
    _check_recovered(path, data, caplog)


def test_spool_with_garbage_pages_is_moved_aside(path: str, caplog: pytest.LogCaptureFixture) -> None:
    data = bytearray(_filled(path))
    page = 4096
    assert len(data) > 8 * page
    data[3 * page: 6 * page] = os.urandom(3 * page)  # b-tree pages, not the header
    Path(path).write_bytes(bytes(data))
    _check_recovered(path, bytes(data), caplog)


def test_foreign_sqlite_database_is_moved_aside_not_modified(path: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE customers (name TEXT)")
    db.execute("INSERT INTO customers VALUES ('not ours')")
    db.commit()
    db.close()
    original = Path(path).read_bytes()
    _check_recovered(path, original, caplog)


def test_directory_instead_of_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "spool.db").mkdir()
    with pytest.raises(SpoolError, match="directory"):
        Spool(str(tmp_path / "spool.db"))


def test_missing_state_directory_is_a_clear_error_and_nothing_is_moved(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="cannot"):
        Spool(str(tmp_path / "no-such-dir" / "spool.db"))


@pytest.mark.parametrize("kwargs", [{"max_events": 0}, {"max_bytes": 100}, {"retention_days": 0},
                                    {"synchronous": "OFF"}])
def test_bad_limits_are_refused(path: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Spool(path, **kwargs)  # type: ignore[arg-type]


def test_file_is_wal_with_full_sync(path: str) -> None:
    with Spool(path) as sp:
        sp.put(ev(0))
        assert sp._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert sp._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_drained_spool_gives_its_disk_space_back(path: str) -> None:
    def on_disk() -> int:
        db = sqlite3.connect(path)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        return os.path.getsize(path)

    with Spool(path) as sp:
        sp.put_many([ev(i) for i in range(20_000)])
        full = on_disk()
        while rows := sp.peek(500):
            sp.ack([r for r, _ in rows])
        assert sp.backlog() == 0
        assert on_disk() < full / 10
