"""`tunnelwatch run`: the inline daemon's life cycle and its per-packet decision path.

Start: load config and registry (exit 78 when invalid), start the status socket, bind the queue, then
install the rules (so no packet is queued before someone listens) and only then tell systemd READY=1.
Run: each queued packet goes parse -> engine -> policy, and the flow's decision is returned as mark bits
the kernel saves in the connmark. SIGHUP reloads config and registry (supervisor.py); SIGTERM/SIGINT send
STOPPING=1, remove our rules and exit 0. A kill -9 leaves the rules, but --queue-bypass keeps traffic
flowing and the next start re-installs them without duplicates. Once the queue is bound and the rules are
in, every capability but CAP_NET_ADMIN / CAP_NET_RAW is dropped (see privileges.py). Endpoint lists
(endpoints.py) are loaded at start (a bad one exits 78), re-read on every reload and whenever a list file
changes (checked every `endpoints.watch` seconds, between packets).

With several queues, one worker process per queue handles packets (workers.py); the main process owns the
rules, the supervisor and the status state.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Final

from tunnelwatch import firewall, privileges
from tunnelwatch.appliance import Appliance
from tunnelwatch.classify.base import Verdict
from tunnelwatch.endpoints import Endpoints
from tunnelwatch.engine import Engine
from tunnelwatch.flow import Flow, FlowKey
from tunnelwatch.packet import addr_text, parse_ip, transport_name
from tunnelwatch.policy import Decision, Policy
from tunnelwatch.registry import Registry
from tunnelwatch.reporting import Reporter
from tunnelwatch.runconfig import ConfigError, RunConfig
from tunnelwatch.service import Notifier
from tunnelwatch.supervisor import Supervisor

log = logging.getLogger("tunnelwatch")

EX_CONFIG: Final = 78
#: an undecided flow that saw no queued packet for this long is decided on what was seen (Engine.decide_quiet)
QUIET_S: Final = 2.0
FULL_GC_EVERY: Final = 3600.0  # seconds between full garbage collections on the packet path
Record = Callable[[dict[str, object]], None]


def _deep(cfg: RunConfig) -> dict[tuple[int, int], int]:
    return {(6 if t == "tcp" else 17, port): n for t, port, n in cfg.deep}


def _mark(d: Decision) -> int:
    if d.action != "block":
        return firewall.MARK_ALLOW
    return firewall.MARK_REJECT if d.reject else firewall.MARK_DROP


class Enforcer:
    """The per-packet path: classify, decide once per flow, remember the flow's mark bits."""

    def __init__(self, cfg: RunConfig, registry: Registry, record: Record | None = None,
                 endpoints: Endpoints | None = None) -> None:
        self.cfg = cfg
        self.policy = Policy.from_config(cfg)
        self.registry = registry
        self.record = record
        self.endpoints = endpoints if endpoints is not None else Endpoints(cfg.endpoints)
        self.engine = Engine(budget=cfg.packets, max_flows=cfg.flows, on_decided=self._decided,
                             on_end=self._ended, deep=_deep(cfg))
        self._use_lists()
        self.unparsed = 0  # queued packets that are not IP we can read (counted, then accepted)
        self._evictions_seen = 0
        self.next_watch = time.monotonic() + cfg.endpoints.watch
        self.next_full_gc = time.monotonic() + FULL_GC_EVERY
        self.marks: dict[FlowKey, int] = {}
        self.counts: dict[str, int] = {}

    def _use_lists(self) -> None:
        idx = self.endpoints.index
        self.engine.endpoints = idx if idx.count else None  # no lists: not even a call per decision

    def apply(self, cfg: RunConfig, registry: Registry) -> None:
        """A reloaded config: new flows get the new policy; decided flows keep their marks."""
        if cfg is not self.cfg:
            # a reload (SIGHUP) brings a freshly loaded config object: re-read the lists too; a registry
            # file change hands back the running one (in workers every hand-over is a copy: re-read anyway)
            self.endpoints.reload(cfg.endpoints)
            self._use_lists()
        if cfg != self.cfg:
            policy = Policy.from_config(cfg)
            if cfg.voip == self.cfg.voip:
                policy.calls = self.policy.calls  # the bulk-VoIP window survives unrelated changes
            self.policy = policy
            self.engine.budget = cfg.packets
            self.engine.table.max_flows = cfg.flows  # a smaller table shrinks as new flows arrive
            self.engine.deep = _deep(cfg)
        self.cfg, self.registry = cfg, registry

    def tick(self) -> None:
        """Between packets: re-read endpoint list files that changed (every `endpoints.watch` seconds)."""
        watch = self.cfg.endpoints.watch
        if watch and self.cfg.endpoints.lists and time.monotonic() >= self.next_watch:
            self.next_watch = time.monotonic() + watch
            if self.endpoints.check():
                self._use_lists()
        self._decide_quiet()
        if time.monotonic() >= self.next_full_gc:
            # automatic full collections are off on the packet path (nfqueue.relax_gc); one an hour
            # still frees any long-lived reference cycle (threads, TLS, HTTP objects), at a known time
            self.next_full_gc = time.monotonic() + FULL_GC_EVERY
            t0 = time.perf_counter()
            freed = gc.collect()
            log.debug("full garbage collection: %d objects freed in %.0f ms", freed,
                      (time.perf_counter() - t0) * 1000)
        evicted = self.engine.table.evicted
        if evicted and not self._evictions_seen:
            # once: a full table is either a flood or an undersized queue.flows; both need a human
            log.warning("flow table full (%d flows): forgetting the least recently seen flows; a flood of "
                        "new flows, or raise queue.flows", self.engine.table.max_flows)
        self._evictions_seen = evicted

    def _decide_quiet(self) -> None:
        for flow in self.engine.decide_quiet(time.time(), QUIET_S):
            bits = self.marks.get(flow.key, 0)
            log.debug("decided after going quiet for %.0f s: %s", QUIET_S, flow.describe())
            if bits in (firewall.MARK_DROP, firewall.MARK_REJECT):
                found = firewall.mark_connection(transport_name(flow.proto), addr_text(flow.src), flow.sport,
                                                 addr_text(flow.dst), flow.dport, bits)
                if not found:  # closed meanwhile, or not TCP/UDP: nothing left to block
                    log.info("block decided after %s went quiet: no conntrack entry left", flow.describe())

    def flow_stats(self) -> dict[str, int]:
        """Flow-table and parser counters for the status (cumulative since start)."""
        t = self.engine.table
        return {"tracked": len(t), "max": t.max_flows, "created": t.created, "expired": t.expired,
                "evicted": t.evicted, "classifier_errors": self.engine.classifier_errors,
                "unparsed_packets": self.unparsed}

    def handle(self, payload: bytes) -> int:
        """Mark bits for one queued packet: the flow's decision, or 0 while it is still undecided."""
        pkt = parse_ip(payload, time.time())
        if pkt is None:
            self.unparsed += 1
            return 0
        flow = self.engine.process(pkt)
        bits = self.marks.get(flow.key)
        if bits is not None:
            return bits
        # done without a decision: no classifier wants this transport (ICMP, ...): nothing to inspect
        return firewall.MARK_ALLOW if flow.done else 0

    def _decided(self, flow: Flow, verdict: Verdict) -> None:
        d = self.policy.decide(flow, verdict, self.registry, dt.datetime.now(dt.UTC))
        self.marks[flow.key] = _mark(d)
        self.counts[d.action] = self.counts.get(d.action, 0) + 1
        verb = "block(reject)" if d.reject else d.action
        level = logging.INFO if verdict.klass not in ("benign", "unknown") else logging.DEBUG
        if d.bulk:
            level = logging.WARNING  # the grey-traffic signature: the operator must see it
        desc = flow.describe()
        log.log(level, "decided %s %s %s %s %s (%s)%s", verdict.klass, verdict.protocol, verdict.confidence,
                verb, desc, d.reason,
                f" [{'; '.join(verdict.evidence[:3])}]" if verdict.evidence else "",
                extra={"FLOW": desc, "KLASS": verdict.klass, "PROTOCOL": verdict.protocol, "VERDICT": verb,
                       "CONFIDENCE": verdict.confidence})
        if self.record is not None:
            registered = d.action == "allow" and d.reason.startswith("registered ")
            reg = d.reason[len("registered "):] if registered else None
            self.record({"ts": time.time(), "src": addr_text(flow.src), "sport": flow.sport,
                         "dst": addr_text(flow.dst), "dport": flow.dport,
                         "transport": transport_name(flow.proto),
                         "klass": verdict.klass, "protocol": verdict.protocol,
                         "confidence": verdict.confidence, "action": d.action, "reason": d.reason,
                         "evidence": [e[:128] for e in verdict.evidence[:16]], "bulk": d.bulk or None,
                         "registration_id": reg, "packets": flow.packets, "bytes": flow.bytes,
                         "first_seen": flow.first_ts, "last_seen": flow.last_ts})

    def _ended(self, flow: Flow, verdict: Verdict) -> None:
        self.marks.pop(flow.key, None)
        self.policy.ended(flow)  # a call whose flow ended no longer counts towards bulk VoIP


def firewall_spec(cfg: RunConfig, registry: Registry, now: dt.datetime, backend: str = "iptables"
                  ) -> firewall.Spec:
    """Rules for this config; registrations valid now become queue bypasses (any protocol to them)."""
    bypass = tuple(
        firewall.Bypass(str(s.net), s.ports, tuple(str(h) for h in e.lan_hosts))
        for e in registry.active(now) for s in e.servers
    )
    return firewall.Spec(cfg.queue_num, cfg.queue_count, cfg.packets, cfg.fail_closed, cfg.hooks, cfg.ipv6,
                         bypass, backend, cfg.deep)


class Signals:
    """SIGTERM/SIGINT/SIGHUP as flags plus a wakeup fd for select()."""

    def __init__(self) -> None:
        self.stop = 0
        self.hup = False
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.wfd, False)
        os.set_blocking(self.rfd, False)
        signal.set_wakeup_fd(self.wfd)
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop = signum

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.hup = True

    def drain(self) -> None:
        try:
            while os.read(self.rfd, 512):
                pass
        except BlockingIOError:
            pass


class Rules:
    """The installed rule set of this daemon, refreshed when the config or active registrations change."""

    def __init__(self, cfg: RunConfig, registry: Registry) -> None:
        self.cfg = cfg
        self.registry = registry
        self.backend, why = firewall.choose_backend(cfg.backend)
        log.info("firewall backend: %s (%s)", self.backend, why)
        self.spec = firewall_spec(cfg, registry, dt.datetime.now(dt.UTC), self.backend)

    def install(self) -> None:
        """Install the current spec."""
        firewall.install(self.spec)

    def apply(self, cfg: RunConfig, registry: Registry) -> None:
        """Install the rules of a reloaded config (nothing is run when they are unchanged)."""
        fresh = firewall_spec(cfg, registry, dt.datetime.now(dt.UTC), self.backend)
        if fresh != self.spec:
            firewall.install(fresh)  # idempotent: chains rewritten in one restore, stale jumps removed
            self.spec = fresh
            log.info("rules refreshed: %d registered endpoints bypass the queue", len(fresh.bypass))
        self.cfg, self.registry = cfg, registry

    def refresh(self) -> None:
        """Re-install when the registrations valid now changed."""
        self.apply(self.cfg, self.registry)


def log_ready(cfg: RunConfig, spec: firewall.Spec, flags: list[bool | None]) -> None:
    """The "ready:" line (tests and technicians wait for it)."""
    if cfg.fail_closed:
        fo = "off (fail_closed)"
    else:
        fo = "on" if all(flags) else "FAILED" if False in flags else "unconfirmed"
    last = cfg.queue_num + cfg.queue_count - 1
    queues = f"queue {cfg.queue_num}" if cfg.queue_count == 1 else f"queues {cfg.queue_num}-{last}"
    log.info("ready: %s, first %d packets per connection, hooks %s, ipv6 %s, %d registered endpoints bypass "
             "the queue, kernel fail-open %s", queues, cfg.packets, ",".join(cfg.hooks),
             "on" if cfg.ipv6 else "off", len(spec.bypass), fo)


Host = Callable[[list[int]], None]  # called after every select with the ready fds


def serve(enforcer: Enforcer, qnum: int, sig: Signals, on_ready: Callable[[bool | None], None],
           fds: list[int], timeout: Callable[[], float], wake: Host) -> None:
    """Bind one queue and handle its packets until a stop signal; `wake` does the host's other work."""
    from tunnelwatch.nfqueue import Queue  # needs the compiled binding: only the daemon imports it

    cfg = enforcer.cfg
    nfq = Queue(qnum, enforcer.handle, firewall.MARK_MASK, maxlen=cfg.maxlen, fail_open=not cfg.fail_closed)
    try:
        on_ready(nfq.flags_ok)
        qfd = nfq.fileno()
        while not sig.stop:
            ready, _, _ = select.select([qfd, sig.rfd, *fds], [], [], min(timeout(), QUIET_S / 2))
            if sig.rfd in ready:
                sig.drain()
            if qfd in ready:
                nfq.poll()
            wake(ready)
            enforcer.tick()
        log.info("stopping on signal %d: queue %d: %d packets seen, decisions %s", sig.stop, qnum,
                 nfq.packets, enforcer.counts)
    finally:
        nfq.close()


def _poke(fd: int) -> None:
    """Wake the main loop's select (a registry sync thread has work for it)."""
    with contextlib.suppress(OSError):  # the pipe is full: the loop is awake anyway
        os.write(fd, b"\0")


def run(cfg: RunConfig, registry: Registry, path: Path | None = None, *, verbose: bool = False,
        endpoints: Endpoints | None = None) -> int:
    """Run until SIGTERM/SIGINT, then remove our rules; returns the exit code. `endpoints`: the lists
    as already loaded and checked with the config (`tunnelwatch run`); else they are loaded here."""
    if endpoints is None:
        try:
            endpoints = Endpoints(cfg.endpoints, strict=True)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("endpoints: %s", problem)
            log.error("endpoint lists invalid (%d problem(s)): not starting", len(exc.problems))
            return EX_CONFIG
    if cfg.endpoints.lists:
        log.info("%s", endpoints.summary())
    sig = Signals()
    notifier = Notifier()
    app = Appliance(cfg, registry)
    rules = Rules(cfg, registry)
    enforcer = Enforcer(cfg, registry, endpoints=endpoints)
    sup = Supervisor(cfg, registry, path, rules, app, notifier, enforcer.apply, verbose=verbose)
    reporter = Reporter(cfg, app.state, str(app.state.snapshot()["device_id"]), lambda: _poke(sig.wfd))
    sup.reporter = reporter
    try:
        if cfg.queue_count == 1:
            enforcer.record = sup.record
            app.start_status()
            reporter.start()

            def ready(ok: bool | None) -> None:
                rules.install()  # only now: no packet is queued before someone listens
                log_ready(cfg, rules.spec, [ok])
                privileges.drop()
                sup.ready()

            next_stats = 0.0

            def wake(ready_fds: list[int]) -> None:
                nonlocal next_stats
                sup.hup, sig.hup = sup.hup or sig.hup, False
                sup.wake()
                if time.monotonic() >= next_stats:  # status figures: cheap, but not per packet
                    next_stats = time.monotonic() + 1.0
                    app.state.set(flows=enforcer.flow_stats(),
                                  voip_calls=enforcer.policy.active_calls(dt.datetime.now(dt.UTC)))

            serve(enforcer, cfg.queue_num, sig, ready, [], sup.timeout, wake)
        else:
            from tunnelwatch.workers import run_workers

            run_workers(cfg, sig, rules, sup, app)
    finally:
        notifier.stopping()
        app.state.set(health="stopping")
        reporter.stop(f"signal {signal.Signals(sig.stop).name}" if sig.stop else "error")
        app.stop()
        firewall.remove()
        log.info("rules removed")
    return 0
