"""The opener/answer pattern shared by the voice-app and Teredo recognisers.

Many call apps open a UDP flow with a message of a fixed shape (a ping, a join request, an address
discovery) that the server or peer answers by echoing a field of it (a token, a nonce, a session id).
A subclass says what an opener looks like (`opener`, run on a flow's first payload packet only, so it
must reject ordinary UDP with a length test and a few byte compares) and what an answer carrying the
opener's key looks like (`answer`). An opener answered in the other direction is `confirmed` (the
structure matches both ways and the answer is tied to the opener); a lone opener is `heuristic` when the
subclass says its shape is specific enough on its own (`lone`), and not flagged otherwise. After
`patience` further packets without an answer the classifier stops looking (DONE keeps its verdict).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tunnelwatch.classify.base import DONE, REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import UDP, Packet


@dataclass(frozen=True, slots=True)
class Opener:
    """What the first payload packet was: the protocol, evidence, the key its answer must echo."""

    protocol: str
    evidence: str
    key: bytes = b""
    #: whether this opener alone is worth a heuristic verdict
    lone: bool = True


@dataclass(slots=True)
class _State:
    opener: Opener
    left: int


class EchoClassifier(Classifier):
    """Base for recognisers of an opener confirmed by an answer that echoes its key."""

    klass: ClassVar[Klass] = "voip"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    first_on: ClassVar[frozenset[int]] = frozenset({UDP})
    #: packets after the opener that may be neither an answer nor anything telling (retransmissions)
    patience: ClassVar[int] = 6

    def opener(self, p: bytes, pkt: Packet) -> Opener | None:
        """The opener this first payload packet is, or None (the flow is rejected)."""
        raise NotImplementedError

    def answer(self, p: bytes, op: Opener, direction: int) -> str | None:
        """Evidence when `p` (a later packet) answers the opener `op`; None otherwise."""
        raise NotImplementedError

    def first(self, pkt: Packet, direction: int) -> bool:
        """A client packet that is an opener (what inspect() looks for on the first payload packet)."""
        return direction == 0 and self.opener(pkt.payload, pkt) is not None

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Opener on the first payload packet, then look for its answer for `patience` packets."""
        st: _State | None = flow.state.get(self.name)
        if st is None:
            op = self.opener(pkt.payload, pkt) if direction == 0 else None
            if op is None:
                return REJECT
            flow.put_state(self.name, _State(op, self.patience))
            return self.verdict(op.protocol, "heuristic", op.evidence) if op.lone else None
        op = st.opener
        heard = self.answer(pkt.payload, op, direction)
        if heard is not None:
            return self.verdict(op.protocol, "confirmed", op.evidence, heard)
        st.left -= 1
        if st.left <= 0:
            return DONE
        return self.verdict(op.protocol, "heuristic", op.evidence) if op.lone else None
