"""ZeroTier over UDP: the cleartext packet header and the HELLO verb that carries the sender's identity.

Every ZeroTier packet starts with an 8-byte packet id, the 5-byte destination and source addresses, a
flags byte (cipher suite in bits 3-5, hop count in bits 0-2) and an 8-byte MAC; the verb follows at
offset 27, in clear only when the cipher suite is "none" (HELLO always is). HELLO's payload is the
protocol version, the software version, a timestamp and the sender's identity, whose address must equal
the header's source address: a 40-bit cross-check within one packet, so a HELLO is confirmed. Without
a HELLO (a capture started mid-session) packets on port 9993 whose addresses mirror each other both
ways are heuristic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import UDP, Packet

PROTOCOL: Final = "zerotier"
PORT: Final = 9993
VERB_HELLO: Final = 1
_HEADER: Final = 28  # through the verb byte
# verb + protocol version, major, minor, revision (2), timestamp (8), identity address (5) + type (1)
# + Curve25519/Ed25519 public keys (64)
_MIN_HELLO: Final = _HEADER + 1 + 1 + 1 + 2 + 8 + 5 + 1 + 64
_ID_ADDR: Final = _HEADER + 13
_FRAGMENT: Final = 0xFF  # byte 13 of a fragment (an impossible first address byte)
_MIDFLOW_MIN: Final = 2  # packets each way with mirrored addresses


@dataclass(slots=True)
class _State:
    addrs: list[bytes] = field(default_factory=lambda: [b"", b""])
    seen: list[int] = field(default_factory=lambda: [0, 0])


def hello_version(p: bytes) -> int:
    """The protocol version of a ZeroTier HELLO whose identity matches its source address, else 0."""
    if len(p) < _MIN_HELLO or p[27] & 0x1F != VERB_HELLO or p[18] & 0x38:
        return 0
    src = p[13:18]
    if src[0] == _FRAGMENT or not any(src) or p[_ID_ADDR:_ID_ADDR + 5] != src or p[_ID_ADDR + 5] != 0:
        return 0
    version = p[_HEADER]
    return version if 4 <= version <= 30 else 0


class ZeroTier(Classifier):
    """ZeroTier One (VL1 packets over UDP)."""

    name: ClassVar[str] = "zerotier"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    first_on: ClassVar[frozenset[int]] = frozenset({UDP})
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, PORT): PROTOCOL}

    def first(self, pkt: Packet, direction: int) -> bool:
        """A header's worth of bytes, and a HELLO or a non-fragment on the ZeroTier port."""
        p = pkt.payload
        if len(p) < _HEADER:
            return False
        return bool(hello_version(p)) or (PORT in (pkt.sport, pkt.dport) and p[13] != _FRAGMENT)

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """A HELLO is confirmed; on port 9993, mirrored addresses both ways are heuristic."""
        p = pkt.payload
        if len(p) < _HEADER:
            return REJECT
        version = hello_version(p)
        if version:
            return self.verdict(PROTOCOL, "confirmed", f"HELLO (protocol {version})",
                                "identity address equals the header's source address")
        if PORT not in (pkt.sport, pkt.dport) or p[13] == _FRAGMENT:
            return REJECT
        st = flow.state.get(PROTOCOL)
        if st is None:
            st = flow.put_state(PROTOCOL, _State())
        addrs = p[8:18]  # destination + source
        if not st.addrs[direction]:
            st.addrs[direction] = addrs
        elif st.addrs[direction] != addrs:
            return REJECT
        other = st.addrs[1 - direction]
        if other and other != addrs[5:] + addrs[:5]:
            return REJECT
        st.seen[direction] += 1
        if min(st.seen) >= _MIDFLOW_MIN:
            return self.verdict(PROTOCOL, "heuristic", "port 9993: ZeroTier addresses mirrored both ways")
        return None
