"""The classifier contract: the Classifier base class, REJECT/DONE, the cross-flow context.

Verdict, Klass and Confidence live in tunnelwatch.verdict (the bottom of the tree); they are re-exported
here because every classifier builds verdicts.

A classifier is pure: it reads a packet and its flow's private state and returns a `Verdict`, `REJECT`
(not my protocol: stop asking me for this flow) or None (undecided: show me the next packet).
`DONE` means "I have said all I will say": the engine stops asking and keeps the earlier verdict.
It must never raise on hostile input; the engine still guards each call and counts failures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Final

from tunnelwatch.verdict import CONFIDENCES, KLASSES, UNKNOWN, Confidence, Klass, Verdict

if TYPE_CHECKING:
    from tunnelwatch.classify.flow import Flow
    from tunnelwatch.classify.packet import Packet

__all__ = ["CONFIDENCES", "DONE", "KLASSES", "REJECT", "UNKNOWN", "Classifier", "Confidence", "Context",
           "ContractError", "Expectation", "InspectResult", "Klass", "Verdict", "check_contract"]
NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]{1,31}$")




class _Reject:
    __slots__ = ()

    def __repr__(self) -> str:
        return "REJECT"


class _Done:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DONE"


#: returned by `Classifier.inspect` when the flow is certainly not this classifier's protocol;
#: it also withdraws any verdict this classifier gave the flow earlier
REJECT: Final = _Reject()
#: returned when the classifier has said all it will say: stop asking, keep its verdict
DONE: Final = _Done()
InspectResult = Verdict | _Reject | _Done | None


@dataclass(frozen=True, slots=True)
class Expectation:
    """A media or data flow announced by another flow (e.g. RTP announced in SIP/SDP)."""

    protocol: str
    klass: Klass
    evidence: str
    expires: float


class Context:
    """Cross-flow state a classifier may use: announced endpoints (expectations), bounded in size."""

    def __init__(self, max_expectations: int = 4096, lifetime: float = 300.0) -> None:
        self.max_expectations = max_expectations
        self.lifetime = lifetime
        self._expect: dict[tuple[bytes, int, int], Expectation] = {}

    def expect(self, addr: bytes, port: int, proto: int, protocol: str, klass: Klass, evidence: str,
               now: float) -> None:
        """Announce that a flow to or from addr:port/proto will be `protocol`."""
        if not (0 < port < 65536) or len(addr) not in (4, 16):
            return
        if len(self._expect) >= self.max_expectations:
            # Drop the oldest announcement (dicts keep insertion order).
            self._expect.pop(next(iter(self._expect)))
        self._expect[(addr, port, proto)] = Expectation(protocol, klass, evidence, now + self.lifetime)

    def lookup(self, pkt: Packet) -> Expectation | None:
        """The expectation matching either end of this packet, if any and not expired."""
        if not self._expect:
            return None
        for k in ((pkt.dst, pkt.dport, pkt.proto), (pkt.src, pkt.sport, pkt.proto)):
            e = self._expect.get(k)
            if e is not None:
                if e.expires >= pkt.ts:
                    return e
                del self._expect[k]
        return None

    def __len__(self) -> int:
        return len(self._expect)


#: verdicts made by Classifier.verdict, by their fields (bounded: cleared when full)
_VERDICTS: dict[tuple[str, str, str, tuple[str, ...], frozenset[str]], Verdict] = {}
_VERDICTS_MAX: Final = 1024


class Classifier:
    """Base class for one protocol family. Subclasses set the class attributes and `inspect`."""

    #: config key and registry name, e.g. "openvpn" (lowercase, [a-z0-9_])
    name: ClassVar[str] = ""
    #: the family this classifier reports
    klass: ClassVar[Klass] = "unknown"
    #: IP protocol numbers it wants to see (6 tcp, 17 udp, 50 esp, ...)
    transports: ClassVar[frozenset[int]] = frozenset()
    #: (ip proto, port) -> protocol name used as a last resort (confidence "port")
    ports: ClassVar[dict[tuple[int, int], str]] = {}
    #: protocols this classifier can emit (documentation and contract check)
    protocols: ClassVar[tuple[str, ...]] = ()
    #: payload packets it still wants after the flow is decided, only to learn cross-flow facts
    #: (e.g. SDP in later SIP messages); its verdicts are ignored then
    follow: ClassVar[int] = 0
    #: transports on which `first` can judge a fresh flow's first payload packet (the engine asks it there)
    first_on: ClassVar[frozenset[int]] = frozenset()
    #: transport (of first_on) -> the only first payload bytes for which `first` can say True there: the
    #: engine does not even call `first` for the others (a transport not listed: any byte)
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {}

    def first(self, pkt: Packet, direction: int) -> bool:
        """Cheap test of a fresh flow's first payload packet (no re-open, no expectation), on `first_on`:
        False only if `inspect` would return REJECT or DONE on it having changed nothing outside its own
        state, so the engine may skip it for the flow (docs/performance.md, "Where to cut" item 3)."""
        return True

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Look at one packet with payload; direction 0 = from initiator, 1 = reply.

        Per-flow state lives in `flow.state[self.name]`, written with `flow.put_state`: the engine drops
        it once the classifier returns REJECT or DONE (or the flow is decided), so state must not be
        shared between classifiers.
        """
        raise NotImplementedError

    def verdict(self, protocol: str, confidence: Confidence, *evidence: str,
                supersedes: frozenset[str] = frozenset()) -> Verdict:
        """Build a verdict of this classifier's klass (an equal one made earlier is shared: verdicts are
        frozen, and a decided flow keeps its verdict for as long as it lives)."""
        key = (self.klass, protocol, confidence, evidence, supersedes)
        v = _VERDICTS.get(key)
        if v is None:
            if len(_VERDICTS) >= _VERDICTS_MAX:
                _VERDICTS.clear()  # evidence naming per-flow details never fills memory
            v = _VERDICTS[key] = Verdict(self.klass, protocol, confidence, evidence, supersedes)
        return v


class ContractError(Exception):
    """A classifier does not honour the contract; raised at load time."""


def check_contract(c: Classifier) -> None:
    """Check a classifier's declared attributes; raise ContractError with a clear message."""
    cls = type(c).__name__
    if not NAME_RE.match(c.name or ""):
        raise ContractError(f"{cls}: name {c.name!r} must match {NAME_RE.pattern}")
    if c.klass not in KLASSES or c.klass == "unknown":
        raise ContractError(f"{cls}: klass {c.klass!r} must be one of {KLASSES[:4]}")
    if not c.transports or not all(isinstance(t, int) and 0 <= t < 256 for t in c.transports):
        raise ContractError(f"{cls}: transports must be a non-empty set of IP protocol numbers")
    if not c.protocols:
        raise ContractError(f"{cls}: protocols must list what it can report")
    for (proto, port), protocol in c.ports.items():
        if proto not in c.transports or not (0 < port < 65536) or protocol not in c.protocols:
            raise ContractError(f"{cls}: bad port hint {(proto, port)} -> {protocol!r}")
    if not (0 <= c.follow <= 10_000):
        raise ContractError(f"{cls}: follow must be between 0 and 10000 packets")
    if not c.first_on <= c.transports or not c.first_bytes.keys() <= c.first_on:
        raise ContractError(f"{cls}: first_on must be a subset of transports, first_bytes' keys of first_on")
    if type(c).inspect is Classifier.inspect:
        raise ContractError(f"{cls}: does not implement inspect()")
