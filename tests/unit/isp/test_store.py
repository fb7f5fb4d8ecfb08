"""The reference collector's store: each batch and each event stored once, across restarts too, and a
torn last line from a crash skipped when the store is rebuilt from disk."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from tunnelwatch.isp.store import Store, event_key


def _ev(i: int, **kw: object) -> dict[str, object]:
    return {"id": f"ev-{i:04d}", "kind": "heartbeat", "seq": i, **kw}


def test_a_batch_stored_twice_stores_nothing_the_second_time(tmp_path: Path) -> None:
    st = Store(str(tmp_path))
    evs = [_ev(1), _ev(2)]
    assert st.add("cpe-1", "b-1", evs) == (2, 0, False)
    assert st.add("cpe-1", "b-1", evs) == (0, 2, True)
    assert st.events("cpe-1") == evs and st.count("cpe-1") == 2
    assert len((tmp_path / "batches.log").read_text().splitlines()) == 1


def test_events_are_deduplicated_by_id_across_batches_and_a_restart(tmp_path: Path) -> None:
    st = Store(str(tmp_path))
    assert st.add("cpe-1", "b-1", [_ev(1), _ev(2)]) == (2, 0, False)
    again = Store(str(tmp_path))  # the collector restarted
    assert again.count("cpe-1") == 2
    assert again.add("cpe-1", "b-1", [_ev(1), _ev(2)]) == (0, 2, True)  # batch ids survive too
    # the same events re-sent in a new batch (a box that lost its ack): only the new one is stored
    assert again.add("cpe-1", "b-2", [_ev(2, seq=99), _ev(3)]) == (1, 1, False)
    assert [e["id"] for e in again.events("cpe-1")] == ["ev-0001", "ev-0002", "ev-0003"]


def test_devices_are_kept_apart(tmp_path: Path) -> None:
    st = Store(str(tmp_path))
    st.add("cpe-1", "b-1", [_ev(1)])
    assert st.add("cpe-2", "b-2", [_ev(1)]) == (1, 0, False)  # the same id from another box is its own
    assert st.count("cpe-1") == st.count("cpe-2") == 1
    assert st.events("nobody") == [] and st.count("nobody") == 0


def test_a_torn_last_line_is_skipped_on_restart(tmp_path: Path) -> None:
    st = Store(str(tmp_path))
    st.add("cpe-1", "b-1", [_ev(1)])
    with (tmp_path / "cpe-1.jsonl").open("a") as f:
        f.write('{"id": "ev-0002", "kin')  # a crash mid-write, never acknowledged
    again = Store(str(tmp_path))
    assert again.count("cpe-1") == 1
    assert again.add("cpe-1", "b-2", [_ev(2)]) == (1, 0, False)  # the re-sent event is stored


def test_event_key_prefers_the_id_and_hashes_canonical_json_otherwise() -> None:
    assert event_key({"id": "abc", "x": 1}) == "abc"
    assert event_key({"event_id": "def"}) == "def"
    a, b = {"kind": "x", "seq": 1}, {"seq": 1, "kind": "x"}
    assert event_key(a) == event_key(b) and event_key(a).startswith("sha256:")
    assert event_key({"id": "", "seq": 1}) != event_key({"id": "", "seq": 2})


def test_wait_for_returns_when_events_arrive_and_times_out_otherwise(tmp_path: Path) -> None:
    st = Store(str(tmp_path))
    assert not st.wait_for("cpe-1", 1, 0.01)
    adder = threading.Thread(target=st.add, args=("cpe-1", "b-1", [_ev(1), _ev(2)]))
    adder.start()
    try:
        assert st.wait_for("cpe-1", 2, 10)
    finally:
        adder.join()
    assert json.loads((tmp_path / "cpe-1.jsonl").read_text().splitlines()[1])["id"] == "ev-0002"
