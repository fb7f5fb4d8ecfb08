"""Reporting inside the daemon: events into the spool, the uplink, IPFIX export, heartbeats.

Owns everything the main process does for the ISP, all of it off the packet path. `flow()` and `event()`
only append to a bounded in-memory queue (a full queue counts a drop, reported in the next heartbeat; the
packet path never waits); a writer thread builds the events (privacy applied first), commits them to the
spool in batches (`put_many`: one fsync per batch) and kicks the uplink. IPFIX gets its own queue and
thread because a TCP collector may stall. Registry sync is the policy side's (policy/syncer.py).

The uplink is HTTPS or MQTT by report.uplink.url's scheme (report/links.py). Without report.uplink.url
the spool is not opened at all: nobody would ever drain it, and an SD card should not be written for
nothing. A spool that cannot be opened leaves the daemon enforcing, health
"degraded", reporting off. IPFIX is exported when the flow is decided, with the packets/bytes the daemon
had seen by then (only the first queue.packets packets reach userspace, so the counters are partial).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from tunnelwatch import __version__
from tunnelwatch.config.runconfig import RunConfig
from tunnelwatch.record import FlowRecord
from tunnelwatch.report.events import EventError, make_event
from tunnelwatch.report.heartbeat import config_fields, fail_open_fields, queue_counters
from tunnelwatch.report.privacy import DEFAULT_SUBSCRIBER_NETS, Pseudonymizer, load_or_create_key
from tunnelwatch.text import clean_text
from tunnelwatch.verdict import confidence_at_least

if TYPE_CHECKING:
    from tunnelwatch.appliance.state import StatusState
    from tunnelwatch.report.ipfix import IpfixExporter
    from tunnelwatch.report.spool import Spool
    from tunnelwatch.report.uplink import Uplink

log = logging.getLogger(__name__)

QUEUE_MAX: Final = 10_000  # events waiting for the writer thread
HOLD_MAX: Final = 20_000  # built events held in memory while the spool cannot be written (disk full)
RETRY_EVERY: Final = 2.0  # seconds between spool write attempts while it fails
BATCH_MAX: Final = 500  # events per spool transaction
STATUS_EVERY: Final = 2.0  # seconds between uplink figures pushed into the status state
STOP_WAIT: Final = 5.0  # seconds SIGTERM may spend flushing the last events upward
Item = tuple[str, float, dict[str, object]]
_STOP: Final[Item] = ("", 0.0, {})


class Reporter:
    """Events, spool, uplink, IPFIX and registry sync of one daemon (see the module docstring)."""

    def __init__(self, cfg: RunConfig, state: StatusState, device_id: str,
                 latency: Callable[[Iterable[int]], dict[str, float] | None] = lambda qs: None) -> None:
        """`latency`: {p50, p99, max} ms of the verdicts of these queues (inline/qstats), for heartbeats."""
        self.cfg = cfg
        self.state = state
        self.device_id = device_id
        self.latency = latency
        self.started = time.time()
        self.privacy = Pseudonymizer("clear", None)
        self.spool: Spool | None = None
        self._held: list[dict[str, object]] = []  # writer thread only
        self._retry_at = 0.0
        self.uplink: Uplink | None = None
        self.ipfix: IpfixExporter | None = None
        self._q: queue.Queue[Item] = queue.Queue(QUEUE_MAX)
        self._ipq: queue.Queue[FlowRecord | None] = queue.Queue(QUEUE_MAX)
        self._lock = threading.Lock()
        self._by_klass: Counter[str] = Counter()
        self._by_action: Counter[str] = Counter()
        self._drops = 0
        self._unreported = 0  # tagged flows below report.min_confidence, since start (as flows_by_klass)
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.warnings: list[str] = []
        self.stop_wait = STOP_WAIT
        self.degraded: str | None = None  # why reporting is impaired (None = fine or off by config)
        #: where registry documents pushed over the MQTT uplink go (the policy side's RegistrySyncer.offer)
        self.registry_sink: Callable[[bytes], None] | None = None

    # -- life cycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the spool, start the threads and report daemon_started (never raises)."""
        self._privacy(self.cfg)
        if self.cfg.report.uplink.url:
            self._open_spool()
        self._start_ipfix(self.cfg)
        self._spawn(self._writer, "tunnelwatch-spool")
        self._spawn(self._exporter, "tunnelwatch-ipfix")
        q = self.cfg.queue_count
        self.event("daemon_started", software=__version__, mode="nfqueue", queues=q,
                   warnings=self.warnings[:16] or None, **config_fields(self.cfg))

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _privacy(self, cfg: RunConfig) -> None:
        pc = cfg.report.privacy
        nets = pc.subscriber_nets or DEFAULT_SUBSCRIBER_NETS
        if not (cfg.report.uplink.url or cfg.report.ipfix.collector):
            # nothing leaves the box: no key to make (and no file written in the state directory)
            self.privacy = Pseudonymizer("omit", None, subscriber_nets=nets)
            return
        try:
            key = None
            if pc.subscriber_addresses == "hash":
                pc.key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                key = load_or_create_key(pc.key_file)
            self.privacy = Pseudonymizer(pc.subscriber_addresses, key, subscriber_nets=nets)
        except (OSError, ValueError) as exc:
            # never report addresses in clear that the operator asked to hide
            log.error("report privacy: %s: subscriber addresses are omitted instead", exc)
            self.privacy = Pseudonymizer("omit", None, subscriber_nets=nets)

    def _open_spool(self) -> None:
        from tunnelwatch.report.links import build_uplink
        from tunnelwatch.report.spool import Spool, SpoolError

        sc, up = self.cfg.report.spool, self.cfg.report.uplink
        try:
            sc.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.spool = Spool(str(sc.path), max_events=sc.max_events, max_bytes=sc.max_bytes,
                               retention_days=sc.retention_days)
        except (SpoolError, OSError, ValueError) as exc:
            log.error("report: cannot open the spool %s: %s; reporting is OFF, enforcement continues",
                      sc.path, exc)
            self.degraded = f"reporting off: spool {sc.path} unavailable"
            self.state.set(report=self.degraded)  # health degrades on it (appliance/health.py)
            self.spool = None
            return
        self.state.set(spool_max_events=sc.max_events)
        if self.spool.recovered:
            self.warnings.append(f"spool was corrupt: moved aside to {self.spool.recovered}")
            log.warning("report: the spool was corrupt; moved aside to %s", self.spool.recovered)
        assert up.url is not None
        try:
            sink = self.registry_sink if self.cfg.report.registry_sync.public_key else None
            self.uplink = build_uplink(self.spool, up, self.device_id, sink,
                                       sc.path.with_name(sc.path.name + ".cut"))
            self.uplink.start()
        except (OSError, ValueError) as exc:  # e.g. an unreadable CA or client key
            log.error("report uplink: %s; events stay in the spool", exc)
            self.degraded = f"uplink off: {exc}"
            self.state.set(report=self.degraded, uplink_last_error=str(exc))
            self.uplink = None
        log.info("report: spool %s (%d events waiting), uplink %s", sc.path, self.spool.backlog(),
                 up.url if self.uplink else "FAILED")

    def _start_ipfix(self, cfg: RunConfig) -> None:
        ic = cfg.report.ipfix
        if ic.collector is None:
            return
        from tunnelwatch.report.ipfix import IpfixExporter

        try:
            self.ipfix = IpfixExporter(ic.collector, transport=ic.transport, enterprise=ic.enterprise,
                                       pseudonymizer=self.privacy)
            log.info("report: IPFIX export to %s:%d/%s", *ic.collector, ic.transport)
        except (OSError, ValueError) as exc:
            log.error("report ipfix: %s", exc)

    def apply(self, cfg: RunConfig) -> None:
        """A reloaded config: privacy and IPFIX follow it (the spool and uplink need a restart)."""
        old, self.cfg = self.cfg, cfg
        if (cfg.report.privacy, cfg.report.ipfix) != (old.report.privacy, old.report.ipfix):
            self._privacy(cfg)
        if cfg.report.ipfix != old.report.ipfix:
            if self.ipfix is not None:
                self.ipfix.close()
            self.ipfix = None
            self._start_ipfix(cfg)
        if cfg.report.uplink != old.report.uplink:
            log.warning("report.uplink changed: it applies at the next restart "
                        "(systemctl restart tunnelwatch)")

    def stop(self, reason: str) -> None:
        """Report daemon_stopped, flush the spool writer, give the uplink a bounded moment, stop all."""
        self.event("daemon_stopped", reason=reason, uptime_s=round(time.time() - self.started, 3))
        self._put(_STOP)
        self._ipq.put(None) if not self._ipq.full() else None
        deadline = time.monotonic() + self.stop_wait
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        if self.uplink is not None and self.spool is not None:
            # the uplink's own backlog figure may predate the last events: ask the spool after each attempt
            while self._backlog() and time.monotonic() < deadline:
                self.uplink.kick()
                self.uplink.wait_for(_attempted_after(self.uplink.stats()["attempts"]),
                                     max(0.05, deadline - time.monotonic()))
            self.uplink.stop(2.0)
        if self.spool is not None:
            self.spool.close()
        if self.ipfix is not None:
            self.ipfix.close()

    def _backlog(self) -> int:
        try:
            return self.spool.backlog() if self.spool is not None else 0
        except Exception:  # a broken spool has nothing more to send
            return 0

    # -- producers (main thread; never block) ---------------------------------------------------------
    def _put(self, item: Item) -> None:
        try:
            self._q.put_nowait(item)
        except queue.Full:
            with self._lock:
                self._drops += 1

    def event(self, kind: str, **fields: object) -> None:
        """Queue one event (built and spooled by the writer thread)."""
        if self.spool is not None:
            self._put((kind, time.time(), fields))

    def flow(self, rec: FlowRecord) -> None:
        """One decided flow: counted for the heartbeat, reported when it is tagged, exported over IPFIX."""
        kind = rec.kind
        quiet = kind == "flow_tagged" and not self._reportable(rec.confidence)
        with self._lock:
            self._by_klass[rec.klass] += 1
            self._by_action[rec.action] += 1
            if quiet:
                # the least restrictive means: a guess (e.g. iperf3 or a game on UDP 1194) is no report
                # about a subscriber; the heartbeat still says how many there were
                self._unreported += 1
        if quiet:
            return
        if kind is not None:
            fields = rec.fields()
            del fields["ts"]
            self.event(kind, _ts=rec.ts, **fields)
        if self.ipfix is not None and kind is not None:
            with contextlib.suppress(queue.Full):  # best effort by design: the spool is the durable channel
                self._ipq.put_nowait(rec)

    def count_flows(self, klass: str, action: str, n: int) -> None:
        """n decided flows that give no event (allowed, not flagged, not registered): only counted, as flow()
        counts them (the daemon's Supervisor.tally hands them over in bulk, without building records)."""
        with self._lock:
            self._by_klass[klass] += n
            self._by_action[action] += n

    def _reportable(self, confidence: str) -> bool:
        """Whether a tagged flow of this confidence is reported one by one (report.min_confidence)."""
        return confidence_at_least(confidence, self.cfg.report.min_confidence)

    # -- threads --------------------------------------------------------------------------------------
    def _build(self, item: Item) -> dict[str, object] | None:
        kind, ts, fields = item
        fields = dict(fields)
        t = fields.pop("_ts", None)
        if isinstance(t, int | float):
            ts = float(t)
        if "src" in fields or "dst" in fields:
            fields = self.privacy.apply(fields)
        try:
            return make_event(kind, device_id=self.device_id, ts=ts, **fields)
        except EventError as exc:
            log.warning("report: %s event not built: %s", kind, clean_text(str(exc), 300))
        # a field that does not pass (e.g. control characters a server sent) must not lose the event:
        # the same event with every text field made printable and cut to a safe length
        fixed = {k: clean_text(v, 256) if isinstance(v, str) else v for k, v in fields.items()}
        try:
            return make_event(kind, device_id=self.device_id, ts=ts, **fixed)
        except EventError:
            return None

    def _writer(self) -> None:
        next_beat = time.monotonic() + self.cfg.report.heartbeat
        next_status = 0.0
        stopping = False
        while not stopping:
            now = time.monotonic()
            items: list[Item] = []
            try:
                items.append(self._q.get(timeout=max(0.05, min(next_beat, next_status + STATUS_EVERY) - now)))
                while len(items) < BATCH_MAX:
                    items.append(self._q.get_nowait())
            except queue.Empty:
                pass
            stopping = _STOP in items
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.cfg.report.heartbeat
                items.insert(0, ("heartbeat", time.time(), self._heartbeat()))
            events = [e for e in (self._build(i) for i in items if i != _STOP)
                      if e is not None]
            if events and self.spool is not None:
                self._store(events, force=stopping)
            elif self._held and time.monotonic() >= self._retry_at:
                self._store([], force=stopping)
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + STATUS_EVERY
                self._status()
        if self._held:
            log.error("report: %d events lost at shutdown: the spool is still not writable", len(self._held))

    def _store(self, events: list[dict[str, object]], *, force: bool = False) -> None:
        """Commit events to the spool; while it fails (disk full), hold them in memory and retry."""
        assert self.spool is not None
        if self._held:
            self._held.extend(events)
            events = self._held
            if not force and time.monotonic() < self._retry_at:
                self._trim_held()
                return
        try:
            self.spool.put_many(events)
        except Exception as exc:  # a full disk must not end reporting for good: held, then counted
            if not self._held:
                log.error("report: spool write failed: %s; holding events in memory (at most %d) and "
                          "retrying every %.0f s", exc, HOLD_MAX, RETRY_EVERY)
                self.state.set(report=f"spool write failing: {exc}"[:200])
            self._held = events
            self._retry_at = time.monotonic() + RETRY_EVERY
            self._trim_held()
            return
        if self._held:
            log.warning("report: spool writable again: %d held events written", len(events))
            self._held = []
            self.state.set(report=self.degraded)
        if self.uplink is not None:
            self.uplink.kick()

    def _trim_held(self) -> None:
        over = len(self._held) - HOLD_MAX
        if over > 0:  # the oldest go first, counted and reported in the next heartbeat that is stored
            del self._held[:over]
            with self._lock:
                self._drops += over

    def _heartbeat(self) -> dict[str, object]:
        qs = range(self.cfg.queue_num, self.cfg.queue_num + self.cfg.queue_count)
        queued, qdrops = queue_counters(qs)
        with self._lock:
            hb: dict[str, object] = {"uptime_s": round(time.time() - self.started, 3),
                                     "flows_by_klass": dict(self._by_klass),
                                     "flows_by_action": dict(self._by_action),
                                     "flows_unreported": self._unreported,
                                     "packets_queued": queued, "queue_drops": qdrops}
            # userspace time per verdict, {p50, p99, max} ms over every queue (worker processes send
            # their recent samples to this one once a second, workers.py)
            latency = self.latency(qs)
            if latency is not None:
                hb["verdict_latency_ms"] = latency
            drops, self._drops = self._drops, 0
        hb.update(fail_open_fields(self.state.snapshot()))
        hb.update(config_fields(self.cfg))  # self.cfg follows reloads: a switch to monitor shows here
        if drops:
            log.warning("report: %d events dropped (reporting queue full or spool write failed)", drops)
        if self.spool is not None:
            try:
                hb.update(backlog=self.spool.backlog(), spool_dropped=self.spool.dropped() + drops,
                          spool_expired=self.spool.expired())
            except Exception as exc:
                log.warning("report: spool figures unavailable: %s", exc)
        return hb

    def _status(self) -> None:
        up = self.uplink.stats() if self.uplink is not None else None
        fields: dict[str, Any] = {}
        if up is not None:
            fields.update(uplink_backlog=up.get("backlog"), uplink_last_error=up.get("last_error"),
                          uplink_sent_events=up.get("sent_events"))
        if self.ipfix is not None:
            fields.update(ipfix_records=self.ipfix.stats.get("records"),
                          ipfix_errors=self.ipfix.stats.get("errors"))
        if fields:
            self.state.set(**fields)

    def _exporter(self) -> None:
        while True:
            rec = self._ipq.get()
            batch = [rec]
            try:
                while len(batch) < 64:
                    batch.append(self._ipq.get_nowait())
            except queue.Empty:
                pass
            flows = [r for r in batch if r is not None]
            exp = self.ipfix
            if flows and exp is not None:
                exp.export(flows)
            if None in batch:
                return


def _attempted_after(n: int) -> Callable[[dict[str, Any]], bool]:
    return lambda s: bool(s["attempts"] > n)
