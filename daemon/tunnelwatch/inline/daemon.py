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
import signal
import time
from pathlib import Path
from typing import Final

from tunnelwatch.appliance import privileges
from tunnelwatch.appliance.appliance import Appliance
from tunnelwatch.appliance.service import Notifier
from tunnelwatch.classify.endpoints import Endpoints
from tunnelwatch.config.runconfig import ConfigError, RunConfig
from tunnelwatch.inline import firewall, qstats
from tunnelwatch.inline.enforcer import Enforcer
from tunnelwatch.inline.kernelstats import KernelStats
from tunnelwatch.inline.rules import Rules, log_ready
from tunnelwatch.inline.serve import serve
from tunnelwatch.inline.signals import Signals
from tunnelwatch.inline.supervisor import Supervisor
from tunnelwatch.inline.workers import run_workers
from tunnelwatch.policy.registry import Registry
from tunnelwatch.policy.syncer import RegistrySyncer
from tunnelwatch.report.reporter import Reporter

log = logging.getLogger(__name__)

EX_CONFIG: Final = 78


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
    device_id = str(app.state.snapshot()["device_id"])
    reporter = Reporter(cfg, app.state, device_id, qstats.summary_ms)
    syncer = RegistrySyncer(app.state, device_id, reporter.event, lambda: _poke(sig.wfd))
    reporter.registry_sink = syncer.offer  # registry documents an MQTT broker pushes, verified by the syncer
    sup = Supervisor(cfg, registry, path, rules, app, notifier, enforcer.apply, reporter=reporter,
                     syncer=syncer, verbose=verbose)
    kstats = KernelStats(rules, app.state, sup.event)  # fail-open and flood counters, off the packet path
    # Capabilities are per thread, and a thread starts with its creator's: drop them now, before the
    # status, reporter and stats threads (and every HTTP request thread they spawn) exist. What is left
    # (CAP_NET_ADMIN, CAP_NET_RAW) binds the queue and installs the rules below.
    privileges.drop()
    try:
        kstats.start()
        if cfg.queue_count == 1:
            enforcer.record = sup.record
            enforcer.tally = sup.tally  # decisions nobody reports or shows: counted, no record built
            app.start_status()
            reporter.start()
            syncer.start(cfg)

            def ready(ok: bool | None) -> None:
                rules.install()  # only now: no packet is queued before someone listens
                log_ready(cfg, rules.spec, [ok])
                sup.ready()

            next_stats = 0.0

            def wake(ready_fds: list[int]) -> None:
                nonlocal next_stats
                if sig.hup:
                    sup.hup, sig.hup = True, False
                now = time.monotonic()
                # runs after every select, so at low load per packet: the supervisor only when it has
                # something to do (periodic work due, a reload, or a sync thread's poke on sig's pipe)
                if sup.hup or now >= sup.due or sig.rfd in ready_fds:
                    sup.wake()
                if now >= next_stats:  # status figures: cheap, but not per packet
                    next_stats = now + 1.0
                    app.state.set(flows=enforcer.flow_stats(),
                                  voip_calls=enforcer.policy.active_calls(dt.datetime.now(dt.UTC)))

            serve(enforcer, cfg.queue_num, sig, ready, [], sup.timeout, wake)
        else:
            run_workers(cfg, sig, rules, sup, app)
    finally:
        sup.flush_tally()  # the last second's counted-only decisions, for the stop heartbeat and status
        notifier.stopping()
        app.state.set(health="stopping")
        kstats.stop()
        syncer.stop()
        reporter.stop(f"signal {signal.Signals(sig.stop).name}" if sig.stop else "error")
        app.stop()
        firewall.remove()
        log.info("rules removed")
    return 0
