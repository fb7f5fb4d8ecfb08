"""`tunnelwatch run`: the inline daemon's life cycle and its per-packet decision path.

Start: load config and registry (exit 78 when invalid), start the status socket, bind the queue, then
install the rules (so no packet is queued before someone listens) and only then tell systemd READY=1.
Run: each queued packet goes parse -> engine -> policy (enforcer.py), and the flow's decision is returned
as mark bits the kernel saves in the connmark. SIGHUP reloads config and registry (supervisor.py);
SIGTERM/SIGINT send STOPPING=1, remove our rules and exit 0. A kill -9 leaves the rules, but
--queue-bypass keeps traffic flowing and the next start re-installs them without duplicates. Before any
thread starts, every capability but CAP_NET_ADMIN / CAP_NET_RAW is dropped (see privileges.py): the
capability sets are per thread, so every thread of the daemon has only those two. Endpoint lists
(endpoints.py) are loaded at start (a bad one exits 78), re-read on every reload and whenever a list file
changes (checked every `endpoints.watch` seconds, between packets).

With several queues, one worker process per queue handles packets (workers.py); the main process owns the
rules, the supervisor and the status state.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Final

from tunnelwatch.appliance import privileges
from tunnelwatch.appliance.appliance import Appliance
from tunnelwatch.appliance.service import Notifier
from tunnelwatch.classify.endpoints import Endpoints
from tunnelwatch.config.runconfig import ConfigError, RunConfig
from tunnelwatch.inline import firewall
from tunnelwatch.inline.enforcer import QUIET_S, Enforcer, Record
from tunnelwatch.inline.kernelstats import KernelStats
from tunnelwatch.inline.supervisor import Supervisor
from tunnelwatch.policy.registry import Registry
from tunnelwatch.report.reporter import Reporter

log = logging.getLogger("tunnelwatch")

EX_CONFIG: Final = 78
__all__ = ["EX_CONFIG", "QUIET_S", "Enforcer", "Record", "Rules", "Signals", "firewall_spec", "log_ready",
           "run", "serve"]


def firewall_spec(cfg: RunConfig, registry: Registry, now: dt.datetime, backend: str = "iptables"
                  ) -> firewall.Spec:
    """Rules for this config; registrations valid now become queue bypasses (any protocol to them)."""
    bypass = tuple(
        firewall.Bypass(str(s.net), s.ports, tuple(str(h) for h in e.lan_hosts))
        for e in registry.active(now) for s in e.servers
    )
    return firewall.Spec(cfg.queue_num, cfg.queue_count, cfg.packets, cfg.fail_closed, cfg.hooks, cfg.ipv6,
                         bypass, backend, cfg.deep, cfg.new_flow_rate, cfg.new_flow_burst)


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
    from tunnelwatch.inline.nfqueue import Queue  # needs the compiled binding: only the daemon imports it

    cfg = enforcer.cfg
    nfq = Queue(qnum, enforcer.handle, firewall.MARK_MASK | firewall.MARK_PENDING, maxlen=cfg.maxlen,
                fail_open=not cfg.fail_closed)
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
    kstats = KernelStats(rules, app.state, sup.event)  # fail-open and flood counters, off the packet path
    # Capabilities are per thread, and a thread starts with its creator's: drop them now, before the
    # status, reporter and stats threads (and every HTTP request thread they spawn) exist. What is left
    # (CAP_NET_ADMIN, CAP_NET_RAW) binds the queue and installs the rules below.
    privileges.drop()
    try:
        kstats.start()
        if cfg.queue_count == 1:
            enforcer.record = sup.record
            app.start_status()
            reporter.start()

            def ready(ok: bool | None) -> None:
                rules.install()  # only now: no packet is queued before someone listens
                log_ready(cfg, rules.spec, [ok])
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
            from tunnelwatch.inline.workers import run_workers

            run_workers(cfg, sig, rules, sup, app)
    finally:
        notifier.stopping()
        app.state.set(health="stopping")
        kstats.stop()
        reporter.stop(f"signal {signal.Signals(sig.stop).name}" if sig.stop else "error")
        app.stop()
        firewall.remove()
        log.info("rules removed")
    return 0
