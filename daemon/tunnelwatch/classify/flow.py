"""One bidirectional flow: its direction-agnostic key, counters, classification state and verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunnelwatch.classify.packet import Packet, addr_text, transport_name

if TYPE_CHECKING:
    from tunnelwatch.classify.base import Classifier, Expectation, Verdict

FlowKey = tuple[bytes, int, bytes, int, int]


def flow_key(pkt: Packet) -> FlowKey:
    """Direction-agnostic key: the lower (addr, port) end first, so both directions map to one flow."""
    src, dst = pkt.src, pkt.dst
    # (src, sport) <= (dst, dport) without building the two tuples; FlowTable.get inlines the same test
    if src < dst or (src == dst and pkt.sport <= pkt.dport):
        return (src, pkt.sport, dst, pkt.dport, pkt.proto)
    return (dst, pkt.dport, src, pkt.sport, pkt.proto)


class Flow:
    """A bidirectional flow. `src`/`sport` is the initiator (sender of the first packet seen)."""

    __slots__ = (
        "active",
        "best",
        "bytes",
        "bytes_dir",
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
        "payload_pkts",
        "pkts_dir",
        "proto",
        "reopens",
        "seq",
        "sport",
        "src",
        "state",
        "version",
        "watch",
    )

    def __init__(self, key: FlowKey, pkt: Packet) -> None:
        self.key = key
        self.src = pkt.src
        self.sport = pkt.sport
        self.dst = pkt.dst
        self.dport = pkt.dport
        self.proto = pkt.proto
        self.version = pkt.version
        self.first_ts = pkt.ts
        self.last_ts = pkt.ts
        self.packets = 0
        self.bytes = 0
        self.pkts_dir = [0, 0]
        self.bytes_dir = [0, 0]
        self.payload_pkts = [0, 0]
        #: TCP: the last sequence number seen from each side (-1: none yet)
        self.seq: list[int] | None = None
        #: per-classifier private state, keyed by classifier name
        self.state: dict[str, Any] = {}
        #: classifiers still interested in this flow
        self.active: list[Classifier] = []
        #: best verdict so far (None until some classifier spoke)
        self.best: Verdict | None = None
        #: each classifier's latest verdict; a later REJECT withdraws it
        self.cands: dict[str, Verdict] = {}
        #: True once classification is finished (decided or budget spent)
        self.done = False
        #: classifiers that keep reading after the decision (see Classifier.follow), and for how long
        self.follow: list[Classifier] = []
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

    def direction(self, pkt: Packet) -> int:
        """0 for packets from the initiator, 1 for replies."""
        return 0 if pkt.src == self.src and pkt.sport == self.sport else 1

    @property
    def bidirectional(self) -> bool:
        """True once packets were seen both ways."""
        return self.pkts_dir[0] > 0 and self.pkts_dir[1] > 0

    def describe(self) -> str:
        """Short human form, e.g. 'udp 10.0.0.1:5000 -> 10.0.0.2:1194'."""
        return (f"{transport_name(self.proto)} {addr_text(self.src)}:{self.sport} -> "
                f"{addr_text(self.dst)}:{self.dport}")
