"""IPsec: IKEv1/IKEv2 on UDP 500/4500 (NAT-T marker), ESP-in-UDP, ESP and AH by IP protocol.

STUB: not implemented yet; rejects every flow.
"""

from __future__ import annotations

from typing import ClassVar

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.flow import Flow
from tunnelwatch.packet import AH, ESP, UDP, Packet


class IPsec(Classifier):
    """IPsec classifier."""

    name: ClassVar[str] = "ipsec"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP, ESP, AH})
    protocols: ClassVar[tuple[str, ...]] = ("ike", "esp", "ah")
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 500): "ike", (UDP, 4500): "ike"}

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Look at one packet of the flow."""
        return REJECT
