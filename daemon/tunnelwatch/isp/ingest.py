"""`tunnelwatch-ingest`: the ISP-side MQTT consumer that stores the boxes' event batches in PostgreSQL.

Subscribes with the MQTT 5 shared subscription `$share/ingest/tunnelwatch/v1/+/events` (N instances split
the load), QoS 1, persistent session (clean_start false, a session expiry), manual acknowledgement: a
message is PUBACK'd only after its batch's transaction has committed, so a crash, a kill -9 or a database
outage leaves it with the broker, which delivers it again; the database's unique key makes that second
delivery store nothing. While the database is down the worker retries with backoff and acknowledges
nothing, and the broker stops sending once `--inflight` messages are unacknowledged (Receive Maximum).

A batch whose envelope or events name another device than the topic (which the broker's ACL binds to
the publisher's certificate) is refused: counted, logged and acknowledged so it does not come back.

    tunnelwatch-ingest --broker mqtts://host:8883 --ca ca.pem --cert ingest.pem --key ingest.key \
        --client-id ingest-1 --db "host=/run/postgresql dbname=tunnelwatch" [--stats-file FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from tunnelwatch.isp.envelope import SHARED_EVENTS, Batch, BatchError, check_batch, decode, topic_device
from tunnelwatch.isp.pgstore import BatchRefused, DatabaseDown, PgStore

log = logging.getLogger("tunnelwatch.ingest")


@dataclass
class Stats:
    """Counters, written to --stats-file as JSON after every batch and state change."""

    messages: int = 0
    batches_stored: int = 0
    events_stored: int = 0
    events_duplicate: int = 0
    events_refused: int = 0
    batches_refused: int = 0
    db_errors: int = 0
    db_up: bool = False
    connected: bool = False
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def doc(self) -> dict[str, Any]:
        """The counters as a JSON-able dict."""
        with self.lock:
            return {k: v for k, v in vars(self).items() if k != "lock"}


@dataclass(frozen=True)
class Options:
    """Everything the ingest is configured with."""

    host: str
    port: int
    tls: bool
    ca: str | None
    cert: str | None
    key: str | None
    client_id: str
    db: str
    inflight: int = 100
    group: int = 50
    session_expiry: int = 7 * 86400
    keep_days: int = 90
    retry_max: float = 5.0
    stats_file: str | None = None


class Ingest:
    """One ingest instance: the MQTT client (its network thread) plus one database worker thread."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.stats = Stats()
        self.store = PgStore(opts.db)
        self.stop_event = threading.Event()
        self._queue: queue.Queue[tuple[int, mqtt.MQTTMessage]] = queue.Queue()
        self._generation = 0  # bumped on every connect: a PUBACK is sent only on the connection it came on
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=opts.client_id,
                                   protocol=mqtt.MQTTv5, manual_ack=True)
        if opts.tls:
            self._client.tls_set(ca_certs=opts.ca, certfile=opts.cert, keyfile=opts.key)
        self._client.reconnect_delay_set(1, 30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._worker = threading.Thread(target=self._work, name="ingest-db", daemon=True)
        self._stats_write = threading.Lock()
        self._stats_written = 0.0
        self._stats_dirty = False

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        self._generation += 1
        log.info("connected to the broker (session present: %s); subscribing %s", flags.session_present,
                 SHARED_EVENTS)
        client.subscribe(SHARED_EVENTS, options=SubscribeOptions(qos=1))
        self._set(connected=True)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        log.warning("disconnected from the broker: %s", reason)
        self._set(connected=False)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._queue.put((self._generation, msg))

    def _set(self, **values: Any) -> None:
        with self.stats.lock:
            for k, v in values.items():
                setattr(self.stats, k, v)
        self._write_stats(force=True)  # a state change is written at once

    def _add(self, **deltas: int) -> None:
        with self.stats.lock:
            for k, v in deltas.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)
        self._write_stats()

    def _write_stats(self, force: bool = False) -> None:
        """Write the counters, at most every 50 ms unless forced (the idle worker writes what is left)."""
        if not self.opts.stats_file:
            return
        with self._stats_write:  # both threads write: one temp file at a time
            now = time.monotonic()
            if not force and now - self._stats_written < 0.05:
                self._stats_dirty = True
                return
            self._stats_written, self._stats_dirty = now, False
            path = Path(self.opts.stats_file)
            tmp = path.with_name(path.name + ".tmp")
            try:
                tmp.write_text(json.dumps(self.stats.doc()))
                os.replace(tmp, path)
            except OSError as exc:
                log.debug("cannot write %s: %s", path, exc)

    def _ack(self, generation: int, msg: mqtt.MQTTMessage) -> None:
        if generation != self._generation:
            # the connection it came on is gone: the broker delivers it again on this one (idempotent)
            return
        self._client.ack(msg.mid, msg.qos)

    def _work(self) -> None:
        next_probe = 0.0
        while not self.stop_event.is_set():
            try:
                group = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                if self._stats_dirty:
                    self._write_stats(force=True)
                if not self.stats.db_up and time.monotonic() > next_probe:
                    # idle and the database was down: find out whether it is back (for the stats)
                    next_probe = time.monotonic() + self.opts.retry_max
                    self._probe()
                continue
            while len(group) < self.opts.group:  # what else is already here goes into the same COMMIT
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for generation, msg in self._handle(group):
                self._ack(generation, msg)

    def _probe(self) -> None:
        try:
            self.store.ensure_schema()
        except DatabaseDown:
            return
        log.info("database available")
        self._set(db_up=True)

    def _check(self, msg: mqtt.MQTTMessage) -> Batch | None:
        """The message's checked batch, or None when it is refused (logged and counted)."""
        self._add(messages=1)
        try:
            device = topic_device(msg.topic)
            doc = decode(bytes(msg.payload))
            batch = check_batch(doc, device, max_age=timedelta(days=self.opts.keep_days))
        except BatchError as exc:
            log.warning("refused a batch on %.120s: %s", msg.topic, exc)
            self._add(batches_refused=1)
            return None
        if batch.refused:
            log.warning("batch %s of %s: %d event(s) refused, first: %s", batch.batch_id, device,
                        batch.refused, batch.reasons[0])
            self._add(events_refused=batch.refused)
        return batch

    def _handle(self, group: list[tuple[int, mqtt.MQTTMessage]]) -> list[tuple[int, mqtt.MQTTMessage]]:
        """Process messages until stored or refused; return those to acknowledge (not the ones left
        un-stored because the ingest is stopping)."""
        done: list[tuple[int, mqtt.MQTTMessage]] = []
        todo: list[tuple[int, mqtt.MQTTMessage, Batch]] = []
        for generation, msg in group:
            batch = self._check(msg)
            if batch is None:
                done.append((generation, msg))
            else:
                todo.append((generation, msg, batch))
        if todo and self._store([b for _, _, b in todo]):
            done += [(g, m) for g, m, _ in todo]
        return done

    def _store(self, batches: list[Batch]) -> bool:
        """Store batches in one transaction, retrying while the database is down; True once committed
        (or refused by the database), False when stopping first."""
        delay = 0.2
        while not self.stop_event.is_set():
            try:
                results = self.store.store_many([(b.device_id, b.rows) for b in batches])
            except DatabaseDown as exc:
                if self.stats.db_up or not self.stats.db_errors:
                    log.error("database unavailable, %d batch(es) kept un-acknowledged: %s", len(batches),
                              exc)
                self._add(db_errors=1)
                self._set(db_up=False, last_error=str(exc))
                self.stop_event.wait(delay)
                delay = min(delay * 2, self.opts.retry_max)
                continue
            except BatchRefused as exc:
                if len(batches) > 1:  # one of them holds what the database refuses: find it alone
                    return all([self._store([b]) for b in batches])
                log.warning("database refused batch %s of %s: %s", batches[0].batch_id, batches[0].device_id,
                            exc)
                self._add(batches_refused=1)
                return True
            if not self.stats.db_up:
                log.info("database available")
                self._set(db_up=True)
            self._add(batches_stored=len(batches), events_stored=sum(r.stored for r in results),
                      events_duplicate=sum(r.duplicates for r in results))
            return True
        return False

    def run(self) -> int:
        """Prepare the database (if it is up), connect, and consume until stop_event is set."""
        try:
            self.store.ensure_schema()
            self._set(db_up=True)
        except DatabaseDown as exc:
            # consume anyway: the worker keeps each batch un-acknowledged until the database is back
            log.error("database unavailable at start, will retry with the first batch: %s", exc)
            self._set(db_errors=1, last_error=str(exc))
        self._prune()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # unannotated in paho
        props.SessionExpiryInterval = self.opts.session_expiry
        props.ReceiveMaximum = self.opts.inflight
        self._worker.start()
        self._client.connect_async(self.opts.host, self.opts.port, keepalive=30, clean_start=False,
                                   properties=props)
        self._client.loop_start()
        next_prune = time.monotonic() + 3600
        while not self.stop_event.wait(1):
            if time.monotonic() > next_prune:
                next_prune = time.monotonic() + 3600
                self._prune()
        self._client.disconnect()
        self._client.loop_stop()
        self._worker.join(10)
        self.store.close()
        return 0

    def _prune(self) -> None:
        try:
            days = self.store.prune(self.opts.keep_days)
        except (DatabaseDown, BatchRefused) as exc:
            log.warning("retention: could not drop old partitions: %s", exc)
            return
        if days:
            log.info("retention: dropped %d day partition(s), %s .. %s", len(days), days[0], days[-1])


def broker_address(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of mqtt://host[:1883] or mqtts://host[:8883]; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"broker must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT], not {url!r}")
    tls = parts.scheme == "mqtts"
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


def main(argv: list[str] | None = None) -> int:
    """`tunnelwatch-ingest`: consume until SIGTERM/SIGINT."""
    p = argparse.ArgumentParser(prog="tunnelwatch-ingest", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--broker", required=True, help="mqtts://HOST:PORT (or mqtt:// without TLS)")
    p.add_argument("--ca", help="CA that signed the broker's certificate (PEM)")
    p.add_argument("--cert", help="this ingest's client certificate (PEM)")
    p.add_argument("--key", help="its private key (PEM)")
    p.add_argument("--client-id", default=f"tunnelwatch-ingest-{os.uname().nodename}",
                   help="MQTT client id: distinct per instance, stable across restarts (persistent session)")
    p.add_argument("--db", required=True, help="libpq connection string of the database")
    p.add_argument("--inflight", type=int, default=100,
                   help="unacknowledged messages at most (Receive Maximum)")
    p.add_argument("--group", type=int, default=50,
                   help="messages at most stored in one transaction (those already received)")
    p.add_argument("--keep-days", type=int, default=90, help="retention: partitions older are dropped")
    p.add_argument("--session-expiry", type=int, default=7 * 86400,
                   help="seconds the broker keeps this instance's session (and its share) while it is away")
    p.add_argument("--retry-max", type=float, default=5.0, help="longest wait between database retries (s)")
    p.add_argument("--stats-file", help="write the counters here as JSON after every batch")
    p.add_argument("--log-level", default="info")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="ingest: %(levelname)s: %(message)s")
    try:
        host, port, tls = broker_address(a.broker)
    except ValueError as exc:
        p.error(str(exc))
    if not 1 <= a.inflight <= 65535 or not 1 <= a.group <= 1000 or a.keep_days < 1 \
            or not 0 <= a.session_expiry <= 0xFFFFFFFF:
        p.error("--inflight must be 1..65535, --group 1..1000, --keep-days at least 1, "
                "--session-expiry 0..4294967295")
    ing = Ingest(Options(host, port, tls, a.ca, a.cert, a.key,
                         a.client_id, a.db, inflight=a.inflight, group=a.group,
                         session_expiry=a.session_expiry,
                         keep_days=a.keep_days, retry_max=a.retry_max,
                         stats_file=a.stats_file))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: ing.stop_event.set())
    return ing.run()


if __name__ == "__main__":
    raise SystemExit(main())
