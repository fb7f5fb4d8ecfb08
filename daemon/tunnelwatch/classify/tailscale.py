"""Tailscale over UDP: disco messages ("TS💬" magic) next to the WireGuard data they steer.

Tailscale peers exchange discovery ("disco") messages on the same UDP socket as their WireGuard
traffic: the 6-byte magic "TS" + U+1F4AC in UTF-8, the sender's 32-byte disco public key, a 24-byte
nonce and a NaCl box (at least its 16-byte tag). Disco both ways with two distinct sender keys, each
stable, is confirmed; disco from one side only is heuristic. WireGuard packets in between are allowed
(and noted); a flow that shows only WireGuard is left to the wireguard classifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import UDP, Packet

PROTOCOL: Final = "tailscale"
MAGIC: Final = "TS💬".encode()
_KEY_END: Final = len(MAGIC) + 32
_MIN_DISCO: Final = _KEY_END + 24 + 16  # magic + sender key + nonce + box tag
_WG_ONLY_MAX: Final = 12  # WireGuard packets to wait through for a disco message


@dataclass(slots=True)
class _State:
    keys: list[bytes] = field(default_factory=lambda: [b"", b""])
    disco: list[int] = field(default_factory=lambda: [0, 0])
    wireguard: int = 0


def _wireguard_shaped(p: bytes) -> bool:
    return len(p) >= 32 and 1 <= p[0] <= 4 and p[1] == 0 and p[2] == 0 and p[3] == 0


class Tailscale(Classifier):
    """Tailscale peer-to-peer paths (disco + WireGuard on one UDP socket)."""

    name: ClassVar[str] = "tailscale"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    first_on: ClassVar[frozenset[int]] = frozenset({UDP})
    # a disco packet opens with the magic; a WireGuard one with its message type 1-4 (_wireguard_shaped)
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {UDP: frozenset({MAGIC[0], *range(1, 5)})}
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 41641): PROTOCOL}

    def first(self, pkt: Packet, direction: int) -> bool:
        """A disco packet or a WireGuard-shaped one (anything else is rejected on any packet)."""
        p = pkt.payload
        return p[:6] == MAGIC or _wireguard_shaped(p)

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Track disco sender keys per direction; tolerate WireGuard packets between them."""
        p = pkt.payload
        disco = p[:6] == MAGIC
        if not disco and not _wireguard_shaped(p):
            return REJECT
        st = flow.state.get(PROTOCOL)
        if st is None:
            st = flow.put_state(PROTOCOL, _State())
        if not disco:
            st.wireguard += 1
            if not any(st.disco) and st.wireguard >= _WG_ONLY_MAX:
                return REJECT
            return None
        if len(p) < _MIN_DISCO:
            return REJECT
        key = p[len(MAGIC):_KEY_END]
        if st.keys[direction] and st.keys[direction] != key:
            return REJECT  # one socket, one disco key: a changing key is not Tailscale
        st.keys[direction] = key
        st.disco[direction] += 1
        ev = ["disco messages (magic TS+U+1F4AC, sender key, sealed box)"]
        if st.wireguard:
            ev.append(f"{st.wireguard} WireGuard packet(s) in the same flow")
        if min(st.disco) and st.keys[0] != st.keys[1]:
            return self.verdict(PROTOCOL, "confirmed", *ev, "both ways with distinct stable sender keys")
        return self.verdict(PROTOCOL, "heuristic", *ev)
