"""The HTTPS uplink: drains the event spool to the ISP's collector batch by batch (wire: docs/uplink.md).

Delivery is at-least-once with an exactly-once effect: a batch leaves the spool only after the collector
answered 2xx, and every retry of a batch carries the same batch id. The id is derived from the batch's
content (device id + events, each with its own unique event id), so even a sender killed mid-send and
restarted sends the same id for the same events; the collector also de-duplicates single events by event
id, which covers a restarted sender whose next batch holds more events than the one it lost.

One batch is in flight at a time, so events reach the collector in spool order (in order per device).
Failures back off exponentially with full jitter (capped at backoff_max); 429/503 honour Retry-After; the
request rate is bounded by max_rate batches/s. A rejected client certificate or an untrusted collector
certificate is logged plainly, since those are what a technician has to fix.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from tunnelwatch.report.wire import (
    BATCH_HEADER,
    DEVICE_HEADER,
    EVENTS_PATH,
    Event,
    Outcome,
    batch_id_for,
    encode_batch,
    read_reply,
)

log = logging.getLogger(__name__)

# TLS alerts a server sends when it does not accept the client certificate (or got none).
_CLIENT_CERT_ALERTS: Final = frozenset({
    "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_REVOKED", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "TLSV1_ALERT_UNKNOWN_CA",
    "TLSV1_ALERT_ACCESS_DENIED", "TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE",
})

# What a peer closing a kept-alive connection looks like on the next request.
_CLOSED_UNDER_US: Final = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                           ssl.SSLEOFError)



class SpoolLike(Protocol):
    """What the uplink needs from tunnelwatch.report.spool.Spool."""

    def peek(self, limit: int) -> list[tuple[int, Event]]: ...
    def ack(self, rowids: list[int]) -> None: ...
    def backlog(self) -> int: ...


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap, base * (2.0 ** min(attempt, 62)))
    return rng.uniform(0.0, ceiling)


def client_context(ca_file: str | None, client_cert: str | None, client_key: str | None) -> ssl.SSLContext:
    """TLS client context: the collector's certificate verified against ca_file (or the system store)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert:
        ctx.load_cert_chain(client_cert, client_key)
    return ctx


def describe_error(exc: BaseException, *, has_client_cert: bool) -> str:
    """A log line a technician can act on, for an exception raised while talking to the collector."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"server certificate not trusted: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError) and exc.reason in _CLIENT_CERT_ALERTS:
        what = "" if has_client_cert else " (none configured)"
        return f"collector refused our client certificate{what}: {exc.reason}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "collector timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "collector refused the connection (down?)"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class _Batch:
    rowids: list[int]
    events: list[Event]
    batch_id: str
    body: bytes


class Uplink:
    """A background thread draining a Spool to the ISP's collector over HTTPS."""

    #: the URL scheme and default port this sender speaks (report/mqtt.py's subclass: mqtts, 8883)
    SCHEME = "https"
    DEFAULT_PORT = 443

    def __init__(self, spool: SpoolLike, *, url: str, ca_file: str | None, client_cert: str | None,
                 client_key: str | None, token: str | None, batch_size: int = 500, max_rate: float = 50.0,
                 timeout: float = 30.0, backoff_max: float = 300.0, device_id: str,
                 backoff_base: float = 1.0, idle_poll: float = 2.0, rng: random.Random | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != self.SCHEME or not parts.hostname:
            raise ValueError(f"uplink url must be {self.SCHEME}://host[:port][/prefix], got {url!r}")
        if batch_size < 1 or max_rate <= 0 or timeout <= 0 or backoff_max < 0:
            raise ValueError("batch_size >= 1, max_rate > 0, timeout > 0, backoff_max >= 0 required")
        self._spool = spool
        self._host = parts.hostname
        self._port = parts.port or self.DEFAULT_PORT
        self._path = parts.path.rstrip("/") + EVENTS_PATH
        self._ctx = client_context(ca_file, client_cert, client_key)
        self._has_cert = bool(client_cert)
        self._token = token
        self._device = device_id
        self._batch_max = batch_size
        self._batch_now = batch_size
        self._interval = 1.0 / max_rate
        self._timeout = timeout
        self._backoff_max = backoff_max
        self._backoff_base = backoff_base
        self._idle_poll = idle_poll
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._cond = threading.Condition()
        self._conn: http.client.HTTPSConnection | None = None
        self._thread: threading.Thread | None = None
        self._last_start = 0.0
        self._last_logged = ""
        self._may_drop = True
        self._stats: dict[str, Any] = {
            "sent_batches": 0, "sent_events": 0, "failures": 0, "last_error": None, "backoff_s": 0.0,
            "backlog": None, "duplicates": 0, "rejected_events": 0, "attempts": 0}

    # -- public API ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the sender thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tunnelwatch-uplink", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; an unacknowledged batch stays in the spool and is resent next time."""
        self._stop.set()
        self._kick.set()
        self._abort_connection()
        if self._thread is not None:
            self._thread.join(timeout)
        self._close()

    def kick(self) -> None:
        """Wake the sender now (e.g. right after events were spooled) instead of at the next idle poll."""
        self._kick.set()

    def stats(self) -> dict[str, Any]:
        """Counters: sent_batches, sent_events, failures, last_error, backoff_s, backlog, duplicates, ..."""
        with self._cond:
            return dict(self._stats)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        """Block until predicate(stats()) holds (re-checked after every attempt) or timeout; the result."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(dict(self._stats)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # -- the loop -------------------------------------------------------------------------------------------
    def _update(self, **changes: Any) -> None:
        with self._cond:
            for key, value in changes.items():
                if key in ("sent_batches", "sent_events", "failures", "duplicates", "rejected_events",
                           "attempts"):
                    self._stats[key] += value
                else:
                    self._stats[key] = value
            self._cond.notify_all()

    def _run(self) -> None:
        batch: _Batch | None = None
        attempt = 0
        while not self._stop.is_set():
            try:
                if batch is None:
                    batch = self._next_batch()
                    if batch is None:
                        self._kick.wait(self._idle_poll)
                        self._kick.clear()
                        continue
                self._pace()
                outcome = self._post(batch)
            except Exception as exc:  # a spool error must not kill the thread; the batch is retried
                log.exception("uplink: unexpected error")
                outcome = Outcome("retry", f"internal error: {exc}")
            if self._stop.is_set() and outcome.kind != "ok":
                break
            if batch is None:  # the spool itself failed; try it again later
                self._stop.wait(backoff_delay(attempt, base=self._backoff_base, cap=self._backoff_max,
                                              rng=self._rng))
                attempt += 1
                continue
            try:
                delay, done = self._settle(batch, outcome, attempt)
            except Exception:  # the ack failed: resending the batch is safe, the collector de-duplicates
                log.exception("uplink: could not update the spool; batch %s will be resent", batch.batch_id)
                attempt += 1
                self._stop.wait(backoff_delay(attempt, base=self._backoff_base, cap=self._backoff_max,
                                              rng=self._rng))
                continue
            if done:
                batch, attempt = None, 0
            else:
                attempt += 1
            if delay > 0:
                self._stop.wait(delay)
        self._close()

    def _next_batch(self) -> _Batch | None:
        rows = self._spool.peek(self._batch_now)
        self._update(backlog=self._spool.backlog())
        if not rows:
            return None
        events = [ev for _, ev in rows]
        bid = batch_id_for(self._device, events)
        return _Batch([r for r, _ in rows], events, bid, encode_batch(bid, self._device, events))

    def _pace(self) -> None:
        wait = self._last_start + self._interval - time.monotonic()
        if wait > 0:
            self._stop.wait(wait)
        self._last_start = time.monotonic()

    def _settle(self, batch: _Batch, outcome: Outcome, attempt: int) -> tuple[float, bool]:
        """Apply an outcome to the spool and the counters: (delay before the next attempt, batch done)."""
        n = len(batch.events)
        if outcome.kind == "ok":
            self._spool.ack(batch.rowids)
            if self._stats["failures"] and self._last_logged:
                log.info("uplink: collector accepted batch %s; delivery resumed", batch.batch_id)
            self._last_logged = ""
            self._may_drop = True
            self._batch_now = min(self._batch_max, self._batch_now * 2)
            self._update(sent_batches=1, sent_events=n, duplicates=int(outcome.duplicate), backoff_s=0.0,
                         backlog=self._spool.backlog(), last_error=None)
            return 0.0, True
        if outcome.kind == "smaller" or (outcome.kind == "reject" and n > 1):
            # split until the offending event is alone; nothing was stored, so new batch ids are fine
            self._batch_now = max(1, n // 2)
            self._note(f"collector refused a batch of {n} events ({outcome.message}); retrying in halves",
                       logging.WARNING)
            self._update(failures=1, last_error=outcome.message)
            return 0.0, True
        if outcome.kind == "reject" and self._may_drop:
            # one event the collector will never take: holding it would stop all reporting behind it. At
            # most one per accepted batch, so a collector that refuses everything cannot empty the spool.
            self._may_drop = False
            self._spool.ack(batch.rowids)
            log.error("uplink: collector rejected event %s (%s); dropped it from the spool",
                      _event_ref(batch.events[0]), outcome.message)
            self._update(failures=1, rejected_events=1, last_error=outcome.message)
            return 0.0, True
        if outcome.kind == "reject":
            delay = self._backoff_max
            self._note(f"collector rejected event {_event_ref(batch.events[0])} too ({outcome.message}) with "
                       f"no batch accepted since the last drop; keeping it, retrying in {delay:.0f}s",
                       logging.ERROR)
        elif outcome.kind == "permanent":
            delay = self._backoff_max
            self._note(f"collector refused the batch ({outcome.message}); keeping {n} events in the spool, "
                       f"retrying in {delay:.0f}s: check the uplink url and credentials", logging.ERROR)
        elif outcome.retry_after is not None:
            delay = outcome.retry_after + self._rng.uniform(0.0, outcome.retry_after * 0.1)
            self._note(f"collector busy ({outcome.message}); Retry-After {outcome.retry_after:g}s",
                       logging.WARNING)
        else:
            delay = backoff_delay(attempt, base=self._backoff_base, cap=self._backoff_max, rng=self._rng)
            self._note(f"{outcome.message}; retrying batch {batch.batch_id} in {delay:.2f}s", logging.WARNING,
                       key=outcome.message)
        # events spooled while this batch waits count too (the status showed 1 during a long outage)
        self._update(failures=1, last_error=outcome.message, backoff_s=delay, backlog=self._spool.backlog())
        return delay, False

    def _note(self, message: str, level: int, *, key: str | None = None) -> None:
        # one line per distinct failure, not one per retry: an outage must not flood the journal; the
        # log's rate limiter counts each problem on its own, and the first failure after a success is
        # always logged (an earlier, unrelated uplink warning must not hide the start of an outage)
        k = key or message
        if k != self._last_logged:
            log.log(level, "uplink: %s", message,
                    extra={"rate_key": f"uplink: {k}", "rate_exempt": not self._last_logged})
            self._last_logged = k

    # -- HTTP ---------------------------------------------------------------------------------------------
    def _post(self, batch: _Batch) -> Outcome:
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip",
                   BATCH_HEADER: batch.batch_id, DEVICE_HEADER: self._device,
                   "User-Agent": "tunnelwatch-uplink/1"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        self._update(attempts=1)
        for fresh in (False, True):
            conn = self._connection()
            reused = not fresh and conn.sock is not None
            try:
                conn.request("POST", self._path, body=batch.body, headers=headers)
                outcome, close = read_reply(conn.getresponse())
                if close:
                    self._close()
                return outcome
            except _CLOSED_UNDER_US as exc:
                self._close()
                if reused:  # the collector closed an idle keep-alive connection: one immediate retry
                    continue
                return Outcome("retry", describe_error(exc, has_client_cert=self._has_cert))
            except (OSError, http.client.HTTPException) as exc:
                self._close()
                return Outcome("retry", describe_error(exc, has_client_cert=self._has_cert))
        return Outcome("retry", "connection lost")

    def _connection(self) -> http.client.HTTPSConnection:
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                                     context=self._ctx)
        return self._conn

    def _abort_connection(self) -> None:
        # unblocks a recv() stuck on a hung collector so stop() returns promptly
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _event_ref(ev: Event) -> str:
    for key in ("id", "event_id"):
        if isinstance(ev.get(key), str):
            return str(ev[key])
    return "(no id)"
