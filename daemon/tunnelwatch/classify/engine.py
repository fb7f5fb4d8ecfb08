"""The classification engine: packets in, per-flow verdicts out.

Feeds each new flow's first packets (up to a budget) to the classifiers that want its transport, keeps
the best verdict, stops early on a confirmed tunnel/VoIP verdict, and falls back to the operator's endpoint
lists (confidence "list") and then to port hints. The same engine runs offline (`tunnelwatch classify`) and
inline behind NFQUEUE.

Re-opening (inline: `reopens` > 0): a decision that is not settled (unknown, or any verdict short of
`confirmed`) leaves the flow watched. When a packet of a watched flow arrives later (the kernel queues
such connections again in later windows, see firewall.py), `reopen()` gives it a fresh look: every
classifier of its transport with fresh state and a small budget (`reopen_budget` packets), or, when the
flow was only decided because it went quiet before its budget, the same classifiers and state resumed
(a late reply completes the handshake they saw). The new decision goes through `on_decided` again.
Classifiers can tell a re-opened flow by `flow.reopens` > 0 (its first packets are mid-session).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from tunnelwatch.classify import load_classifiers
from tunnelwatch.classify.base import DONE, REJECT, UNKNOWN, Classifier, Context, Verdict
from tunnelwatch.classify.endpoints import EndpointIndex
from tunnelwatch.classify.flow import NO_STATE, Flow, FlowKey
from tunnelwatch.classify.flowtable import FlowTable
from tunnelwatch.classify.packet import Packet

log = logging.getLogger(__name__)

#: packets per flow given to classifiers offline (`tunnelwatch classify`)
DEFAULT_BUDGET: Final = 24
#: the daemon's default queue.packets: the engine's budget inline, and the kernel's first window from it
INLINE_BUDGET: Final = 16
#: (transport, server port, packets): SSH forwarding shows only after the login, ~30 packets in
SSH_DEEP: Final = ("tcp", 22, 96)
#: flows to these (ip proto, server port) get a larger budget
DEFAULT_DEEP: Final[dict[tuple[int, int], int]] = {(6, SSH_DEEP[1]): SSH_DEEP[2]}
#: packets a re-opened flow is looked at before it is decided again
REOPEN_BUDGET = 8
#: distinct tuples of surviving classifiers shared between flows (see Engine._shared)
_SURVIVORS_MAX: Final = 4096
#: a transport's classifiers that may want a fresh flow, each with its first-payload test (None: no test)
_Tests = tuple[tuple[Classifier, Callable[[Packet, int], bool] | None], ...]


def _best_of(verdicts: Iterable[Verdict]) -> Verdict | None:
    best: Verdict | None = None
    for v in verdicts:
        if v.beats(best):
            best = v
    return best


def _first_table(t: int, cs: Sequence[Classifier]) -> list[_Tests]:
    """Transport t's 256 rows by first payload byte (identical rows are one tuple: cheap to build, as
    offline each capture file gets its own engine)."""
    full = [(c, c.first if t in c.first_on else None) for c in cs]
    gated = [(i, c.first_bytes[t]) for i, c in enumerate(cs) if t in c.first_bytes]
    rows: dict[tuple[int, ...], _Tests] = {}

    def row(out: tuple[int, ...]) -> _Tests:
        r = rows.get(out)
        if r is None:
            r = rows[out] = tuple(e for i, e in enumerate(full) if i not in out)
        return r

    table = [row(tuple(i for i, _ in gated))] * 256  # a byte no classifier listed rules out every gated one
    for b in set().union(*(allowed for _, allowed in gated)):
        table[b] = row(tuple(i for i, allowed in gated if b not in allowed))
    return table


class Engine:
    """Classify flows from packets. `on_end(flow, verdict)` is called exactly once per flow."""

    def __init__(
        self,
        classifiers: Sequence[Classifier] | None = None,
        *,
        budget: int = DEFAULT_BUDGET,
        idle_timeout: float = 120.0,
        max_flows: int = 262_144,
        on_end: Callable[[Flow, Verdict], None] | None = None,
        on_decided: Callable[[Flow, Verdict], None] | None = None,
        endpoints: EndpointIndex | None = None,
        deep: dict[tuple[int, int], int] | None = None,
        reopens: int = 0,
        reopen_budget: int = REOPEN_BUDGET,
    ) -> None:
        if budget < 1:
            raise ValueError("budget must be at least 1 packet")
        self.classifiers = list(classifiers) if classifiers is not None else load_classifiers()
        names = [c.name for c in self.classifiers]
        if len(set(names)) != len(names):  # per-flow state is keyed by name: two would share it
            raise ValueError(f"classifier names must be unique: {sorted(names)}")
        self.budget = budget
        self.ctx = Context()
        self.on_end = on_end
        self.on_decided = on_decided
        #: operator endpoint lists; replaced as a whole on reload (the daemon swaps in a new index)
        self.endpoints = endpoints
        #: (ip proto, server port) -> a larger budget for flows to that port (SSH forwarding shows late)
        self.deep = dict(DEFAULT_DEEP if deep is None else deep)
        #: times an unsettled flow may be re-opened (0: decisions are final, as offline)
        self.reopens = reopens
        self.reopen_budget = reopen_budget
        self.reopened = 0
        self.table = FlowTable(idle_timeout, max_flows, self._ended)
        self._by_proto: dict[int, tuple[Classifier, ...]] = {}
        for c in self.classifiers:
            for t in c.transports:
                self._by_proto[t] = (*self._by_proto.get(t, ()), c)
        # per transport that has any, by the first payload byte: (classifier, its first-payload test or
        # None) in the transport's order, without those whose first_bytes rule that byte out
        self._tests: dict[int, list[_Tests]] = {}
        for t, cs in self._by_proto.items():
            if any(t in c.first_on for c in cs):
                self._tests[t] = _first_table(t, cs)
        self._ports: dict[tuple[int, int], Classifier] = {}
        for c in self.classifiers:
            for pp in c.ports:
                self._ports.setdefault(pp, c)
        self.packets = 0
        self.classifier_errors = 0
        self._error_logged: set[str] = set()
        # undecided flows, least recently seen first: see decide_quiet()
        self._undecided: OrderedDict[FlowKey, Flow] = OrderedDict()
        self._survivors: dict[tuple[Classifier, ...], tuple[Classifier, ...]] = {}

    def process(self, pkt: Packet) -> Flow:
        """Account one packet to its flow and classify it if the flow is still undecided."""
        self.packets += 1
        flow, created = self.table.get(pkt)
        if created:
            flow.active = self._by_proto.get(pkt.proto, ())  # shared: a private tuple once one drops out
            # either port: inline the first queued packet can be the server's (an SSH banner), so the
            # flow's "destination" is then the client's port
            flow.limit = max(self.budget, self.deep.get((flow.proto, flow.dport), 0),
                             self.deep.get((flow.proto, flow.sport), 0)) if self.deep else self.budget
            if self.ctx:
                flow.expected = self.ctx.lookup(pkt)
            if not flow.active:
                flow.done = True  # no classifier for this transport: nothing to look at, now or later
            else:
                flow.watch = self.reopens
                self._undecided[flow.key] = flow
        elif not flow.done:
            self._undecided.move_to_end(flow.key)
        length = pkt.length
        flow.packets += 1
        flow.bytes += length
        if pkt.src == flow.src and pkt.sport == flow.sport:
            d = 0
            flow.pkts0 += 1
            flow.bytes0 += length
            if pkt.seq >= 0 and pkt.payload:
                flow.seq0 = pkt.seq
        else:
            d = 1
            flow.pkts1 += 1
            flow.bytes1 += length
            if pkt.seq >= 0 and pkt.payload:
                flow.seq1 = pkt.seq
        if flow.done:
            if flow.watch and pkt.payload:
                self.reopen(flow)  # a later window of a flow not settled: look again
            else:
                if flow.follow_left and pkt.payload:
                    self._follow(flow, pkt, d)
                return flow
        if pkt.payload:
            if d:
                flow.pay1 += 1
            else:
                flow.pay0 += 1
            self._inspect(flow, pkt, d)
        if not flow.done and (not flow.active or flow.packets >= flow.limit):
            self._decide(flow)
        return flow

    def reopen(self, flow: Flow) -> None:
        """Look at a decided, watched flow again (see the module docstring); uses up one re-open."""
        flow.watch -= 1
        flow.reopens += 1
        self.reopened += 1
        flow.done = False
        if not flow.active:  # a fresh look: every classifier of the transport, from a clean state
            flow.active = self._by_proto.get(flow.proto, ())
            flow.state = NO_STATE
            flow.cands = NO_STATE
        flow.follow = ()
        flow.follow_left = 0
        # the packet that re-opens it is counted already: it is the first of the budget
        flow.limit = max(flow.limit, flow.packets + self.reopen_budget - 1)
        self._undecided[flow.key] = flow

    def _inspect(self, flow: Flow, pkt: Packet, d: int) -> None:
        ctx = self.ctx
        if flow.pay0 + flow.pay1 == 1 and not flow.reopens and flow.expected is None:
            tests = self._tests.get(flow.proto)
            if tests is not None:
                # a fresh flow's first payload: classifiers whose cheap test says "not mine" would reject
                # it now; they are neither called nor given state (docs/performance.md, "Where to cut" 3)
                row = tests[pkt.payload[0]]
                flow.active = self._shared(tuple([c for c, t in row if t is None or t(pkt, d)]))
        active = flow.active
        # survivors, made only once a classifier drops out: most packets change nothing, and a flow keeps
        # sharing its transport's tuple until then (docs/performance.md, memory per flow)
        keep: list[Classifier] | None = None
        i = -1
        for c in active:
            i += 1
            try:
                r = c.inspect(flow, pkt, d, ctx)
            except Exception as exc:  # a classifier bug must not take the engine down
                self.classifier_errors += 1
                if c.name not in self._error_logged:
                    self._error_logged.add(c.name)
                    log.warning("classifier %s failed on %s: %r (further failures counted only)",
                                c.name, flow.describe(), exc)
                r = DONE  # dropped like DONE: asked no more, its state gone, its verdict kept
            if r is None:
                if keep is not None:
                    keep.append(c)
                continue
            if r is DONE or r is REJECT:
                if keep is None:
                    keep = list(active[:i])
                if flow.state:
                    flow.state.pop(c.name, None)  # it will not be asked again: its state is garbage
                if r is REJECT and flow.cands.pop(c.name, None) is not None:
                    # "certainly not my protocol" withdraws what this classifier said earlier
                    flow.best = _best_of(flow.cands.values())
                continue
            assert isinstance(r, Verdict)
            if keep is not None:
                keep.append(c)
            cands = flow.cands
            if cands is NO_STATE:
                cands = flow.cands = {}
            cands[c.name] = r
            if r.beats(flow.best):
                flow.best = r
            if r.final:
                if keep is not None:
                    flow.active = (*keep, *active[i + 1:])
                self._decide(flow)
                return
        if keep is not None:
            flow.active = self._shared(tuple(keep))
            if not flow.state and flow.state is not NO_STATE:
                flow.state = NO_STATE  # an emptied dict still holds its table: let it go

    def _shared(self, active: tuple[Classifier, ...]) -> tuple[Classifier, ...]:
        """One tuple per distinct set of surviving classifiers, shared by the flows that have it (most
        flows of a transport end up with the same few); bounded, past that each flow keeps its own."""
        t = self._survivors.get(active)
        if t is not None:
            return t
        if len(self._survivors) < _SURVIVORS_MAX:
            self._survivors[active] = active
        return active

    def _follow(self, flow: Flow, pkt: Packet, d: int) -> None:
        """After the decision: let followers learn cross-flow facts; their verdicts no longer count."""
        flow.follow_left -= 1
        for c in tuple(flow.follow):
            try:
                r = c.inspect(flow, pkt, d, self.ctx)
            except Exception:
                self.classifier_errors += 1
                r = REJECT
            if r is REJECT or r is DONE:
                flow.follow = tuple(f for f in flow.follow if f is not c)
        if not flow.follow:
            flow.follow_left = 0

    def decide_quiet(self, now: float, quiet: float, limit: int = 0) -> list[Flow]:
        """Decide undecided flows that saw no packet for `quiet` seconds (at most `limit`, 0: all); returns
        them, oldest first.

        Inline, the kernel stops queueing a connection after its first N packets counted in both
        directions, handshake and pure ACKs included, while userspace sees only the payload packets: a
        flow can fall silent before it reaches the budget. It is decided on what was seen by then.
        """
        out: list[Flow] = []
        und = self._undecided
        cutoff = now - quiet
        while und:
            flow = next(iter(und.values()))
            if flow.last_ts > cutoff:
                break
            self._decide(flow, quiet=True)
            out.append(flow)
            if len(out) == limit:
                break
        return out

    def _decide(self, flow: Flow, quiet: bool = False) -> None:
        self._undecided.pop(flow.key, None)
        flow.done = True
        verdict = self.verdict(flow)
        if verdict.confidence == "confirmed":
            flow.watch = 0  # settled: nothing more to learn
        # only a classifier that recognised the flow follows it (SIP on a DNS flow has nothing to learn)
        followers = tuple(c for c in flow.active if c.follow and c.name in flow.cands)
        # set before on_decided: inline, a flow whose followers still want packets (SDP in a later SIP
        # message announces the RTP flows) must stay queued, not be allowed for good in the kernel
        flow.follow_left = max((c.follow for c in followers), default=0)
        if self.on_decided is not None:
            self.on_decided(flow, verdict)  # may end the watch too (blocked, registered)
        if flow.watch > 0 and quiet and flow.active:
            return  # went quiet before its budget: a late packet resumes these classifiers and their state
        flow.follow = followers
        if not flow.follow:
            # a decided flow lives on until it ends, but nothing reads its classifiers' state again:
            # most of a flow's memory while classified goes now
            flow.state = NO_STATE
            flow.cands = NO_STATE
        flow.active = ()

    def verdict(self, flow: Flow) -> Verdict:
        """The flow's verdict now: a flagged confirmed/heuristic verdict, else an endpoint-list match, else
        the best classifier verdict, else a port hint, else unknown."""
        best = flow.best
        if best is not None and best.flagged and best.confidence in ("confirmed", "heuristic"):
            return best
        if self.endpoints is not None:
            listed = self.endpoints.match(flow)
            if listed is not None:
                return listed
        if best is not None and best.rank >= 2:
            return best
        hint = self._port_hint(flow)
        if hint is not None:
            return hint
        return best if best is not None else UNKNOWN

    def _port_hint(self, flow: Flow) -> Verdict | None:
        for port in (flow.dport, flow.sport):
            c = self._ports.get((flow.proto, port))
            if c is not None:
                protocol = c.ports[(flow.proto, port)]
                return c.verdict(protocol, "port", f"{protocol} port {port}")
        return None

    def flush(self) -> None:
        """End all flows (end of input)."""
        self.table.flush()

    def _ended(self, flow: Flow, reason: str) -> None:
        self._undecided.pop(flow.key, None)
        if self.on_end is not None:
            self.on_end(flow, self.verdict(flow))
