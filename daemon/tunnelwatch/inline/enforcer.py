"""The daemon's per-packet path: parse -> engine -> policy, and each flow's decision as connmark bits.

Owns the mapping from a policy decision to the kernel's mark (firewall.MARK_*) and the rule that nothing
is allowed for good on a guess: a flow whose verdict is not settled (unknown, or short of `confirmed`) and
that the policy does not block gets WATCH, not ALLOW. The kernel keeps queueing such connections in later
windows (firewall.py); when one of their packets arrives the engine re-opens the flow (Engine.reopen) and
decides it again. A tunnel confirmed late is then blocked: by the verdict's mark, or, for a decision made
after the flow went quiet, by updating its conntrack entry (firewall.mark_connection). Re-decisions are
logged and recorded (reported) only when they change something. See docs/enforcement.md.

Cheap on purpose (docs/performance.md, "CPU per flow after the cut"): an exact retransmission of the last
queued TCP segment (same sender, sequence number and bytes) gets the flow's mark without being classified
again; the quiet rule runs at most every TICK_S; a decision nobody reports or shows (allowed, not flagged,
not registered) is only counted (`tally`), without building a record.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import time
from collections.abc import Callable
from typing import Final

from tunnelwatch.classify.endpoints import Endpoints
from tunnelwatch.classify.engine import Engine
from tunnelwatch.classify.flow import Flow, FlowKey, flow_key
from tunnelwatch.classify.packet import Packet, addr_text, parse_ip, transport_name
from tunnelwatch.config.runconfig import RunConfig
from tunnelwatch.inline import firewall
from tunnelwatch.inline.decoy import DECOY_TTL, Decoys
from tunnelwatch.policy.policy import Decision, Policy
from tunnelwatch.policy.registry import Registry
from tunnelwatch.record import FlowRecord
from tunnelwatch.verdict import FLAGGED, Verdict

log = logging.getLogger(__name__)

#: an undecided flow that saw no queued packet for this long is decided on what was seen (Engine.decide_quiet)
QUIET_S: Final = 2.0
FULL_GC_EVERY: Final = 3600.0  # seconds between full garbage collections on the packet path
#: a full collection's pause grows with the live objects, most of them flows: ~4 us per flow here,
#: ~14 us on a Pi 4 (docs/performance.md); above this many flows it waits (42 ms on a Pi 4)
FULL_GC_MAX_FLOWS: Final = 3000
FULL_GC_RETRY: Final = 60.0  # seconds until a postponed full collection looks again
#: seconds between the young collections tick() asks for (see tick)
YOUNG_GC_S: Final = 0.02
#: re-opens per flow at most: a safety bound only, the kernel's windows bound the queued packets already
REOPENS: Final = 64
_FINAL: Final = frozenset({firewall.MARK_ALLOW, firewall.MARK_DROP, firewall.MARK_REJECT})
#: a queued TCP packet this close (either way, in sequence space) to the last one seen from its side
#: belongs to the same connection: packets queued before the decision reached the connmark
SEQ_WINDOW: Final = 1 << 20
#: other transports: a packet this long after the last one of a finally decided flow is a new connection
REUSE_GAP_S: Final = 2.0
#: UDP payload sizes of WireGuard's handshake initiation and response (rulespec.HANDSHAKE_LENGTHS)
HANDSHAKE_PAYLOADS: Final = frozenset({148, 92})
MAX_RENEWED: Final = 4096  # renewed decisions remembered at most (each is dropped at the next decision)
#: seconds between two runs of the work done between packets (quiet rule, list files, GC): not per wake-up
TICK_S: Final = 0.1
#: quiet flows decided per tick at most: at 2,000 new flows/s a tick had ~200 to decide, a 1.7-1.9 ms stall of
#: the queue every 100 ms (about 6 ms on a Pi 4); the rest waits for the next wake-up (`quiet_backlog`)
QUIET_BATCH: Final = 32
Record = Callable[[FlowRecord], None]
#: (klass, action) of a decision that is only counted: allowed, not flagged, not registered
Tally = Callable[[str, str], None]


def _deep(cfg: RunConfig) -> dict[tuple[int, int], int]:
    return {(6 if t == "tcp" else 17, port): n for t, port, n in cfg.deep}


def _segment(pkt: Packet) -> int:
    """A TCP payload segment's fingerprint: its sender's side, sequence number and bytes (Flow.last_seg).

    hash() of bytes is SipHash with a key drawn at interpreter start: a sender cannot make other bytes
    hash the same, so a decoy (e.g. a low-TTL segment with benign bytes, then the tunnel's bytes under the
    same sequence number) is classified again; only the very same segment is not. The bytes' hash covers
    their length. The sequence number, port and side are XORed in: a collision stays a 2**-64 chance.
    """
    return hash(pkt.payload) ^ (pkt.seq << 17 | pkt.sport << 1 | (pkt.src < pkt.dst))


def mark_for(d: Decision, watch: bool) -> int:
    """The connmark decision bits for a policy decision; `watch`: the verdict is not settled yet."""
    if d.action == "block":
        return firewall.MARK_REJECT if d.reject else firewall.MARK_DROP
    return firewall.MARK_WATCH if watch else firewall.MARK_ALLOW


class Enforcer:
    """The per-packet path: classify, decide per flow (again while watched), remember the flow's mark."""

    def __init__(self, cfg: RunConfig, registry: Registry, record: Record | None = None,
                 endpoints: Endpoints | None = None) -> None:
        self.cfg = cfg
        self.policy = Policy.from_config(cfg)
        self.registry = registry
        self.record = record
        #: decisions nobody reports or shows go here instead of `record` when set (Supervisor.tally)
        self.tally: Tally | None = None
        self.endpoints = endpoints if endpoints is not None else Endpoints(cfg.endpoints)
        self.engine = Engine(budget=cfg.packets, max_flows=cfg.flows, on_decided=self._decided,
                             on_end=self._ended, deep=_deep(cfg), reopens=REOPENS)
        self._use_lists()
        self.unparsed = 0  # queued packets that are not IP we can read (counted, then accepted)
        self._evictions_seen = 0
        self.next_watch = time.monotonic() + cfg.endpoints.watch
        self.next_full_gc = time.monotonic() + FULL_GC_EVERY
        self.marks: dict[FlowKey, int] = {}
        self.counts: dict[str, int] = {}
        self.late_blocks = 0  # blocks decided after a flow was first let through under WATCH
        self.reused = 0  # new connections on the 5-tuple of a finally decided flow: classified afresh
        self.retransmits = 0  # exact TCP retransmissions answered with the flow's mark, not classified
        self.decoys = Decoys(cfg.report.privacy.subscriber_nets)  # LAN hosts' low-TTL fakes: not classified
        self.next_tick = 0.0  # time.monotonic() of the next tick() that does its work
        self.next_young_gc = 0.0
        #: the last tick left quiet flows undecided (QUIET_BATCH): the queue loop must not sleep on them
        self.quiet_backlog = False
        #: decisions of flows renewed by a handshake-sized datagram, until the new flow's first decision
        self._renewed: dict[FlowKey, tuple[str, ...]] = {}

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
            self.decoys.use(cfg.report.privacy.subscriber_nets)
            policy = Policy.from_config(cfg)
            if cfg.voip == self.cfg.voip:
                policy.calls = self.policy.calls  # the bulk-VoIP window survives unrelated changes
            self.policy = policy
            self.engine.budget = cfg.packets
            self.engine.table.max_flows = cfg.flows  # a smaller table shrinks as new flows arrive
            self.engine.deep = _deep(cfg)
        self.cfg, self.registry = cfg, registry

    def tick(self) -> None:
        """Between packets, at most every TICK_S: the quiet rule, endpoint list files that changed (every
        `endpoints.watch` seconds), the hourly full collection."""
        now = time.monotonic()
        if now >= self.next_young_gc:
            # CPython starts a young collection when allocations minus deallocations pass 700. With a full
            # or expiring table every new flow's objects are balanced by an old flow's freed ones, so that
            # count stays low while the youngest generation grows: one collection then walked every object
            # made since the last, 44-84 ms at 2,000 new flows/s (docs/performance.md). Collecting the two
            # young generations on a clock bounds each walk to 20 ms of allocations, and moves what
            # survives to the oldest generation, which only the hourly full collection looks at.
            self.next_young_gc = now + YOUNG_GC_S
            gc.collect(1)
        if now < self.next_tick:
            return  # called after every wake-up of the queue loop: under load that is every few packets
        self.next_tick = now + TICK_S
        watch = self.cfg.endpoints.watch
        if watch and self.cfg.endpoints.lists and now >= self.next_watch:
            self.next_watch = now + watch
            if self.endpoints.check():
                self._use_lists()
        self._decide_quiet()
        if self.quiet_backlog:
            self.next_tick = now  # the next wake-up goes on with it, after the packets waiting by then
        if now >= self.next_full_gc and len(self.engine.table) > FULL_GC_MAX_FLOWS:
            # a busy table would stall the packets for too long: later, when the table is smaller (flow
            # state is free of reference cycles and is freed without the collector; docs/performance.md)
            self.next_full_gc = now + FULL_GC_RETRY
        elif now >= self.next_full_gc:
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

    def _new_connection_on_old_tuple(self, pkt: Packet, key: FlowKey, old: Flow) -> None:
        """End a finally decided flow when this packet belongs to a new connection on its 5-tuple.

        The kernel queues no packet of a connection whose connmark holds a final decision, so a queued
        packet for such a flow is either one queued before the decision reached the connmark (same
        connection: close in TCP sequence space, or within moments) or a new conntrack entry on the same
        5-tuple, e.g. a client that closed an allowed HTTP connection and reopened the tuple for a
        tunnel. The new connection must be classified, not inherit the old decision.
        """
        mark = self.marks.get(key)
        if mark not in _FINAL:
            return
        if mark == firewall.MARK_ALLOW and pkt.proto == 17 and len(pkt.payload) in HANDSHAKE_PAYLOADS:
            # the kernel queues these on a UDP connection allowed for good only because of their size
            # (rulespec: a tunnel started on the 5-tuple of an allowed flow): look at them afresh at once,
            # since the tunnel's packets may follow the old flow's without any gap. A registered tunnel's
            # own re-handshake (every 2 minutes) comes the same way: decided the same again, it is not
            # logged or reported again (_decided)
            if old.decided_as is not None:
                if len(self._renewed) >= MAX_RENEWED:
                    self._renewed.clear()
                self._renewed[key] = old.decided_as
            self._renew(old, key)
            return
        ref = old.seq[old.direction(pkt)] if pkt.proto == 6 and old.seq is not None else -1
        if pkt.proto == 6 and not pkt.payload:
            return
        if ref >= 0 and pkt.seq >= 0:
            if min((pkt.seq - ref) % (1 << 32), (ref - pkt.seq) % (1 << 32)) < SEQ_WINDOW:
                return  # the same connection, queued before its decision reached the kernel
        elif pkt.ts - old.last_ts < REUSE_GAP_S:
            return
        self._renew(old, key)

    def _renew(self, old: Flow, key: FlowKey) -> None:
        self.reused += 1
        log.debug("new connection on the 5-tuple of a decided flow: %s: classified afresh", old.describe())
        self.engine.table.end(key, "reused")

    def _decide_quiet(self) -> None:
        debug = log.isEnabledFor(logging.DEBUG)  # the flow's text is not built for a line nobody sees
        decided = self.engine.decide_quiet(time.time(), QUIET_S, QUIET_BATCH)
        self.quiet_backlog = len(decided) == QUIET_BATCH
        for flow in decided:
            bits = self.marks.get(flow.key, 0)
            if debug:
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
                "unparsed_packets": self.unparsed, "reopened": self.engine.reopened,
                "late_blocks": self.late_blocks, "reused": self.reused, "retransmits": self.retransmits,
                "decoys": self.decoys.count}

    def handle(self, payload: bytes) -> int:
        """Mark bits for one queued packet: the flow's decision, WATCH, or 0 while it is undecided."""
        pkt = parse_ip(payload, time.time())
        if pkt is None:
            self.unparsed += 1
            return 0
        proto = pkt.proto
        seg = None
        if proto == 6 or proto == 17:
            key = flow_key(pkt)
            # the TTL / hop limit as this box forwards it: the rest of the test only on a low one
            if pkt.ttl < DECOY_TTL and self.decoys.suspect(pkt):
                self.decoys.hold(key, pkt)  # accepted; classified or not when the flow's next packet comes
                old = self.engine.table.peek(key)
                return self._mark(old) if old is not None else 0
            if self.decoys.held and key in self.decoys.held:
                self._judge(key, pkt)
            old = self.engine.table.peek(key)
            if old is not None:
                if proto == 6 and pkt.payload:
                    seg = _segment(pkt)
                    if seg == old.last_seg:
                        # the same segment again (its first copy was overtaken, e.g. by a FIN): the
                        # classifiers read it already; not counted, and a watched flow is not re-opened
                        self.retransmits += 1
                        return self._mark(old)
                if self.marks:
                    self._new_connection_on_old_tuple(pkt, key, old)
        flow = self.engine.process(pkt)
        if proto == 6 and pkt.payload:
            flow.last_seg = seg if seg is not None else _segment(pkt)
        return self._mark(flow)

    def _judge(self, key: FlowKey, pkt: Packet) -> None:
        """The flow's held low-TTL packets, judged by `pkt`: the genuine ones classified first, in order."""
        before = self.decoys.count
        held = self.decoys.held[key][0]
        for p in self.decoys.release(key, pkt):
            flow = self.engine.process(p)
            if p.proto == 6 and p.payload:
                flow.last_seg = _segment(p)
        if self.decoys.count == before:
            return
        # the first in full at INFO (an operator wants to know the trick is being tried), later ones at
        # DEBUG: one host's tool sends one before every connection
        level = logging.INFO if before == 0 else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "ignored a decoy: %s:%d -> %s:%d %s with TTL %d, followed by TTL %d: sent to "
                    "expire before its destination (not classified; %d so far)", addr_text(held.src),
                    held.sport, addr_text(held.dst), held.dport, transport_name(held.proto), held.ttl,
                    pkt.ttl, self.decoys.count)

    def _mark(self, flow: Flow) -> int:
        bits = self.marks.get(flow.key)
        if bits is not None:
            if bits == firewall.MARK_WATCH and flow.done and not flow.watch and not flow.follow_left:
                # kept queued only for its followers (SDP), which have all they wanted: allow for good
                bits = self.marks[flow.key] = firewall.MARK_ALLOW
            return bits
        # done without a decision: no classifier wants this transport (ICMP, ...): nothing to inspect
        return firewall.MARK_ALLOW if flow.done else 0

    def _decided(self, flow: Flow, verdict: Verdict) -> None:
        d = self.policy.decide(flow, verdict, self.registry, dt.datetime.now(dt.UTC))
        registered = d.registration is not None
        if d.action == "block" or registered:
            flow.watch = 0  # nothing left to learn that would change what happens to it
        bits = mark_for(d, flow.watch > 0 or flow.follow_left > 0)
        previous = self.marks.get(flow.key)
        self.marks[flow.key] = bits
        verb = "block(reject)" if d.reject else d.action
        what = (verdict.klass, verdict.protocol, verdict.confidence, verb)
        if flow.decided_as is None and self._renewed.pop(flow.key, None) == what:
            flow.decided_as = what  # the same decision as the flow its handshake-sized datagram renewed
        if flow.decided_as == what:
            return  # re-decided the same after a re-open or a renewal: already logged and reported
        flow.decided_as = what
        if previous == firewall.MARK_WATCH and d.action == "block":
            self.late_blocks += 1
        self.counts[d.action] = self.counts.get(d.action, 0) + 1
        level = logging.INFO if verdict.flagged else logging.DEBUG
        if d.bulk:
            level = logging.WARNING  # the grey-traffic signature: the operator must see it
        if log.isEnabledFor(level):  # the line's text costs more than the rest of the decision
            self._log(flow, verdict, d, level, verb, bits)
        if self.tally is not None and d.action == "allow" and not registered and verdict.klass not in FLAGGED:
            # what status (recent list) and reporting (events, IPFIX) do with such a record: count it
            self.tally(verdict.klass, d.action)
            return
        if self.record is not None:
            self.record(FlowRecord(
                time.time(), addr_text(flow.src), flow.sport, addr_text(flow.dst), flow.dport,
                transport_name(flow.proto), verdict.klass, verdict.protocol, verdict.confidence, d.action,
                d.reason, verdict.evidence, d.bulk, d.registration, flow.packets, flow.bytes, flow.first_ts,
                flow.last_ts))

    @staticmethod
    def _log(flow: Flow, verdict: Verdict, d: Decision, level: int, verb: str, bits: int) -> None:
        desc = flow.describe()
        again = f" (re-opened {flow.reopens}x)" if flow.reopens else ""
        watched = " watched" if bits == firewall.MARK_WATCH else ""
        log.log(level, "decided %s %s %s %s%s %s (%s)%s%s", verdict.klass, verdict.protocol,
                verdict.confidence, verb, watched, desc, d.reason, again,
                f" [{'; '.join(verdict.evidence[:3])}]" if verdict.evidence else "",
                extra={"FLOW": desc, "KLASS": verdict.klass, "PROTOCOL": verdict.protocol, "VERDICT": verb,
                       "CONFIDENCE": verdict.confidence})

    def _ended(self, flow: Flow, verdict: Verdict) -> None:
        self.marks.pop(flow.key, None)
        self.policy.ended(flow)  # a call whose flow ended no longer counts towards bulk VoIP
