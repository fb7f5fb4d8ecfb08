"""The daemon's view of a capture: which packets the kernel rules would queue, and what the daemon decides.

`tunnelwatch classify --inline` and `make eval` use this to report the product's real figure: not what the
engine finds with every packet in hand, but what it finds from what the kernel queues. It replays the
mangle rules of firewall.py on each packet of a capture, in capture order and capture time:

* a connection (bidirectional 5-tuple, forgotten after conntrack's default timeouts: 5 days for TCP,
  `idle_timeout` for the rest) counts every packet both ways, SYN and pure ACKs included (connbytes);
  the engine forgets its flows after `idle_timeout` as the daemon's does, so a long TCP pause makes a
  new engine flow of a connection the kernel still tracks, as it does inline;
* a connection with a final decision (ALLOW, or a settled verdict) is never queued again; past the last
  window the kernel allows it for good (`firewall.last_packet`);
* otherwise a packet is queued inside the first window (`firewall.window(packets)`, deeper for
  `deep` ports), the later windows (`firewall.LATER_WINDOWS`), or, for UDP, when it has the size of a
  WireGuard handshake message (at most `firewall.HANDSHAKE_RATE` per direction, burst 2);
* of those, TCP resets and TCP segments without payload are not queued (the queue chain's RETURNs).

Queued packets go to an engine set up as the daemon's (`reopens`, the quiet rule on capture time), and
each decision becomes the connection's mark as the daemon's Enforcer would set it without a policy
(settled: ALLOW; not settled: WATCH, looked at again in later windows). A LAN host's low-TTL decoy
(inline/decoy.py, with the default subscriber networks) is queued and not classified, as inline. Not
modelled: registered endpoints skipping the queue, the per-host flood limit, a full queue (fail-open).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tunnelwatch.classify.base import Classifier
from tunnelwatch.classify.endpoints import EndpointIndex
from tunnelwatch.classify.engine import DEFAULT_DEEP, INLINE_BUDGET, Engine
from tunnelwatch.classify.flow import Flow, flow_key
from tunnelwatch.classify.packet import TCP_RST, Packet, addr_text, transport_name
from tunnelwatch.inline import firewall
from tunnelwatch.inline.decoy import DECOY_TTL, Decoys
from tunnelwatch.inline.enforcer import QUIET_S, REOPENS
from tunnelwatch.verdict import UNKNOWN, Verdict

_FINAL: Final = (firewall.MARK_ALLOW, firewall.MARK_DROP, firewall.MARK_REJECT)
#: nf_conntrack_tcp_timeout_established's default: the kernel keeps a quiet TCP connection (and its mark)
TCP_ESTABLISHED_S: Final = 5 * 86400.0
Key = tuple[bytes, int, bytes, int, int]


def _rate_per_s(rate: str) -> float:
    n, _, unit = rate.partition("/")
    return float(n) / {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}[unit]


_HS_RATE: Final = _rate_per_s(firewall.HANDSHAKE_RATE)
_HS_BURST: Final = 2.0


@dataclass(slots=True)
class Conn:
    """One connection as conntrack sees it: counters, the decision bits of its connmark, the verdict."""

    src: bytes
    sport: int
    dst: bytes
    dport: int
    proto: int
    first_ts: float
    last_ts: float
    packets: int = 0
    bytes: int = 0
    queued: int = 0
    mark: int = 0
    verdict: Verdict | None = None
    flow: Flow | None = None
    #: handshake-size token buckets per direction: (tokens, time)
    hs: dict[int, tuple[float, float]] = field(default_factory=dict)


class KernelView:
    """Feed capture packets in order; `records()` at the end gives one contract record per connection."""

    def __init__(self, classifiers: Sequence[Classifier] | None = None, *, budget: int = INLINE_BUDGET,
                 deep: dict[tuple[int, int], int] | None = None, idle_timeout: float = 120.0,
                 endpoints: EndpointIndex | None = None) -> None:
        self.deep = dict(DEFAULT_DEEP if deep is None else deep)
        self.engine = Engine(classifiers, budget=budget, idle_timeout=idle_timeout, deep=self.deep,
                             endpoints=endpoints, reopens=REOPENS, on_decided=self._decided,
                             on_end=self._seen)
        self.idle_timeout = idle_timeout
        self.first = firewall.window(budget)
        self.last = max([self.first, *(firewall.window(n) for n in self.deep.values()),
                         *(hi for _, hi in firewall.LATER_WINDOWS)])
        self.conns: dict[Key, Conn] = {}
        self.done: list[Conn] = []
        self.by_flow: dict[int, Conn] = {}
        self._current: Conn | None = None
        self.decoys = Decoys()  # the default subscriber networks: a capture comes with no config

    # -- the kernel ---------------------------------------------------------------------------------------
    def process(self, pkt: Packet) -> None:
        """One packet through the rules; queued ones go to the engine."""
        self.engine.decide_quiet(pkt.ts, QUIET_S)  # the daemon's loop does this between packets
        conn = self._conn(pkt)
        conn.packets += 1
        conn.bytes += pkt.length
        conn.last_ts = max(conn.last_ts, pkt.ts)
        if conn.mark in _FINAL:
            return
        if conn.packets > self.last:
            conn.mark = firewall.MARK_ALLOW  # the kernel's own final ALLOW past the last window
            return
        if not self._in_window(conn, pkt):
            return
        if pkt.proto == 6 and (pkt.tcp_flags & TCP_RST or not pkt.payload):
            return
        conn.queued += 1
        key = flow_key(pkt)
        if pkt.ttl < DECOY_TTL and self.decoys.suspect(pkt):
            self.decoys.hold(key, pkt)  # as the Enforcer: judged by the connection's next queued packet
            return
        self._current = conn
        if self.decoys.held and key in self.decoys.held:
            for p in self.decoys.release(key, pkt):
                self._adopt(self.engine.process(p), conn)
        flow = self.engine.process(pkt)
        self._current = None
        self._adopt(flow, conn)
        if conn.mark == 0 and flow.done:
            conn.mark = firewall.MARK_ALLOW  # no classifier for this transport: the daemon allows it
        elif conn.mark == firewall.MARK_WATCH and flow.done and not flow.watch and not flow.follow_left:
            conn.mark = firewall.MARK_ALLOW  # as the Enforcer: its followers have all they wanted

    def _conn(self, pkt: Packet) -> Conn:
        src, sport, dst, dport = pkt.src, pkt.sport, pkt.dst, pkt.dport
        key = (src, sport, dst, dport, pkt.proto) if src < dst or (src == dst and sport <= dport) \
            else (dst, dport, src, sport, pkt.proto)
        conn = self.conns.get(key)
        timeout = TCP_ESTABLISHED_S if pkt.proto == 6 else self.idle_timeout
        if conn is not None and pkt.ts - conn.last_ts > timeout:
            self.done.append(self.conns.pop(key))  # conntrack forgot it: the same 5-tuple starts afresh
            conn = None
        if conn is None:
            conn = self.conns[key] = Conn(src, sport, dst, dport, pkt.proto, pkt.ts, pkt.ts)
        return conn

    def _in_window(self, conn: Conn, pkt: Packet) -> bool:
        n = conn.packets
        if n <= self.first:
            return True
        deep = self.deep.get((conn.proto, conn.dport)) if self.deep else None
        if deep is not None and n <= firewall.window(deep):
            return True
        if any(lo <= n <= hi for lo, hi in firewall.LATER_WINDOWS if lo > self.first):
            return True
        if pkt.proto == 17 and pkt.length in firewall.HANDSHAKE_LENGTHS[pkt.version]:
            return self._handshake_token(conn, 0 if pkt.src == conn.src and pkt.sport == conn.sport else 1,
                                         pkt.ts)
        return False

    @staticmethod
    def _handshake_token(conn: Conn, d: int, now: float) -> bool:
        tokens, then = conn.hs.get(d, (_HS_BURST, now))
        tokens = min(_HS_BURST, tokens + max(0.0, now - then) * _HS_RATE)
        ok = tokens >= 1.0
        conn.hs[d] = (tokens - 1.0 if ok else tokens, now)
        return ok

    # -- the daemon's side ------------------------------------------------------------------------------
    def _adopt(self, flow: Flow, conn: Conn) -> None:
        if conn.flow is not flow:
            conn.flow = flow
            self.by_flow[id(flow)] = conn

    def _owner(self, flow: Flow) -> Conn | None:
        conn = self.by_flow.get(id(flow))
        if conn is None and self._current is not None:
            conn = self._current  # decided on its very first queued packet
            self._adopt(flow, conn)
        return conn

    def _decided(self, flow: Flow, verdict: Verdict) -> None:
        conn = self._owner(flow)
        if conn is not None:
            conn.verdict = verdict
            conn.mark = firewall.MARK_WATCH if flow.watch > 0 or flow.follow_left > 0 else firewall.MARK_ALLOW

    def _seen(self, flow: Flow, verdict: Verdict) -> None:
        conn = self.by_flow.pop(id(flow), None)
        if conn is not None:
            conn.verdict = verdict

    def flush(self) -> None:
        """End of capture: decide what is still open, end every connection."""
        self.engine.decide_quiet(float("inf"), QUIET_S)
        self.engine.flush()
        self.done.extend(self.conns.values())
        self.conns.clear()

    def records(self, pcap: str) -> Iterable[dict[str, Any]]:
        """One contract record per connection (after flush), with `queued`: packets the daemon saw."""
        for c in sorted(self.done, key=lambda c: c.first_ts):
            v = c.verdict or UNKNOWN
            if c.verdict is None and not c.queued:
                v = Verdict("unknown", "unknown", "heuristic", ("nothing queued: no payload in the windows",))
            yield {"pcap": pcap, "src": addr_text(c.src), "sport": c.sport, "dst": addr_text(c.dst),
                   "dport": c.dport, "transport": transport_name(c.proto), "klass": v.klass,
                   "protocol": v.protocol, "confidence": v.confidence, "evidence": list(v.evidence),
                   "packets": c.packets, "bytes": c.bytes, "queued": c.queued,
                   "first_seen": round(c.first_ts, 6), "last_seen": round(c.last_ts, 6)}


def inline_records(pcap: str, packets: Iterable[Packet], **kw: Any) -> list[dict[str, Any]]:
    """The daemon's view of a sequence of packets (a helper for tests and tools)."""
    view = KernelView(**kw)
    for p in packets:
        view.process(p)
    view.flush()
    return list(view.records(pcap))

