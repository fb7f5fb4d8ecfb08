"""The ingest's SQL building: partition names and bounds, retention selection, the multi-row insert and
its parameters (the statements themselves run against a real PostgreSQL in integration/test_ingest.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from tunnelwatch.isp import pgschema
from tunnelwatch.isp.envelope import Row


def _row(i: int) -> Row:
    return Row("box-1", f"{i:032x}", datetime(2026, 1, 2, 23, 59, tzinfo=UTC), "flow_blocked", "vpn_tunnel",
               "openvpn", "block", None, "b-1", "{}")


def test_partition_names_round_trip_and_others_are_ignored() -> None:
    d = date(2026, 1, 2)
    assert pgschema.partition_name(d) == "events_p20260102"
    assert pgschema.partition_day("events_p20260102") == d
    for other in ("events", "events_p2026010", "events_p20261399", "devices", "events_p20260102x"):
        assert pgschema.partition_day(other) is None


def test_a_partition_covers_one_utc_day() -> None:
    sql = pgschema.create_partition(date(2026, 12, 31))
    assert sql == ("CREATE TABLE IF NOT EXISTS events_p20261231 PARTITION OF events FOR VALUES FROM "
                   "('2026-12-31T00:00:00+00:00') TO ('2027-01-01T00:00:00+00:00')")
    late = datetime.fromisoformat("2026-12-31T23:30:00-02:00")  # 01:30 UTC the next day
    assert pgschema.utc_day(late) == date(2027, 1, 1)


def test_expired_keeps_the_retention_window() -> None:
    names = ["events_p20260101", "events_p20260105", "events_p20251231", "devices", "events_p20260104"]
    assert pgschema.expired(names, date(2026, 1, 4)) == [date(2025, 12, 31), date(2026, 1, 1)]
    assert pgschema.drop_partition(date(2026, 1, 1)) == "DROP TABLE IF EXISTS events_p20260101"


def test_insert_sql_has_one_placeholder_group_per_row_and_skips_conflicts() -> None:
    sql = pgschema.insert_sql(2)
    assert sql.count("%s") == 2 * len(pgschema.EVENT_COLUMNS)
    assert sql.count("::jsonb") == 2
    assert sql.endswith("ON CONFLICT (device_id, event_id, ts) DO NOTHING RETURNING event_id")
    for bad in (0, pgschema.ROWS_PER_INSERT + 1):
        with pytest.raises(ValueError):
            pgschema.insert_sql(bad)


def test_insert_params_follow_the_column_order() -> None:
    params = pgschema.insert_params([_row(1), _row(2)])
    assert len(params) == 2 * len(pgschema.EVENT_COLUMNS)
    first = dict(zip(pgschema.EVENT_COLUMNS, params[:len(pgschema.EVENT_COLUMNS)], strict=True))
    assert first["event_id"] == f"{1:032x}" and first["kind"] == "flow_blocked" and first["doc"] == "{}"


def test_chunks_stay_under_the_bind_parameter_limit() -> None:
    rows = [_row(i) for i in range(2501)]
    parts = pgschema.chunks(rows)
    assert [len(p) for p in parts] == [1000, 1000, 501]
    assert max(len(p) for p in parts) * len(pgschema.EVENT_COLUMNS) < 65535
