"""PPTP control (TCP 1723, magic cookie) and GRE (plain and enhanced PPTP GRE).

STUB: not implemented yet; rejects every flow.
"""

from __future__ import annotations

from typing import ClassVar

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.flow import Flow
from tunnelwatch.packet import GRE, TCP, Packet


class PPTP(Classifier):
    """PPTP control (TCP 1723, magic cookie) and GRE (plain and enhanced PPTP GRE). classifier."""

    name: ClassVar[str] = "pptp"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({TCP, GRE})
    protocols: ClassVar[tuple[str, ...]] = ("pptp", "gre")
    ports: ClassVar[dict[tuple[int, int], str]] = {(TCP, 1723): "pptp"}

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Look at one packet of the flow."""
        return REJECT
