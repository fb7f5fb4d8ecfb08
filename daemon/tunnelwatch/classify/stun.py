"""STUN (RFC 3489/5389/8489) and TURN (RFC 5766/8656), over UDP and TCP.

STUB: not implemented yet; rejects every flow.
"""

from __future__ import annotations

from typing import ClassVar

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.flow import Flow
from tunnelwatch.packet import TCP, UDP, Packet


class STUN(Classifier):
    """STUN (RFC 3489/5389/8489) and TURN (RFC 5766/8656), over UDP and TCP. classifier."""

    name: ClassVar[str] = "stun"
    klass: ClassVar[Klass] = "voip"
    transports: ClassVar[frozenset[int]] = frozenset({TCP, UDP})
    protocols: ClassVar[tuple[str, ...]] = ("stun", "turn")
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 3478): "stun"}

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Look at one packet of the flow."""
        return REJECT
