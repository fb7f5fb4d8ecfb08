"""WireGuard over UDP: message types, their fixed sizes, and session indices matched across directions.

Messages: 1 handshake initiation (148 bytes), 2 handshake response (92), 3 cookie reply (64),
4 transport data (16-byte header + 16-byte-aligned ciphertext). Bytes 1-3 are reserved zeros.
An initiation answered by a response whose receiver index equals the initiator's sender index is
confirmed; so are transport packets whose receiver indices match the indices exchanged in the
handshake. Transport data alone (capture started mid-session) is heuristic.

Cloudflare WARP modifies WireGuard and is reported as "warp": clients such as wgcf put a 3-byte client
id in the reserved bytes of otherwise standard messages (same sizes and index checks; the id must stay
the same per direction), and Cloudflare's own client uses message types 0xC1-0xC4 with handshakes of
other sizes: its 0xC1 initiation (reserved zero), a 0xC2 response carrying the client id and the
responder's index, then 0xC4 data from the initiator with that id and that index is confirmed.
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
WARP_INITIATION: Final = 0xC1
WARP_RESPONSE: Final = 0xC2
WARP_TRANSPORT: Final = 0xC4
_WARP_TYPES: Final = frozenset({0xC1, 0xC2, 0xC3, 0xC4})
_WARP_EV: Final = "reserved bytes carry a client id (Cloudflare WARP)"
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
    # WARP: the reserved bytes each direction uses (when not zero)
    warp: bool = False
    reserved: list[bytes] = field(default_factory=lambda: [b"", b""])
    # Cloudflare's 0xC1-0xC4 variant: client id and responder index from its 0xC2 response
    c_init: bool = False
    c_id: bytes = b""
    c_idx: bytes = b""


class WireGuard(Classifier):
    """WireGuard (and WireGuard-based apps such as Tailscale's data plane)."""

    name: ClassVar[str] = "wireguard"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    protocols: ClassVar[tuple[str, ...]] = ("wireguard", "warp")
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 51820): "wireguard"}

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Check message type, size and reserved bytes; match indices across directions."""
        p = pkt.payload
        n = len(p)
        if n < 32:
            return REJECT
        mtype = p[0]
        st = flow.state.get("wireguard")
        if not 1 <= mtype <= 4 or (st is not None and st.c_init):
            if mtype in _WARP_TYPES or (st is not None and st.c_init):
                return self._warp_c(flow, st, p, direction)
            return REJECT
        if st is None:
            st = flow.state["wireguard"] = _State()
        if p[1] or p[2] or p[3]:
            reserved = p[1:4]
            if st.reserved[direction] and st.reserved[direction] != reserved:
                return REJECT
            st.reserved[direction] = reserved
            st.warp = True
        proto = "warp" if st.warp else "wireguard"
        warp_ev: tuple[str, ...] = (_WARP_EV,) if st.warp else ()
        if mtype in _SIZES:
            if n != _SIZES[mtype]:
                return REJECT
            if mtype == INITIATION:
                st.init_dir = direction
                st.idx[0] = unpack_from("<I", p, 4)[0]
                return self.verdict(proto, "heuristic", "handshake initiation (148 bytes)", *warp_ev)
            if mtype == RESPONSE:
                sender, receiver = unpack_from("<II", p, 4)
                if st.init_dir < 0 or direction == st.init_dir:
                    return self.verdict(proto, "heuristic", "handshake response (92 bytes)", *warp_ev)
                if receiver != st.idx[0]:
                    return REJECT
                st.idx[1] = sender
                st.handshake = True
                return self.verdict(proto, "confirmed", "handshake initiation (148 bytes)",
                                    "response (92 bytes) echoes the initiator's sender index", *warp_ev)
            return None  # cookie reply: under load; keep watching
        if mtype != TRANSPORT or (n - 16) % 16:
            return REJECT
        receiver, counter = unpack_from("<IQ", p, 4)
        if st.handshake:
            # Data towards the initiator carries the initiator's index, and vice versa.
            want = st.idx[0] if direction != st.init_dir else st.idx[1]
            if receiver == want:
                return self.verdict(proto, "confirmed", "handshake indices matched both ways",
                                    "transport data uses the negotiated receiver index", *warp_ev)
            return REJECT
        rx = st.data_rx[direction]
        if rx is None:
            st.data_rx[direction] = receiver
        elif rx != receiver or counter <= st.data_ctr[direction]:
            return REJECT
        st.data_ctr[direction] = counter
        st.data_n[direction] += 1
        if min(st.data_n) >= _DATA_MIN_EACH_WAY and st.data_rx[0] != st.data_rx[1]:
            return self.verdict(proto, "heuristic", "transport data both ways: stable receiver indices, "
                                "rising counters", *warp_ev)
        return None

    def _warp_c(self, flow: Flow, st: _State | None, p: bytes, direction: int) -> InspectResult:
        """Cloudflare's client: 0xC1 initiation, 0xC2 response with the client id, 0xC4 data."""
        mtype = p[0]
        if st is None:
            # Only a flow's first datagram, from its initiator, may open the exchange. QUIC Initials
            # look the same here (0xC0-0xCF, version 1 = three zero bytes) but never answer with a
            # non-zero "version" carrying a client id, which is what rejects them below.
            first = flow.payload_pkts[0] + flow.payload_pkts[1] == 1
            if (mtype != WARP_INITIATION or direction != 0 or not first or p[1] or p[2] or p[3]
                    or len(p) < _SIZES[INITIATION]):
                return REJECT
            st = flow.state["wireguard"] = _State(c_init=True)
            return None
        if mtype == WARP_INITIATION and direction == 0 and not st.c_id:
            return None  # retransmitted initiation
        if not (p[1] or p[2] or p[3]):
            return REJECT
        if mtype == WARP_RESPONSE and direction == 1 and not st.c_id and len(p) >= 92:
            st.c_id, st.c_idx = p[1:4], p[4:8]
            return self.verdict("warp", "heuristic", "0xC1 initiation answered by a 0xC2 response",
                                _WARP_EV, supersedes=frozenset({"quic"}))
        if mtype != WARP_TRANSPORT or not st.c_id or p[1:4] != st.c_id:
            return REJECT
        if direction == 0 and p[4:8] == st.c_idx:
            return self.verdict("warp", "confirmed", "0xC1 initiation answered by a 0xC2 response",
                                "0xC4 data carries the response's client id and sender index", _WARP_EV)
        return None
