"""Decoys: packets a LAN host sends with a hop limit too low to reach the server they are addressed to.

DPI-evasion tools (zapret's nfqws, GoodbyeDPI, byedpi) put a fake segment or datagram in front of a
connection's real first one: the same ports and sequence number, a harmless-looking payload (an HTTP
request, a TLS hello of an allowed site), and a TTL just high enough to pass the box and die on the way.
A classifier that believes it decides the flow from the fake (benign: allowed for good) and the real first
segment then passes unread.

The box is the subscriber's first hop: an honest LAN host's packets arrive with its initial TTL (64, 128
or 255) minus one or two home routers, and one flow's packets all carry the same TTL. So a payload packet
from a subscriber address to a unicast address outside the subscriber networks that arrives under
DECOY_TTL is *held*: accepted (it goes on its way), not classified yet. The flow's next packet judges it:

* a later packet of the same flow and direction with a higher TTL: the held one could not reach as far,
  it was a decoy, counted and dropped from classification;
* otherwise (the server's answer, or a packet with the same low TTL: a host whose every packet is sent
  low, which is no reason to look away) it was genuine, and is classified before the packet that came.

A server cannot hide its replies this way: packets towards the LAN are delivered by this box whatever
their TTL and are never held. The subscriber networks are `report.privacy.subscriber_nets` (by default
the private and link-local ranges, i.e. a NAT'ed IPv4 LAN; a LAN with global addresses, IPv6 in
particular, must be listed there).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from tunnelwatch.classify.flow import FlowKey
from tunnelwatch.classify.packet import Packet
from tunnelwatch.report.privacy import DEFAULT_SUBSCRIBER_NETS

#: a LAN host's packet arriving under this TTL / hop limit (after this box's decrement) is held until the
#: flow's next packet shows whether it was a decoy: honest stacks start at 64, 128 or 255 and no home has
#: 32 routers in a row; a fake sent higher only gets past the rule towards a server over 32 hops away
DECOY_TTL: Final = 32
#: flows with held packets at once: beyond it the oldest flow's are dropped unclassified, never taken
#: for genuine (a host that floods low-TTL flows between its decoy and its real segment gains nothing);
#: above one host's new-connection burst (queue.new_flow_burst: 1000). Worst case ~2048 x 4 x 1.5 KB
HELD_FLOWS: Final = 2048
HELD_PER_FLOW: Final = 4  # packets held per flow (zapret repeats its fake --dpi-desync-repeats times)

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class Decoys:
    """Holds a LAN host's low-TTL packets until the flow's next packet tells decoys from real ones."""

    def __init__(self, subscriber_nets: Iterable[str] = ()) -> None:
        self.nets: tuple[_Net, ...] = ()
        self.use(subscriber_nets)
        self.count = 0  # packets found to be decoys
        self.held: dict[FlowKey, list[Packet]] = {}

    def use(self, subscriber_nets: Iterable[str]) -> None:
        """The subscriber networks (a reload keeps the count and what is held)."""
        nets = tuple(subscriber_nets) or DEFAULT_SUBSCRIBER_NETS
        self.nets = tuple(ipaddress.ip_network(n, strict=False) for n in nets)

    def _lan(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip in n for n in self.nets)

    def suspect(self, pkt: Packet) -> bool:
        """True when `pkt` (TTL / hop limit as this box forwards it) may be a decoy: it is to be held."""
        if pkt.ttl >= DECOY_TTL or not pkt.payload or pkt.proto not in (6, 17):
            return False
        dst = ipaddress.ip_address(pkt.dst)
        # multicast and broadcast stay on the link by design (SSDP is sent with TTL 2-4, mDNS often 1)
        if dst.is_multicast or pkt.dst == b"\xff\xff\xff\xff" or self._lan(dst):
            return False
        return self._lan(ipaddress.ip_address(pkt.src))

    def hold(self, key: FlowKey, pkt: Packet) -> None:
        """Hold a suspect until the flow's next packet (`release`)."""
        held = self.held.get(key)
        if held is not None:
            if len(held) < HELD_PER_FLOW:
                held.append(pkt)  # more low-TTL copies than that are not worth a look
            return
        if len(self.held) >= HELD_FLOWS:
            del self.held[next(iter(self.held))]
        self.held[key] = [pkt]

    def release(self, key: FlowKey, pkt: Packet) -> list[Packet]:
        """The flow's next packet came: its held packets that were genuine, to classify before `pkt`."""
        held = self.held.pop(key)
        first = held[0]
        top = max(p.ttl for p in held)
        if pkt.src == first.src and pkt.sport == first.sport and pkt.ttl > top:
            top = pkt.ttl  # the same direction reached further: every held packet was a decoy
        real = [p for p in held if p.ttl >= top]
        self.count += len(held) - len(real)
        return real
