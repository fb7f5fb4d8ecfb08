"""SIP over UDP and TCP; announces SDP media endpoints to the context for RTP/RTCP.

STUB: not implemented yet; rejects every flow.
"""

from __future__ import annotations

from typing import ClassVar

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.flow import Flow
from tunnelwatch.packet import TCP, UDP, Packet


class SIP(Classifier):
    """SIP over UDP and TCP; announces SDP media endpoints to the context for RTP/RTCP. classifier."""

    name: ClassVar[str] = "sip"
    klass: ClassVar[Klass] = "voip"
    transports: ClassVar[frozenset[int]] = frozenset({TCP, UDP})
    protocols: ClassVar[tuple[str, ...]] = ("sip",)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 5060): "sip", (TCP, 5060): "sip"}

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Look at one packet of the flow."""
        return REJECT
