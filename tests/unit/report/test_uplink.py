"""Uplink backoff and the Uplink loop with an in-memory spool against the reference collector over
real TLS on 127.0.0.1. The wire contract (Retry-After, batch ids, body, reply mapping): test_wire.py."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.pki import Pki, make_pki
from tunnelwatch.isp.collector import Collector
from tunnelwatch.report.uplink import Uplink, backoff_delay

DEVICE = "cpe-unit-1"


class MemSpool:
    """The Spool API over a dict, thread-safe; ack deletes."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self._lock = threading.Lock()
        self._rows = dict(enumerate(events, 1))

    def peek(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        with self._lock:
            return [(r, self._rows[r]) for r in sorted(self._rows)[:limit]]

    def ack(self, rowids: list[int]) -> None:
        with self._lock:
            for r in rowids:
                self._rows.pop(r, None)

    def backlog(self) -> int:
        with self._lock:
            return len(self._rows)


def _events(n: int) -> list[dict[str, Any]]:
    return [{"id": uuid.uuid4().hex, "kind": "heartbeat", "stream": "s1", "seq": i} for i in range(n)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def collector(pki: Pki, tmp_path: Path) -> Iterator[Collector]:
    c = Collector(str(tmp_path / "store"), cert=str(pki.server_cert), key=str(pki.server_key),
                  client_ca=str(pki.ca), token="tok-1", bind_device=False)  # one cert, many device ids
    c.start()
    try:
        yield c
    finally:
        c.stop()


def _uplink(spool: MemSpool, c: Collector, pki: Pki, **kw: Any) -> Uplink:
    args: dict[str, Any] = {
        "url": c.url, "ca_file": str(pki.ca), "client_cert": str(pki.client_cert),
        "client_key": str(pki.client_key), "token": "tok-1", "device_id": DEVICE, "batch_size": 10,
        "max_rate": 1000.0, "timeout": 5.0, "backoff_max": 0.05, "backoff_base": 0.01, "idle_poll": 0.02}
    args.update(kw)
    return Uplink(spool, **args)


# -- pure pieces ---------------------------------------------------------------------------------------


def test_backoff_is_full_jitter_and_capped() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(10.0, 0.5 * 2**attempt)
        xs = [backoff_delay(attempt, base=0.5, cap=10.0, rng=rng) for _ in range(400)]
        assert all(0.0 <= x <= ceiling for x in xs)
        # full jitter: spread over the whole window, not clustered at the ceiling
        assert min(xs) < ceiling * 0.1 and max(xs) > ceiling * 0.9
    assert backoff_delay(10_000, base=1.0, cap=3.0, rng=rng) <= 3.0


def test_url_must_be_https() -> None:
    for url in ("http://127.0.0.1:1", "ftp://x", "https://"):
        with pytest.raises(ValueError):
            Uplink(MemSpool([]), url=url, ca_file=None, client_cert=None, client_key=None, token=None,
                   device_id=DEVICE)


# -- the loop against the reference collector -----------------------------------------------------------
def test_delivers_everything_in_order_and_acks(collector: Collector, pki: Pki) -> None:
    evs = _events(95)
    spool = MemSpool(evs)
    up = _uplink(spool, collector, pki)
    up.start()
    try:
        assert up.wait_for(lambda s: s["sent_events"] == 95, 10), up.stats()
    finally:
        up.stop()
    assert spool.backlog() == 0
    assert collector.store.events(DEVICE) == evs
    st = up.stats()
    assert st["sent_batches"] == 10 and st["failures"] == 0 and st["backlog"] == 0


def test_wrong_token_keeps_events(collector: Collector, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    spool = MemSpool(_events(5))
    up = _uplink(spool, collector, pki, token="wrong")
    caplog.set_level(logging.WARNING, "tunnelwatch.report.uplink")
    up.start()
    try:
        assert up.wait_for(lambda s: s["failures"] >= 3, 10)
    finally:
        up.stop()
    assert spool.backlog() == 5 and collector.store.count(DEVICE) == 0
    assert "HTTP 401" in str(up.stats()["last_error"])
    assert sum("check the uplink url and credentials" in r.getMessage() for r in caplog.records) == 1


def test_rejected_event_is_isolated_and_dropped(collector: Collector, pki: Pki,
                                                caplog: pytest.LogCaptureFixture) -> None:
    evs = _events(4)
    collector.faults.fail = [400, 400, 400]  # batch of 4, then of 2, then the first event alone
    spool = MemSpool(evs)
    up = _uplink(spool, collector, pki)
    up.start()
    try:
        assert up.wait_for(lambda s: s["backlog"] == 0 and s["sent_events"] == 3, 10), up.stats()
    finally:
        up.stop()
    assert up.stats()["rejected_events"] == 1
    assert collector.store.events(DEVICE) == evs[1:]
    assert any(f"rejected event {evs[0]['id']}" in r.getMessage() for r in caplog.records)


def test_too_large_halves_the_batch(collector: Collector, pki: Pki) -> None:
    evs = _events(10)
    collector.faults.fail = [413]
    up = _uplink(MemSpool(evs), collector, pki)
    up.start()
    try:
        assert up.wait_for(lambda s: s["sent_events"] == 10, 10), up.stats()
    finally:
        up.stop()
    assert collector.store.events(DEVICE) == evs
    assert up.stats()["sent_batches"] == 2  # 5 + 5 after the 413


def test_rate_is_bounded(collector: Collector, pki: Pki) -> None:
    up = _uplink(MemSpool(_events(6)), collector, pki, batch_size=1, max_rate=20.0)
    t0 = time.monotonic()
    up.start()
    try:
        assert up.wait_for(lambda s: s["sent_events"] == 6, 10)
    finally:
        up.stop()
    assert time.monotonic() - t0 >= 5 / 20.0  # six requests need at least five intervals of 50 ms


def test_stop_interrupts_a_hung_collector(collector: Collector, pki: Pki) -> None:
    collector.faults.hang = 1
    up = _uplink(MemSpool(_events(3)), collector, pki, timeout=30.0)
    up.start()
    assert collector.store.wait_for(DEVICE, 3, 10)
    up.stop(timeout=5.0)
    # the hung request (30 s timeout) was cut: the sender thread is gone, not still waiting on the socket
    assert up._thread is not None and not up._thread.is_alive()


def test_collector_rejecting_everything_cannot_empty_the_spool(collector: Collector, pki: Pki,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    collector.faults.fail = [400] * 1000
    spool = MemSpool(_events(4))
    up = _uplink(spool, collector, pki)
    up.start()
    try:
        # 4 -> 2 -> 1 (dropped) -> the next lone event is refused too: kept, retried at backoff_max
        assert up.wait_for(lambda s: s["failures"] >= 8, 10), up.stats()
    finally:
        up.stop()
    assert up.stats()["rejected_events"] == 1 and spool.backlog() == 3
    assert sum("too (HTTP 400" in r.getMessage() for r in caplog.records) == 1


def test_backlog_follows_the_spool_during_an_outage_and_the_error_clears(
        collector: Collector, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    collector.faults.fail = [503] * 10_000  # an outage until the test ends it
    spool = MemSpool(_events(1))
    up = _uplink(spool, collector, pki)
    caplog.set_level(logging.INFO, "tunnelwatch.report.uplink")
    up.start()
    try:
        assert up.wait_for(lambda s: s["failures"] >= 1, 10), up.stats()
        with spool._lock:  # events spooled while the first batch waits for the collector
            for i, ev in enumerate(_events(11), 100):
                spool._rows[i] = ev
        # the status showed the one event of the waiting batch before: it must count all twelve
        assert up.wait_for(lambda s: s["backlog"] == 12, 10), up.stats()
        assert "503" in str(up.stats()["last_error"])
        collector.faults.fail = []  # the collector is back
        assert up.wait_for(lambda s: s["backlog"] == 0 and s["sent_events"] == 12, 10), up.stats()
    finally:
        up.stop()
    assert up.stats()["last_error"] is None  # cleared once the collector took a batch again
    messages = [r.getMessage() for r in caplog.records]
    assert any("503" in m for m in messages) and any("delivery resumed" in m for m in messages)
