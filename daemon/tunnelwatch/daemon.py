"""`tunnelwatch run`: the inline daemon's life cycle and its per-packet decision path.

Start: load config and registry (exit 78 when invalid), bind the queue, then install the rules (so no
packet is queued before someone listens). Run: each queued packet goes parse -> engine -> policy, and
the flow's decision is returned as mark bits the kernel saves in the connmark. SIGHUP (or a changed
registry file) reloads the registry; SIGTERM/SIGINT remove our rules and exit 0. A kill -9 leaves the
rules, but --queue-bypass keeps traffic flowing and the next start re-installs them without duplicates.
Once the queue is bound and the rules are in, every capability but CAP_NET_ADMIN / CAP_NET_RAW is
dropped (see privileges.py): enough to refresh and remove the rules, nothing else.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing as mp
import os
import queue
import select
import signal
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING, Final

from tunnelwatch import firewall, privileges
from tunnelwatch.classify.base import Verdict
from tunnelwatch.engine import Engine
from tunnelwatch.flow import Flow, FlowKey
from tunnelwatch.packet import parse_ip
from tunnelwatch.policy import Decision, Policy
from tunnelwatch.registry import Registry
from tunnelwatch.runconfig import RunConfig

if TYPE_CHECKING:
    from multiprocessing.queues import Queue as MPQueue

    ResultQueue = MPQueue[tuple[int, bool | None, str]]

log = logging.getLogger("tunnelwatch")

EX_CONFIG: Final = 78
TICK: Final = 30.0  # seconds between registry-file and validity-window checks


def _mark(d: Decision) -> int:
    if d.action != "block":
        return firewall.MARK_ALLOW
    return firewall.MARK_REJECT if d.reject else firewall.MARK_DROP


class Enforcer:
    """The per-packet path: classify, decide once per flow, remember the flow's mark bits."""

    def __init__(self, cfg: RunConfig, registry: Registry) -> None:
        self.policy = Policy.from_config(cfg)
        self.registry = registry
        self.engine = Engine(budget=cfg.packets, on_decided=self._decided, on_end=self._ended)
        self.marks: dict[FlowKey, int] = {}
        self.counts: Counter[str] = Counter()

    def handle(self, payload: bytes) -> int:
        """Mark bits for one queued packet: the flow's decision, or 0 while it is still undecided."""
        pkt = parse_ip(payload, time.time())
        if pkt is None:
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
        self.counts[d.action] += 1
        verb = "block(reject)" if d.reject else d.action
        level = logging.INFO if verdict.klass not in ("benign", "unknown") else logging.DEBUG
        if d.bulk:
            level = logging.WARNING  # the grey-traffic signature: the operator must see it
        log.log(level, "decided %s %s %s %s %s (%s)%s", verdict.klass, verdict.protocol, verdict.confidence,
                verb, flow.describe(), d.reason,
                f" [{'; '.join(verdict.evidence[:3])}]" if verdict.evidence else "")

    def _ended(self, flow: Flow, verdict: Verdict) -> None:
        self.marks.pop(flow.key, None)


def firewall_spec(cfg: RunConfig, registry: Registry, now: dt.datetime, backend: str = "iptables"
                  ) -> firewall.Spec:
    """Rules for this config; registrations valid now become queue bypasses (any protocol to them)."""
    bypass = tuple(
        firewall.Bypass(str(s.net), s.ports, tuple(str(h) for h in e.lan_hosts))
        for e in registry.active(now) for s in e.servers
    )
    return firewall.Spec(cfg.queue_num, cfg.queue_count, cfg.packets, cfg.fail_closed, cfg.hooks, cfg.ipv6,
                         bypass, backend)


class _Signals:
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


class _RegistryWatch:
    """Reload the registry when its file changed (checked every tick) or on SIGHUP."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.mtime = self._mtime()

    def _mtime(self) -> float:
        try:
            return self.registry.path.stat().st_mtime if self.registry.path is not None else 0.0
        except OSError:
            return 0.0

    def check(self, force: bool) -> None:
        mtime = self._mtime()
        if force or mtime != self.mtime:
            self.registry.reload()
            self.mtime = mtime


class _Rules:
    """The installed rule set of this daemon, refreshed when the active registrations change."""

    def __init__(self, cfg: RunConfig, registry: Registry) -> None:
        self.cfg = cfg
        self.registry = registry
        self.backend, why = firewall.choose_backend(cfg.backend)
        log.info("firewall backend: %s (%s)", self.backend, why)
        self.spec = firewall_spec(cfg, registry, dt.datetime.now(dt.UTC), self.backend)

    def install(self) -> None:
        firewall.install(self.spec)

    def refresh(self) -> None:
        fresh = firewall_spec(self.cfg, self.registry, dt.datetime.now(dt.UTC), self.backend)
        if fresh != self.spec:
            firewall.install(fresh)
            self.spec = fresh
            log.info("rules refreshed: %d registered endpoints bypass the queue", len(fresh.bypass))


def _log_ready(cfg: RunConfig, spec: firewall.Spec, flags: list[bool | None]) -> None:
    if cfg.fail_closed:
        fo = "off (fail_closed)"
    else:
        fo = "on" if all(flags) else "FAILED" if False in flags else "unconfirmed"
    last = cfg.queue_num + cfg.queue_count - 1
    queues = f"queue {cfg.queue_num}" if cfg.queue_count == 1 else f"queues {cfg.queue_num}-{last}"
    log.info("ready: %s, first %d packets per connection, hooks %s, ipv6 %s, %d registered endpoints bypass "
             "the queue, kernel fail-open %s", queues, cfg.packets, ",".join(cfg.hooks),
             "on" if cfg.ipv6 else "off", len(spec.bypass), fo)


def _serve(cfg: RunConfig, registry: Registry, qnum: int, sig: _Signals,
           on_ready: Callable[[bool | None], None], on_tick: Callable[[], None]) -> None:
    """Bind one queue and handle its packets until a stop signal."""
    from tunnelwatch.nfqueue import Queue  # needs the compiled binding: only the daemon imports it

    enforcer = Enforcer(cfg, registry)
    nfq = Queue(qnum, enforcer.handle, firewall.MARK_MASK, maxlen=cfg.maxlen, fail_open=not cfg.fail_closed)
    try:
        on_ready(nfq.flags_ok)
        watch = _RegistryWatch(registry)
        qfd = nfq.fileno()
        next_tick = time.monotonic() + TICK
        while not sig.stop:
            ready, _, _ = select.select([qfd, sig.rfd], [], [], max(0.0, next_tick - time.monotonic()))
            if sig.rfd in ready:
                sig.drain()
            if qfd in ready:
                nfq.poll()
            if sig.hup or time.monotonic() >= next_tick:
                watch.check(sig.hup)
                sig.hup = False
                on_tick()
                next_tick = time.monotonic() + TICK
        log.info("stopping on signal %d: queue %d: %d packets seen, decisions %s", sig.stop, qnum,
                 nfq.packets, dict(enforcer.counts))
    finally:
        nfq.close()


def _worker(cfg: RunConfig, registry: Registry, qnum: int, results: ResultQueue) -> None:
    sig = _Signals()
    def ready(ok: bool | None) -> None:
        privileges.drop()  # the queue is bound: a worker never needs more than its netlink socket
        results.put((qnum, ok, ""))

    try:
        _serve(cfg, registry, qnum, sig, ready, lambda: None)
    except Exception as exc:
        results.put((qnum, False, f"queue {qnum}: {exc}"))
        raise SystemExit(1) from exc


def _run_workers(cfg: RunConfig, registry: Registry, sig: _Signals, rules: _Rules) -> None:
    """One worker process per queue; this process owns the rules and restarts dead workers."""
    ctx = mp.get_context("fork")
    results: ResultQueue = ctx.Queue()
    procs: dict[int, BaseProcess] = {}

    def start(q: int) -> None:
        procs[q] = ctx.Process(target=_worker, args=(cfg, registry, q, results), name=f"tunnelwatch-q{q}")
        procs[q].start()

    try:
        for q in range(cfg.queue_num, cfg.queue_num + cfg.queue_count):
            start(q)
        flags: list[bool | None] = []
        for _ in procs:
            try:
                _, ok, error = results.get(timeout=30)
            except queue.Empty:
                raise RuntimeError("a queue worker did not start within 30 s") from None
            if error:
                raise RuntimeError(error)
            flags.append(ok)
        rules.install()
        _log_ready(cfg, rules.spec, flags)
        privileges.drop()  # workers forked later (restarts) inherit the reduced sets
        watch = _RegistryWatch(registry)
        next_tick = time.monotonic() + TICK
        while not sig.stop:
            select.select([sig.rfd], [], [], 1.0)
            sig.drain()
            if sig.hup or time.monotonic() >= next_tick:
                for p in procs.values():
                    if sig.hup and p.pid is not None:
                        os.kill(p.pid, signal.SIGHUP)
                watch.check(sig.hup)
                sig.hup = False
                rules.refresh()
                next_tick = time.monotonic() + TICK
            for q, p in list(procs.items()):
                if not p.is_alive() and not sig.stop:
                    # --queue-bypass let its share of traffic through meanwhile
                    log.error("worker for queue %d died (exit %s): restarting it", q, p.exitcode)
                    start(q)
        log.info("stopping on signal %d", sig.stop)
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)


def run(cfg: RunConfig, registry: Registry) -> int:
    """Run until SIGTERM/SIGINT, then remove our rules; returns the exit code."""
    sig = _Signals()
    rules = _Rules(cfg, registry)
    try:
        if cfg.queue_count == 1:
            def ready(ok: bool | None) -> None:
                rules.install()  # only now: no packet is queued before someone listens
                _log_ready(cfg, rules.spec, [ok])
                privileges.drop()

            _serve(cfg, registry, cfg.queue_num, sig, ready, rules.refresh)
        else:
            _run_workers(cfg, registry, sig, rules)
    finally:
        firewall.remove()
        log.info("rules removed")
    return 0
