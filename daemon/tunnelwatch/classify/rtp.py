"""RTP and RTCP media streams, confirmed when announced by SIP/SDP or seen consistently both ways.

STUB: not implemented yet; rejects every flow.
"""

from __future__ import annotations

from typing import ClassVar

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.flow import Flow
from tunnelwatch.packet import UDP, Packet


class RTP(Classifier):
    """RTP and RTCP media streams, confirmed when announced by SIP/SDP or seen consistently both ways. classifier."""

    name: ClassVar[str] = "rtp"
    klass: ClassVar[Klass] = "voip"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    protocols: ClassVar[tuple[str, ...]] = ("rtp", "rtcp")
    ports: ClassVar[dict[tuple[int, int], str]] = {}

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Look at one packet of the flow."""
        return REJECT
