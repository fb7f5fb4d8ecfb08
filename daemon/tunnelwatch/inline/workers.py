"""Multi-queue mode: one worker process per NFQUEUE, supervised by the main process.

Owns the worker life cycle: start (the rules go in only once every worker has bound its queue), restart
of a dead worker (--queue-bypass carries its share of traffic meanwhile), reloaded configs handed to the
workers over a pipe each, and decisions sent back to the main process's status state over one bounded
queue that never blocks the packet path: when it is full the worker drops the record and reports how many
it dropped with the next one. The same queue carries each worker's figures once a second (STATS_EVERY):
its flow table's (summed by the main process into the status, and so the heartbeat: evictions), its
active VoIP calls, and its recent verdict latency samples (merged for the heartbeat's latency figures).
queue.flows bounds all workers together: each worker's table gets its share (so one host's flood, which
goes to one worker, fills at most that share).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import multiprocessing as mp
import queue
import select
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Final

from tunnelwatch.appliance import privileges
from tunnelwatch.appliance.appliance import Appliance
from tunnelwatch.config.runconfig import RunConfig
from tunnelwatch.inline import qstats
from tunnelwatch.inline.enforcer import Enforcer, Record
from tunnelwatch.inline.rules import Rules, log_ready
from tunnelwatch.inline.serve import serve
from tunnelwatch.inline.signals import Signals
from tunnelwatch.inline.supervisor import Supervisor
from tunnelwatch.policy.registry import Registry
from tunnelwatch.record import FlowRecord

if TYPE_CHECKING:
    from multiprocessing.queues import Queue as MPQueue

    ResultQueue = MPQueue[tuple[int, bool | None, str]]
    DecisionQueue = MPQueue[tuple[FlowRecord | dict[str, object], int]]

log = logging.getLogger(__name__)

DECISIONS_MAX: Final = 1024  # records in flight from workers to the main process
STATS_EVERY: Final = 1.0  # seconds between a worker's flow-table figures
_STATS: Final = "_flow_stats"  # the key that marks a figures record among decisions


def worker_config(cfg: RunConfig) -> RunConfig:
    """A worker's view of the config: its share of the flow-table bound (queue.flows is for all queues)."""
    return dataclasses.replace(cfg, flows=-(-cfg.flows // max(1, cfg.queue_count)))


def _worker(cfg: RunConfig, registry: Registry, qnum: int, results: ResultQueue, control: Connection,
            decisions: DecisionQueue) -> None:
    sig = Signals()
    dropped = 0

    def record(rec: FlowRecord) -> None:
        nonlocal dropped
        try:
            decisions.put_nowait((rec, dropped))
            dropped = 0
        except queue.Full:  # the main process is behind: the packet path never waits for status
            dropped += 1

    enforcer = Enforcer(worker_config(cfg), registry, record)
    # decisions nobody reports or shows one by one: counted here, sent with the figures (no record each)
    tallied: dict[tuple[str, str], int] = {}

    def tally(klass: str, action: str) -> None:
        tallied[(klass, action)] = tallied.get((klass, action), 0) + 1

    enforcer.tally = tally
    next_stats = 0.0

    def send_stats(block: bool = False) -> None:
        calls = enforcer.policy.active_calls(dt.datetime.now(dt.UTC))
        figures = {_STATS: enforcer.flow_stats(), "queue": qnum, "calls": calls,
                   "latency": list(qstats.recorder(qnum)),
                   "tally": [[k, a, n] for (k, a), n in tallied.items()]}
        try:
            decisions.put((figures, 0), block=block, timeout=1.0 if block else None)
        except queue.Full:  # the next figures come a second later; the tally waits for them
            return
        tallied.clear()

    def ready(ok: bool | None) -> None:
        privileges.drop()  # the queue is bound: a worker never needs more than its netlink socket
        results.put((qnum, ok, ""))

    def wake(ready_fds: list[int]) -> None:
        nonlocal next_stats
        sig.hup = False  # reloads come from the main process, over the control pipe
        if time.monotonic() >= next_stats:
            next_stats = time.monotonic() + STATS_EVERY
            send_stats()
        if control.fileno() in ready_fds:
            try:
                new_cfg, new_reg = control.recv()
            except (EOFError, OSError):
                sig.stop = signal.SIGTERM  # the main process is gone
                return
            enforcer.apply(worker_config(new_cfg), new_reg)

    try:
        serve(enforcer, qnum, sig, ready, [control.fileno()], lambda: 5.0, wake)
        send_stats(block=True)  # the last second's counts, before the main process writes its last heartbeat
    except Exception as exc:
        results.put((qnum, False, f"queue {qnum}: {exc}"))
        raise SystemExit(1) from exc


class _Workers:
    """One worker process per queue: started, fed new configs, drained of decisions, restarted."""

    def __init__(self, cfg: RunConfig, registry: Registry) -> None:
        self.ctx = mp.get_context("fork")
        self.cfg, self.registry = cfg, registry
        self.results: ResultQueue = self.ctx.Queue()
        self.decisions: DecisionQueue = self.ctx.Queue(DECISIONS_MAX)
        self.procs: dict[int, tuple[BaseProcess, Connection]] = {}

    def start(self, q: int) -> None:
        """(Re)start the worker of queue q with the current config."""
        recv, send = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=_worker, name=f"tunnelwatch-q{q}",
                             args=(self.cfg, self.registry, q, self.results, recv, self.decisions))
        p.start()
        recv.close()
        self.procs[q] = (p, send)

    def push(self, cfg: RunConfig, registry: Registry) -> None:
        """Hand a reloaded config / registry to every worker (and to the ones started later)."""
        self.cfg, self.registry = cfg, registry
        for q, (_, send) in self.procs.items():
            try:
                send.send((cfg, registry))
            except OSError as exc:  # a dead worker: restarted below with the new config
                log.warning("queue %d worker: cannot send the new config: %s", q, exc)

    def drain(self, record: Record, dropped: Callable[[int], None],
              stats: Callable[[int, dict[str, object]], None] = lambda q, f: None) -> None:
        """Take the decisions (and flow-table figures) the workers sent (bounded per call)."""
        for _ in range(DECISIONS_MAX):
            try:
                rec, lost = self.decisions.get_nowait()
            except queue.Empty:
                return
            if lost:
                dropped(lost)
            if isinstance(rec, FlowRecord):
                record(rec)
                continue
            q = rec.get("queue")
            if isinstance(rec.get(_STATS), dict):
                stats(q if isinstance(q, int) else 0, rec)

    def stop(self) -> None:
        """Terminate and reap every worker."""
        for p, send in self.procs.values():
            p.terminate()
            send.close()
        for p, _ in self.procs.values():
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)


def run_workers(cfg: RunConfig, sig: Signals, rules: Rules, sup: Supervisor, app: Appliance) -> None:
    """Start the workers, install the rules once all are bound, then supervise until a stop signal."""
    w = _Workers(cfg, rules.registry)
    sup.apply_path = w.push
    per_queue: dict[int, dict[str, int]] = {}
    calls: dict[int, int] = {}

    def stats(q: int, rec: dict[str, object]) -> None:
        figures, latency, active = rec[_STATS], rec.get("latency"), rec.get("calls")
        tallied = rec.get("tally")
        for item in tallied if isinstance(tallied, list) else []:
            if isinstance(item, list) and len(item) == 3 and isinstance(item[2], int):
                sup.tally(str(item[0]), str(item[1]), item[2])
        if isinstance(figures, dict):  # a restarted worker starts from 0 again: its old figures are replaced
            per_queue[q] = {k: v for k, v in figures.items() if isinstance(v, int)}
        if isinstance(latency, list):
            qstats.load(q, latency)  # read by the heartbeat (Reporter's latency over every queue)
        calls[q] = active if isinstance(active, int) else 0
        total: dict[str, int] = {}
        for f in per_queue.values():
            for k, v in f.items():
                total[k] = total.get(k, 0) + v
        app.state.set(flows=total, voip_calls=sum(calls.values()))

    try:
        for q in range(cfg.queue_num, cfg.queue_num + cfg.queue_count):
            w.start(q)
        flags: list[bool | None] = []
        for _ in w.procs:
            try:
                _, ok, error = w.results.get(timeout=30)
            except queue.Empty:
                raise RuntimeError("a queue worker did not start within 30 s") from None
            if error:
                raise RuntimeError(error)
            flags.append(ok)
        app.start_status()  # after the fork: workers do not inherit the status threads
        if sup.reporter is not None:
            sup.reporter.start()  # likewise: the spool connection and report threads stay in this process
        if sup.syncer is not None:
            sup.syncer.start(cfg)
        rules.install()
        log_ready(cfg, rules.spec, flags)
        privileges.drop()  # workers forked later (restarts) inherit the reduced sets
        sup.ready()
        while not sig.stop:
            select.select([sig.rfd], [], [], min(0.5, sup.timeout()))
            sig.drain()
            sup.hup, sig.hup = sup.hup or sig.hup, False
            w.drain(sup.record, lambda n: app.state.count("decisions_dropped", n), stats)
            sup.wake()
            dead = [q for q, (p, _) in w.procs.items() if not p.is_alive()]
            for q in dead if not sig.stop else []:
                # --queue-bypass let its share of traffic through meanwhile
                log.error("worker for queue %d died (exit %s): restarting it", q, w.procs[q][0].exitcode)
                app.state.count("worker_restarts")
                w.start(q)
        log.info("stopping on signal %d", sig.stop)
    finally:
        w.stop()
        # what the workers sent while stopping (their last counts): the stop heartbeat includes it
        w.drain(sup.record, lambda n: app.state.count("decisions_dropped", n), stats)
