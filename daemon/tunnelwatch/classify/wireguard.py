"""WireGuard over UDP: message types, their fixed sizes, and session indices matched across directions.

Messages: 1 handshake initiation (148 bytes), 2 handshake response (92), 3 cookie reply (64),
4 transport data (16-byte header + 16-byte-aligned ciphertext). Bytes 1-3 are reserved zeros.
An initiation answered by a response whose receiver index equals one of the initiator's sender indices
is confirmed; so are transport packets whose receiver indices match the indices exchanged in the
handshake. Transport data alone (a flow first seen mid-session: capture started late, handshake outside
the inspected window) is heuristic with two messages each way and confirmed with three each way: then the
fixed type and reserved bytes, a receiver index per direction and rising little-endian counters both ways
(see wgdata) have held on six messages, which nothing but WireGuard produces.

Datagrams that fit none of this are junk (see junk): a client may send any number of them before its
handshake, so they are counted and ignored instead of ending the classification; a few fake initiations
among them do not hide the real one either (up to `_MAX_INITS` initiator indices are remembered).

Cloudflare WARP modifies WireGuard and is reported as "warp": clients such as wgcf put a 3-byte client
id in the reserved bytes of otherwise standard messages (same sizes and index checks; the id must stay
the same per direction), and Cloudflare's own client uses message types 0xC1-0xC4 with handshakes of
other sizes: its 0xC1 initiation (reserved zero), a 0xC2 response carrying the client id and the
responder's index, then 0xC4 data from the initiator with that id and that index is confirmed.
"""

from __future__ import annotations

from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Confidence, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.junk import JunkGate, gate_alone
from tunnelwatch.classify.packet import UDP, Packet
from tunnelwatch.classify.wgdata import DataDir, data_fields

INITIATION: Final = 1
RESPONSE: Final = 2
COOKIE: Final = 3
TRANSPORT: Final = 4
WARP_INITIATION: Final = 0xC1
WARP_RESPONSE: Final = 0xC2
WARP_TRANSPORT: Final = 0xC4
_WARP_EV: Final = "reserved bytes carry a client id (Cloudflare WARP)"
_SIZES: Final = {INITIATION: 148, RESPONSE: 92, COOKIE: 64}
_DATA_HEURISTIC: Final = 2  # data messages each way for a heuristic verdict without a handshake
_DATA_CONFIRMED: Final = 3  # ... and for a confirmed one (a re-opened window is ~8 packets)
_SHORTEST: Final = 32  # the smallest message: a keepalive (transport data with no payload)
_MAX_INITS: Final = 8  # initiations remembered (retries, or fakes sent as junk before the real one)


class _State:
    __slots__ = ("c_dir", "c_id", "c_idx", "data", "gate", "handshake", "inits", "reserved", "resp_idx",
                 "warp")

    def __init__(self, gate: JunkGate) -> None:
        self.gate = gate
        #: sender indices of initiations seen -> the direction they came from and their reserved bytes
        self.inits: dict[int, tuple[int, bytes]] = {}
        self.handshake = False
        self.resp_idx = 0  # the responder's sender index once the handshake matched
        #: transport data without a handshake, per direction (made on the first data-shaped message)
        self.data: tuple[DataDir, DataDir] | None = None
        # WARP: the reserved bytes each direction uses (when not zero)
        self.warp = False
        self.reserved: list[bytes] = [b"", b""]
        # Cloudflare's 0xC1-0xC4 variant: initiation direction, client id and responder index
        self.c_dir = -1
        self.c_id = b""
        self.c_idx = b""


class WireGuard(Classifier):
    """WireGuard (and WireGuard-based apps such as Tailscale's data plane)."""

    name: ClassVar[str] = "wireguard"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    protocols: ClassVar[tuple[str, ...]] = ("wireguard", "warp")
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 51820): "wireguard"}

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Check message type, size and reserved bytes; match indices across directions; skip junk."""
        p = pkt.payload
        st = flow.state.get("wireguard")
        if type(st) is _State:
            if st.gate.first_look(p, direction):
                return REJECT  # both ends opened with one other protocol: a real exchange of it
        else:  # until a datagram of WireGuard's shape comes (_message calls the others junk)
            junk = len(p) < _SHORTEST or not (1 <= p[0] <= 4 or 0xC1 <= p[0] <= 0xC4)
            alone = gate_alone(flow, p, direction, junk)
            if not isinstance(alone, JunkGate):
                return alone
            st = flow.put_state("wireguard", _State(alone))
        r = self._message(st, p, direction)
        if r is None:
            return REJECT if st.gate.junk_seen() else None
        return None if isinstance(r, bool) else r

    def _message(self, st: _State, p: bytes, d: int) -> InspectResult | bool:
        """A verdict, True (a WireGuard message, nothing to say yet) or None (junk)."""
        n = len(p)
        if n < _SHORTEST:
            return None
        mtype = p[0]
        if mtype >= 0xC1:
            return self._warp_c(st, p, d) if mtype <= 0xC4 else None
        if not 1 <= mtype <= 4:
            return None
        reserved = p[1:4]
        if mtype in _SIZES:
            if n != _SIZES[mtype]:
                return None
        elif (n - 16) % 16 and n - 32 < 576:
            return None  # transport data: 16-byte blocks, or one MTU-cut full size (checked in DataDir)
        if reserved != b"\0\0\0" and st.reserved[d] and st.reserved[d] != reserved:
            return None  # WARP's client id is fixed per direction: a different one is junk
        if mtype == INITIATION:
            return self._initiation(st, p, d, reserved)
        if mtype == RESPONSE:
            return self._response(st, p, d, reserved)
        if mtype == COOKIE:
            return True  # cookie reply: the responder is under load; keep watching
        return self._transport(st, p, d, reserved)

    def _note_reserved(self, st: _State, d: int, reserved: bytes) -> None:
        if reserved != b"\0\0\0":
            st.reserved[d] = reserved
            st.warp = True

    def _ev(self, st: _State) -> tuple[str, tuple[str, ...]]:
        return ("warp", (_WARP_EV,)) if st.warp else ("wireguard", ())

    def _initiation(self, st: _State, p: bytes, d: int, reserved: bytes) -> InspectResult | bool:
        if st.handshake:
            return True  # a rekey: the handshake already matched
        if len(st.inits) >= _MAX_INITS:
            st.inits.pop(next(iter(st.inits)))
        st.inits[unpack_from("<I", p, 4)[0]] = (d, reserved)
        if reserved != b"\0\0\0":
            # Type 1 + any 3 bytes at 148 bytes: 1 in 256 random datagrams of that size (junk, a game's
            # fixed-size packets). Only the response's echo says it was WARP; alone it is not even a hunch.
            return True
        proto, ev = self._ev(st)
        return self.verdict(proto, "heuristic", "handshake initiation (148 bytes)", *ev)

    def _response(self, st: _State, p: bytes, d: int, reserved: bytes) -> InspectResult | bool:
        sender, receiver = unpack_from("<II", p, 4)
        if st.handshake:
            return True
        init = st.inits.get(receiver)
        if init is None or init[0] == d:
            if st.inits or reserved != b"\0\0\0":
                return None  # echoes no initiation of the other side (junk, a lookalike) or proves nothing
            self._note_reserved(st, d, reserved)
            proto, ev = self._ev(st)
            return self.verdict(proto, "heuristic", "handshake response (92 bytes)", *ev)
        self._note_reserved(st, d ^ 1, init[1])  # the initiation's client id, if any, makes this WARP
        self._note_reserved(st, d, reserved)
        st.handshake = True
        st.resp_idx = sender
        st.inits = {receiver: init}  # the matched initiation only: transport data is checked against it
        proto, ev = self._ev(st)
        return self.verdict(proto, "confirmed", "handshake initiation (148 bytes)",
                            "response (92 bytes) echoes the initiator's sender index", *ev)

    def _transport(self, st: _State, p: bytes, d: int, reserved: bytes) -> InspectResult | bool:
        fields = data_fields(p)
        if fields is None:
            return None
        _, receiver, counter = fields
        proto, ev = self._ev(st)
        if st.handshake:
            # Data towards the initiator carries the initiator's index, and vice versa.
            init_idx, (init_dir, _) = next(iter(st.inits.items()))
            if receiver == (init_idx if d != init_dir else st.resp_idx):
                self._note_reserved(st, d, reserved)
                return self.verdict(proto, "confirmed", "handshake indices matched both ways",
                                    "transport data uses the negotiated receiver index", *ev)
            return None
        # WARP's client id takes part in the type: it must stay the same per direction like the index
        mtype = TRANSPORT | int.from_bytes(reserved, "little") << 8
        if st.data is None:
            st.data = (DataDir(), DataDir())
        if not st.data[d].feed(mtype, receiver, counter, len(p)):
            return None
        self._note_reserved(st, d, reserved)
        a, b = st.data
        least = min(a.n, b.n)
        if least >= _DATA_HEURISTIC and a.rx != b.rx:
            proto, ev = self._ev(st)
            conf: Confidence = "confirmed" if least >= _DATA_CONFIRMED else "heuristic"
            return self.verdict(proto, conf, "transport data both ways: stable receiver indices, rising "
                                f"counters ({a.n}+{b.n} messages, handshake not seen)", *ev)
        return True

    def _warp_c(self, st: _State, p: bytes, d: int) -> InspectResult | bool:
        """Cloudflare's client: 0xC1 initiation, 0xC2 response with the client id, 0xC4 data."""
        mtype = p[0]
        zero = not (p[1] or p[2] or p[3])
        if mtype == WARP_INITIATION and zero and not st.c_id and len(p) >= _SIZES[INITIATION]:
            # QUIC Initials look the same here (0xC0-0xCF, version 1 = three zero bytes) but are never
            # answered by a non-zero "version" carrying a client id, which is what the response needs.
            st.c_dir = d
            return True
        if st.c_dir < 0 or zero:
            return None
        if mtype == WARP_RESPONSE and d != st.c_dir and not st.c_id and len(p) >= _SIZES[RESPONSE]:
            st.c_id, st.c_idx = p[1:4], p[4:8]
            return self.verdict("warp", "heuristic", "0xC1 initiation answered by a 0xC2 response",
                                _WARP_EV, supersedes=frozenset({"quic"}))
        if mtype != WARP_TRANSPORT or not st.c_id or p[1:4] != st.c_id:
            return None
        if d == st.c_dir and p[4:8] == st.c_idx:
            return self.verdict("warp", "confirmed", "0xC1 initiation answered by a 0xC2 response",
                                "0xC4 data carries the response's client id and sender index", _WARP_EV)
        return True
