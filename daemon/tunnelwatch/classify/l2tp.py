"""L2TP control and data on UDP (1701).

STUB: not implemented yet; rejects every flow.
"""

from __future__ import annotations

from typing import ClassVar

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.flow import Flow
from tunnelwatch.packet import UDP, Packet


class L2TP(Classifier):
    """L2TP control and data on UDP (1701). classifier."""

    name: ClassVar[str] = "l2tp"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    protocols: ClassVar[tuple[str, ...]] = ("l2tp",)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 1701): "l2tp"}

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Look at one packet of the flow."""
        return REJECT
