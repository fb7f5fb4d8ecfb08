"""tunnelwatch-ingest against a real mosquitto (TLS, client certificates, per-device ACL) and a real
PostgreSQL 15 (private cluster on a unix socket): two instances store every event exactly once, also
after the same batches are published again, through kill -9 of one instance mid-stream and through the
database being down for 30 s; a batch for another device is refused at the broker, at the ingest and at
the HTTPS collector; the analyst queries of docs/ingest.md return the right rows; retention drops days.
Loopback only; every wait is a bounded poll."""

from __future__ import annotations

import http.client
import re
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support.ingest import Box, IngestProc, flows_batch, ingests
from support.mosquitto import Mosquitto, broker
from support.pki import leaf
from support.postgres import Postgres, postgres
from tunnelwatch.isp.collector import Collector
from tunnelwatch.isp.envelope import Row
from tunnelwatch.isp.pgstore import BatchRefused, PgStore
from tunnelwatch.report.events import make_event
from tunnelwatch.report.wire import BATCH_HEADER, DEVICE_HEADER, EVENTS_PATH, batch_id_for, encode_batch

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ingest.md"
NOT_AUTHORIZED = 0x87


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    with postgres(tmp_path_factory.mktemp("pg")) as p:
        yield p


@pytest.fixture(scope="module")
def mq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with broker(tmp_path_factory.mktemp("mq")) as b:
        yield b


def _q(pg: Postgres, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg.conninfo, autocommit=True) as c:
        return c.execute(sql.encode(), params).fetchall()


def _ids(pg: Postgres, devices: list[str]) -> list[str]:
    return [r[0] for r in _q(pg, "SELECT event_id FROM events WHERE device_id = ANY(%s)", devices)]


def _wait_rows(pg: Postgres, devices: list[str], n: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        with psycopg.connect(pg.conninfo, autocommit=True) as c:
            row = c.execute("SELECT count(*) FROM events WHERE device_id = ANY(%s)", (devices,)).fetchone()
        got = int(row[0]) if row else 0
        if got >= n:
            return got
        time.sleep(0.2)
    return got


def _assert_exactly_once(pg: Postgres, devices: list[str], sent: set[str]) -> None:
    ids = _ids(pg, devices)
    lost, dup = len(sent - set(ids)), len(ids) - len(set(ids))
    assert (lost, dup, len(ids)) == (0, 0, len(sent)), f"lost {lost}, duplicated {dup}"


def _wait_sum(procs: list[IngestProc], key: str, n: int, timeout: float = 60) -> int:
    """Poll the instances' counters until `key` sums to n (the counters lag the commits a little)."""
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        got = sum(int(p.stats().get(key, 0)) for p in procs)
        if got >= n:
            break
        time.sleep(0.05)
    return got


def _publish(boxes: list[Box], per_box: int, events: int, t0: float) -> tuple[set[str], list[bytes]]:
    """per_box batches from every box, waiting for the broker's PUBACKs; (event ids, bodies)."""
    sent: set[str] = set()
    bodies: list[bytes] = []
    for box in boxes:
        mids = []
        for i in range(per_box):
            _, body, ids = flows_batch(box.device, events, t0 + i)
            sent.update(ids)
            bodies.append(body)
            mids.append(box.publish(body))
        assert box.wait_acked(mids) == [0] * per_box
    return sent, bodies


def test_two_instances_store_every_event_once_also_when_published_again(
        pg: Postgres, mq: Mosquitto, tmp_path: Path) -> None:
    devices = [f"two-{i:02d}" for i in range(8)]
    with ingests(tmp_path, mq, pg.conninfo) as procs:
        boxes = [Box(mq, d) for d in devices]
        try:
            sent, bodies = _publish(boxes, 25, 10, time.time() - 60)
            assert _wait_rows(pg, devices, len(sent), 60) == len(sent)
            _assert_exactly_once(pg, devices, sent)
            assert _wait_sum(procs, "batches_stored", len(bodies)) == len(bodies)
            shares = [p.stats()["batches_stored"] for p in procs]
            assert all(s > 0 for s in shares), shares
            # the very same batches again (a box that lost its PUBACKs): nothing new is stored
            for box, chunk in zip(boxes, [bodies[i:i + 25] for i in range(0, len(bodies), 25)], strict=True):
                assert box.wait_acked([box.publish(b) for b in chunk]) == [0] * 25
            assert _wait_sum(procs, "events_duplicate", len(sent)) == len(sent)
            assert _wait_sum(procs, "messages", 2 * len(bodies)) == 2 * len(bodies)
            _assert_exactly_once(pg, devices, sent)
        finally:
            for box in boxes:
                box.close()


def test_kill9_of_one_instance_mid_stream_loses_and_duplicates_nothing(
        pg: Postgres, mq: Mosquitto, tmp_path: Path) -> None:
    devices = [f"kill-{i:02d}" for i in range(4)]
    with ingests(tmp_path, mq, pg.conninfo) as procs:
        boxes = [Box(mq, d) for d in devices]
        sent: set[str] = set()
        done = threading.Event()

        def stream() -> None:
            # as fast as the broker takes them: the instances fall behind, so the victim dies holding
            # delivered, un-acknowledged batches
            t0 = time.time() - 60
            mids: dict[Box, list[int]] = {box: [] for box in boxes}
            for i in range(100):
                for box in boxes:
                    _, body, ids = flows_batch(box.device, 20, t0 + i)
                    sent.update(ids)
                    mids[box].append(box.publish(body))
            for box in boxes:
                box.wait_acked(mids[box], 60)
            done.set()

        th = threading.Thread(target=stream, daemon=True)
        try:
            th.start()
            victim = procs[0]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and victim.stats().get("batches_stored", 0) < 20:
                time.sleep(0.01)
            victim.kill()
            killed_at = sum(p.stats().get("events_stored", 0) for p in procs)
            time.sleep(0.5)  # down for a while: the broker keeps its session's messages
            victim.start()
            assert victim.wait("connected", 30), victim.log_text()[-2000:]
            th.join(120)
            assert done.is_set() and 0 < killed_at < len(sent), "the kill did not land mid-stream"
            assert _wait_rows(pg, devices, len(sent), 60) == len(sent)
            _assert_exactly_once(pg, devices, sent)
            print(f"kill -9: {killed_at} of {len(sent)} events stored when an instance was killed; "
                  f"all stored once after its restart")
        finally:
            for box in boxes:
                box.close()


def test_database_down_for_30_s_loses_and_duplicates_nothing(
        pg: Postgres, mq: Mosquitto, tmp_path: Path) -> None:
    devices = [f"dbdown-{i:02d}" for i in range(4)]
    with ingests(tmp_path, mq, pg.conninfo) as procs:
        boxes = [Box(mq, d) for d in devices]
        try:
            before, _ = _publish(boxes, 5, 10, time.time() - 120)
            assert _wait_rows(pg, devices, len(before), 60) == len(before)
            pg.stop()
            down_at = time.monotonic()
            try:
                during, _ = _publish(boxes, 10, 10, time.time() - 60)
                deadline = time.monotonic() + 25
                while time.monotonic() < deadline and not all(p.stats().get("db_errors") for p in procs):
                    time.sleep(0.1)
                assert all(p.stats()["db_errors"] > 0 and not p.stats()["db_up"] for p in procs)
                assert any("database unavailable" in p.log_text() for p in procs)
                # kill -9 of an instance holding un-acknowledged batches: the broker still has them
                procs[0].kill()
                procs[0].start()
                assert procs[0].wait("connected", 30), procs[0].log_text()[-2000:]
                while time.monotonic() - down_at < 30:
                    time.sleep(0.5)
            finally:
                pg.start()
            print(f"database down {time.monotonic() - down_at:.1f} s")
            sent = before | during
            assert _wait_rows(pg, devices, len(sent), 60) == len(sent)
            _assert_exactly_once(pg, devices, sent)
            print(f"db down: {len(during)} events published during the outage, {len(sent)} stored once")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not all(p.stats().get("db_up") for p in procs):
                time.sleep(0.1)
            assert all(p.stats()["db_up"] for p in procs)
        finally:
            for box in boxes:
                box.close()


def _subacks(mq: Mosquitto) -> int:
    return mq.log_text().count("Sending SUBACK to ingest-")


def test_broker_restart_keeps_what_the_ingest_had_not_acknowledged(
        pg: Postgres, mq: Mosquitto, tmp_path: Path) -> None:
    """Batches delivered but un-acknowledged (database down) when the broker restarts are stored once:
    the worker still holds them (their PUBACK, due on a dead connection, is not sent) and the broker
    delivers them again from the persistent session (stored as duplicates: nothing new). The instances
    subscribe again on reconnect (mosquitto 2.0.11 does not restore a $share subscription), so what is
    published after the restart is stored too."""
    devices = [f"brk-{i:02d}" for i in range(3)]
    with ingests(tmp_path, mq, pg.conninfo) as procs:
        boxes = [Box(mq, d) for d in devices]
        try:
            pg.stop()
            try:
                held, _ = _publish(boxes, 5, 10, time.time() - 30)
                assert _wait_sum(procs, "db_errors", 2, 25) >= 2
            finally:
                for box in boxes:
                    box.close()
                subacks = _subacks(mq)
                mq.stop()  # SIGTERM: mosquitto saves its sessions
                mq.start()
                pg.start()
            # both instances subscribed again before the boxes publish (else: 0x10, no subscribers)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _subacks(mq) < subacks + 2:
                time.sleep(0.05)
            assert _subacks(mq) >= subacks + 2, mq.log_text()[-2000:]
            boxes = [Box(mq, d) for d in devices]
            after, _ = _publish(boxes, 5, 10, time.time() - 20)
            sent = held | after
            assert _wait_rows(pg, devices, len(sent), 60) == len(sent)
            _assert_exactly_once(pg, devices, sent)
            dups = _wait_sum(procs, "events_duplicate", len(held), 10)
            assert dups >= len(held), "the broker's sessions did not deliver the held batches again"
            print(f"broker restart: {len(held)} events un-acknowledged across it, {dups} delivered again, "
                  f"{len(sent)} stored once")
        finally:
            for box in boxes:
                box.close()


def test_another_device_s_batch_is_refused_at_the_broker_and_at_the_ingest(
        pg: Postgres, mq: Mosquitto, tmp_path: Path) -> None:
    with ingests(tmp_path, mq, pg.conninfo) as procs:
        box = Box(mq, "own-a")
        try:
            # on its own topic, a batch naming another device: the ingest refuses it
            _, forged, _ = flows_batch("own-b", 5, time.time())
            assert box.wait_acked([box.publish(forged)]) == [0]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(p.stats().get("batches_refused") for p in procs):
                time.sleep(0.05)
            assert any("refused a batch on tunnelwatch/v1/own-a/events" in p.log_text() for p in procs)
            # on the other device's topic: the broker's ACL refuses the publish (PUBACK 0x87)
            _, body, _ = flows_batch("own-b", 5, time.time())
            assert box.wait_acked([box.publish(body, on="own-b")]) == [NOT_AUTHORIZED]
            # its own batch still goes through, and nothing was stored for own-b
            _, good, ids = flows_batch("own-a", 5, time.time())
            assert box.wait_acked([box.publish(good)]) == [0]
            assert _wait_rows(pg, ["own-a"], len(ids), 30) == len(ids)
            assert _ids(pg, ["own-b"]) == []
            assert _wait_sum(procs, "batches_refused", 1) == 1
        finally:
            box.close()


def _post(c: Collector, ca: Path, cert: Path, key: Path, device: str) -> int:
    events = [make_event("heartbeat", device_id=device, uptime_s=1.0, flows_by_klass={}, packets_queued=0,
                         queue_drops=0)]
    bid = batch_id_for(device, events)
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    conn = http.client.HTTPSConnection(*c.address, context=ctx, timeout=10)
    try:
        conn.request("POST", EVENTS_PATH, body=encode_batch(bid, device, events),
                     headers={"Content-Encoding": "gzip", BATCH_HEADER: bid, DEVICE_HEADER: device})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_the_collector_refuses_a_batch_whose_device_is_not_the_certificate_s(
        mq: Mosquitto, tmp_path: Path) -> None:
    pki = mq.pki
    cert_a, key_a = mq.device("coll-a")
    d = mq.dir / "clients"
    ext = "subjectAltName=DNS:coll-c\nextendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"
    cert_c, key_c = leaf(d, "ca", "cpe-serial-77", ext)  # CN is a serial, the device id is in the SAN
    c = Collector(str(tmp_path / "store"), cert=str(pki.server_cert), key=str(pki.server_key),
                  client_ca=str(pki.ca), bind_device=True)
    c.start()
    try:
        assert _post(c, pki.ca, cert_a, key_a, "coll-a") == 200
        assert _post(c, pki.ca, cert_a, key_a, "coll-b") == 403
        assert _post(c, pki.ca, cert_c, key_c, "coll-c") == 200
        assert _post(c, pki.ca, cert_c, key_c, "coll-a") == 403
        assert (c.store.count("coll-a"), c.store.count("coll-b"), c.store.count("coll-c")) == (1, 0, 1)
        assert c.counters()["identity_refused"] == 2
    finally:
        c.stop()


def _docs_queries() -> dict[str, str]:
    blocks = re.findall(r"```sql\n-- query: (\w+)\n(.*?)```", DOCS.read_text(), re.S)
    return {name: sql for name, sql in blocks}


def _hb(device: str, ts: float) -> dict[str, object]:
    return make_event("heartbeat", device_id=device, ts=ts, uptime_s=1.0, flows_by_klass={},
                      packets_queued=0, queue_drops=0)


def _flow(device: str, ts: float, kind: str, klass: str, protocol: str, **more: object) -> dict[str, object]:
    return make_event(kind, device_id=device, ts=ts, sport=1, dport=2, transport="udp", klass=klass,
                      protocol=protocol, confidence="confirmed",
                      action="block" if kind == "flow_blocked" else "report", **more)


def test_the_analyst_queries_of_the_docs_on_real_data(pg: Postgres, mq: Mosquitto, tmp_path: Path) -> None:
    queries = _docs_queries()
    assert set(queries) == {"tunnels_blocked_per_day", "bulk_voip_boxes", "silent_boxes"}
    now = time.time()
    day = 86400.0
    d2 = datetime.fromtimestamp(now - 2 * day, UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    d1 = d2 + timedelta(days=1)
    batches: dict[str, list[dict[str, object]]] = {
        # 2 days ago: 3 openvpn + 1 wireguard blocked; yesterday: 2 wireguard (two boxes)
        "an-1": [_flow("an-1", d2.timestamp() + i, "flow_blocked", "vpn_tunnel", "openvpn") for i in range(3)]
        + [_flow("an-1", d2.timestamp() + 9, "flow_blocked", "vpn_tunnel", "wireguard"),
           _flow("an-1", d1.timestamp(), "flow_blocked", "vpn_tunnel", "wireguard")]
        + [_hb("an-1", now - 600 + 60 * i) for i in range(10)],                # every 60 s, last 60 s ago
        "an-2": [_flow("an-2", d1.timestamp() + 5, "flow_blocked", "vpn_tunnel", "wireguard"),
                 _flow("an-2", now - 50, "flow_tagged", "voip", "sip", bulk=True),
                 _flow("an-2", now - 40, "flow_tagged", "voip", "sip", bulk=True),
                 _flow("an-2", now - 30, "flow_tagged", "voip", "sip", bulk=False)]
        + [_hb("an-2", now - 900 + 60 * i) for i in range(5)],                 # every 60 s, silent 660 s
        "an-3": [_flow("an-3", now - 20, "flow_tagged", "voip", "rtp", bulk=True),
                 _flow("an-3", now - 20, "flow_tagged", "proxy_obfuscated", "shadowsocks")]
        + [_hb("an-3", now - 400 - 300 * i) for i in range(3)],                # every 300 s, 400 s ago: fine
    }
    with ingests(tmp_path, mq, pg.conninfo):
        total = 0
        for device, evs in batches.items():
            box = Box(mq, device)
            try:
                bid = batch_id_for(device, evs)
                assert box.wait_acked([box.publish(encode_batch(bid, device, evs))]) == [0]
            finally:
                box.close()
            total += len(evs)
        assert _wait_rows(pg, list(batches), total, 30) == total
    mine = ("an-1", "an-2", "an-3")
    blocked = [r for r in _q(pg, queries["tunnels_blocked_per_day"]) if r[0] in (d2.date(), d1.date())]
    # other tests' boxes block tunnels today only, so the two past days are this test's alone
    assert blocked == [(d2.date(), "openvpn", 3, 1), (d2.date(), "wireguard", 1, 1),
                       (d1.date(), "wireguard", 2, 2)]
    bulk = [(r[0], r[1]) for r in _q(pg, queries["bulk_voip_boxes"]) if r[0] in mine]
    assert bulk == [("an-2", 2), ("an-3", 1)]
    silent = [(r[0], round(r[2].total_seconds())) for r in _q(pg, queries["silent_boxes"]) if r[0] in mine]
    assert silent == [("an-2", 60)]


def test_retention_drops_whole_old_days(pg: Postgres) -> None:
    store = PgStore(pg.conninfo)
    try:
        store.ensure_schema()
        old = datetime.now(UTC) - timedelta(days=100)
        rows = [Row("ret-1", f"{i:032x}", old, "heartbeat", None, None, None, None, "b-ret", "{}")
                for i in range(3)]
        assert store.store(rows, "ret-1").stored == 3
        assert store.store(rows, "ret-1").duplicates == 3
        dropped = store.prune(90)
        assert old.date() in dropped
        assert _ids(pg, ["ret-1"]) == []
        names = {r[0] for r in _q(pg, "SELECT relname FROM pg_class WHERE relname LIKE 'events_p%%'")}
        assert f"events_p{old:%Y%m%d}" not in names
        assert f"events_p{datetime.now(UTC):%Y%m%d}" in names
    finally:
        store.close()



def test_the_collector_stores_into_the_same_database_and_asks_for_a_retry_when_it_is_down(
        pg: Postgres, mq: Mosquitto, tmp_path: Path) -> None:
    pki = mq.pki
    cert, key = mq.device("https-a")
    c = Collector("", cert=str(pki.server_cert), key=str(pki.server_key), client_ca=str(pki.ca),
                  bind_device=True, database=pg.conninfo)
    c.start()
    try:
        assert _post(c, pki.ca, cert, key, "https-a") == 200
        assert _post(c, pki.ca, cert, key, "https-b") == 403
        assert len(_ids(pg, ["https-a"])) == 1 and _ids(pg, ["https-b"]) == []
        pg.stop()
        try:
            assert _post(c, pki.ca, cert, key, "https-a") == 503
        finally:
            pg.start()
        assert _post(c, pki.ca, cert, key, "https-a") == 200
        assert len(_ids(pg, ["https-a"])) == 2
    finally:
        c.stop()


def test_data_the_database_refuses_is_a_refused_batch_and_rolls_back_its_group(pg: Postgres) -> None:
    store = PgStore(pg.conninfo)
    try:
        now = datetime.now(UTC)
        good = [Row("refuse-1", f"{i:032x}", now, "heartbeat", None, None, None, None, "b-ok", "{}")
                for i in range(2)]
        bad = [Row("refuse-2", f"{9:032x}", now, "heartbeat", None, None, None, None, "b-bad", "{not json")]
        with pytest.raises(BatchRefused):
            store.store_many([("refuse-1", good), ("refuse-2", bad)])
        assert _ids(pg, ["refuse-1", "refuse-2"]) == []  # one transaction: nothing of the group stays
        assert [r.stored for r in store.store_many([("refuse-1", good)])] == [2]
    finally:
        store.close()
