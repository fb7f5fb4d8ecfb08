"""One bidirectional flow: its direction-agnostic key, counters, classification state and verdict.

A flow costs memory for as long as it lives in the table (docs/performance.md, "Memory per flow after
the cut"): counters are plain slots rather than per-direction lists, the classifier list is a tuple shared
by every flow of a transport until a classifier drops out, and the per-classifier state and candidate
verdicts start as one shared, read-only empty dict (`NO_STATE`) that is replaced by a private dict on the
first write (`put_state`) and dropped again once it is empty or the flow is decided.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from tunnelwatch.classify.packet import Packet, addr_text, transport_name

if TYPE_CHECKING:
    from tunnelwatch.classify.base import Classifier, Expectation, Verdict

FlowKey = tuple[bytes, int, bytes, int, int]
_T = TypeVar("_T")


def flow_key(pkt: Packet) -> FlowKey:
    """Direction-agnostic key: the lower (addr, port) end first, so both directions map to one flow."""
    src, dst = pkt.src, pkt.dst
    # (src, sport) <= (dst, dport) without building the two tuples; FlowTable.get inlines the same test
    if src < dst or (src == dst and pkt.sport <= pkt.dport):
        return (src, pkt.sport, dst, pkt.dport, pkt.proto)
    return (dst, pkt.dport, src, pkt.sport, pkt.proto)


class _Empty(dict[str, Any]):
    """A dict that stays empty: shared by every flow that holds no state (reads only)."""

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("NO_STATE is shared by all flows: write with Flow.put_state")

    __setitem__ = __delitem__ = setdefault = update = popitem = clear = __ior__ = _read_only


#: the state (and candidate verdicts) of a flow that has none: one object for all flows, never written
NO_STATE: Any = _Empty()


class Flow:
    """A bidirectional flow. `src`/`sport` is the initiator (sender of the first packet seen)."""

    __slots__ = (
        "active",
        "best",
        "bytes",
        "bytes0",
        "bytes1",
        "cands",
        "decided_as",
        "done",
        "dport",
        "dst",
        "expected",
        "first_ts",
        "follow",
        "follow_left",
        "key",
        "last_seg",
        "last_ts",
        "limit",
        "name",
        "packets",
        "pay0",
        "pay1",
        "pkts0",
        "pkts1",
        "proto",
        "reopens",
        "seq0",
        "seq1",
        "sport",
        "src",
        "state",
        "watch",
    )

    def __init__(self, key: FlowKey, pkt: Packet) -> None:
        self.key = key
        self.src = pkt.src
        self.sport = pkt.sport
        self.dst = pkt.dst
        self.dport = pkt.dport
        self.proto = pkt.proto
        self.first_ts = pkt.ts
        self.last_ts = pkt.ts
        self.packets = 0
        self.bytes = 0
        #: packets, bytes and payload packets per direction (0: from the initiator, 1: replies)
        self.pkts0 = self.pkts1 = self.bytes0 = self.bytes1 = self.pay0 = self.pay1 = 0
        #: TCP: the last sequence number of a payload segment from each side (-1: none yet)
        self.seq0 = self.seq1 = -1
        #: per-classifier private state, keyed by classifier name (NO_STATE until put_state)
        self.state: dict[str, Any] = NO_STATE
        #: classifiers still interested in this flow (shared per transport until one drops out)
        self.active: tuple[Classifier, ...] = ()
        #: best verdict so far (None until some classifier spoke)
        self.best: Verdict | None = None
        #: each classifier's latest verdict; a later REJECT withdraws it (NO_STATE until the first)
        self.cands: dict[str, Verdict] = NO_STATE
        #: True once classification is finished (decided or budget spent)
        self.done = False
        #: classifiers that keep reading after the decision (see Classifier.follow), and for how long
        self.follow: tuple[Classifier, ...] = ()
        self.follow_left = 0
        #: set when another flow (e.g. SIP/SDP) announced this flow's endpoint
        self.expected: Expectation | None = None
        #: the flow is decided once it has this many packets (the engine's budget, or a re-open's)
        self.limit = 0
        #: re-opens left: an unsettled decision (unknown, unconfirmed) is looked at again (Engine.reopen)
        self.watch = 0
        #: times the flow was re-opened after a decision
        self.reopens = 0
        #: the last decision reported for it (the daemon reports a re-decision only when it changed)
        self.decided_as: tuple[str, ...] | None = None
        #: the host name the flow goes to and how it was seen ("sni", "quic-sni", "dns"); see names.py
        self.name: tuple[str, str] | None = None
        #: inline: fingerprint of the last queued TCP payload segment (sender, sequence number, bytes), so
        #: that an exact retransmission is answered without classifying it again (enforcer.py)
        self.last_seg: int | None = None

    def put_state(self, name: str, value: _T) -> _T:
        """Store a classifier's state (`flow.state[name] = value`, with a private dict made on demand)."""
        st = self.state
        if st is NO_STATE:
            st = self.state = {}
        st[name] = value
        return value

    @property
    def version(self) -> int:
        """IP version, 4 or 6 (from the address length: one slot less per flow)."""
        return 4 if len(self.src) == 4 else 6

    def direction(self, pkt: Packet) -> int:
        """0 for packets from the initiator, 1 for replies."""
        return 0 if pkt.src == self.src and pkt.sport == self.sport else 1

    @property
    def bidirectional(self) -> bool:
        """True once packets were seen both ways."""
        return self.pkts0 > 0 and self.pkts1 > 0

    @property
    def pkts_dir(self) -> tuple[int, int]:
        """Packets per direction (read-only view of pkts0/pkts1)."""
        return (self.pkts0, self.pkts1)

    @property
    def bytes_dir(self) -> tuple[int, int]:
        """Bytes per direction (read-only view of bytes0/bytes1)."""
        return (self.bytes0, self.bytes1)

    @property
    def payload_pkts(self) -> tuple[int, int]:
        """Packets with payload per direction (read-only view of pay0/pay1)."""
        return (self.pay0, self.pay1)

    @property
    def seq(self) -> tuple[int, int] | None:
        """TCP: the last payload sequence number from each side (-1: none yet), None before any."""
        if self.seq0 < 0 and self.seq1 < 0:
            return None
        return (self.seq0, self.seq1)

    def describe(self) -> str:
        """Short human form, e.g. 'udp 10.0.0.1:5000 -> 10.0.0.2:1194'."""
        return (f"{transport_name(self.proto)} {addr_text(self.src)}:{self.sport} -> "
                f"{addr_text(self.dst)}:{self.dport}")
