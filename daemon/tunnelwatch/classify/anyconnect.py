"""Cisco AnyConnect / OpenConnect: the DTLS data channel and the CSTP TLS channel.

STUB: not implemented yet; rejects every flow.
"""

from __future__ import annotations

from typing import ClassVar

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.flow import Flow
from tunnelwatch.packet import TCP, UDP, Packet


class AnyConnect(Classifier):
    """Cisco AnyConnect / OpenConnect classifier."""

    name: ClassVar[str] = "anyconnect"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({TCP, UDP})
    protocols: ClassVar[tuple[str, ...]] = ("anyconnect",)
    ports: ClassVar[dict[tuple[int, int], str]] = {}

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Look at one packet of the flow."""
        return REJECT
