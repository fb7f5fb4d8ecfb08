"""WireGuard over UDP: message types, their fixed sizes, and session indices matched across directions.

Messages: 1 handshake initiation (148 bytes), 2 handshake response (92), 3 cookie reply (64),
4 transport data (16-byte header + 16-byte-aligned ciphertext). Bytes 1-3 are reserved zeros.
An initiation answered by a response whose receiver index equals the initiator's sender index is
confirmed; so are transport packets whose receiver indices match the indices exchanged in the
handshake. Transport data alone (capture started mid-session) is heuristic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.flow import Flow
from tunnelwatch.packet import UDP, Packet

INITIATION: Final = 1
RESPONSE: Final = 2
COOKIE: Final = 3
TRANSPORT: Final = 4
_SIZES: Final = {INITIATION: 148, RESPONSE: 92, COOKIE: 64}
_DATA_MIN_EACH_WAY: Final = 2


@dataclass
class _State:
    # sender index announced by each side (0 = initiator side of the handshake)
    idx: list[int | None] = field(default_factory=lambda: [None, None])
    init_dir: int = -1
    handshake: bool = False
    # transport data seen without a handshake: receiver index and last counter per direction
    data_rx: list[int | None] = field(default_factory=lambda: [None, None])
    data_ctr: list[int] = field(default_factory=lambda: [-1, -1])
    data_n: list[int] = field(default_factory=lambda: [0, 0])


class WireGuard(Classifier):
    """WireGuard (and WireGuard-based apps such as Tailscale's data plane)."""

    name: ClassVar[str] = "wireguard"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    protocols: ClassVar[tuple[str, ...]] = ("wireguard",)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 51820): "wireguard"}

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Check message type, size and reserved bytes; match indices across directions."""
        p = pkt.payload
        n = len(p)
        if n < 32 or p[1] or p[2] or p[3]:
            return REJECT
        mtype = p[0]
        st = flow.state.get("wireguard")
        if st is None:
            st = flow.state["wireguard"] = _State()
        if mtype in _SIZES:
            if n != _SIZES[mtype]:
                return REJECT
            if mtype == INITIATION:
                st.init_dir = direction
                st.idx[0] = unpack_from("<I", p, 4)[0]
                return self.verdict("wireguard", "heuristic", "handshake initiation (148 bytes)")
            if mtype == RESPONSE:
                sender, receiver = unpack_from("<II", p, 4)
                if st.init_dir < 0 or direction == st.init_dir:
                    return self.verdict("wireguard", "heuristic", "handshake response (92 bytes)")
                if receiver != st.idx[0]:
                    return REJECT
                st.idx[1] = sender
                st.handshake = True
                return self.verdict("wireguard", "confirmed", "handshake initiation (148 bytes)",
                                    "response (92 bytes) echoes the initiator's sender index")
            return None  # cookie reply: under load; keep watching
        if mtype != TRANSPORT or (n - 16) % 16:
            return REJECT
        receiver, counter = unpack_from("<IQ", p, 4)
        if st.handshake:
            # Data towards the initiator carries the initiator's index, and vice versa.
            want = st.idx[0] if direction != st.init_dir else st.idx[1]
            if receiver == want:
                return self.verdict("wireguard", "confirmed", "handshake indices matched both ways",
                                    "transport data uses the negotiated receiver index")
            return REJECT
        rx = st.data_rx[direction]
        if rx is None:
            st.data_rx[direction] = receiver
        elif rx != receiver or counter <= st.data_ctr[direction]:
            return REJECT
        st.data_ctr[direction] = counter
        st.data_n[direction] += 1
        if min(st.data_n) >= _DATA_MIN_EACH_WAY and st.data_rx[0] != st.data_rx[1]:
            return self.verdict("wireguard", "heuristic",
                                "transport data both ways: stable receiver indices, rising counters")
        return None
