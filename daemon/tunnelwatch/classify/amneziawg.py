"""AmneziaWG: WireGuard with its tell-tale constants changed, recognised from what its knobs cannot change.

AmneziaWG (amneziawg-go, AmneziaVPN) keeps WireGuard's messages and cryptography and adds, per interface:
Jc junk datagrams of Jmin..Jmax random bytes before every handshake initiation (and, from 1.5, up to five
"signature" datagrams I1..I5 that imitate QUIC, DNS, ...), S1/S2 random bytes prepended to the initiation
and the response (2.0 adds S3/S4 for cookie replies and transport data), and its own 32-bit message types
H1..H4 instead of 1..4 (2.0: a range per type, picked per message). Invariants that survive those knobs:

* The padding is prepended and the WireGuard message behind it has its fixed size, so an initiation is
  148 + S1 bytes with the initiator's sender index at S1 + 4, and a response is 92 + S2 bytes with the
  responder's sender index at S2 + 4 and the *receiver* index at S2 + 8: the offsets follow from the
  lengths alone, no search needed. A response whose receiver index equals the sender index of an
  initiation-sized datagram from the other side (and whose type differs from that initiation's, as H1
  and H2 must) is a handshake: 32 bits chosen at random by the initiator, echoed at an exact offset.
  Junk datagrams cannot hide it; every datagram of 148..1500 bytes is remembered as a possible
  initiation (a bounded number per direction). That alone is heuristic.
* Transport data after it carries the negotiated receiver index right after its type (behind S4 bytes
  of padding, searched within `_MAX_S4`) followed by a small little-endian counter: with that second
  32-bit match the handshake is confirmed.
* Seen mid-session (handshake missed): data messages are type (H4, the same value both ways) + receiver
  index (constant per direction, different between directions) + little-endian counter rising by small
  steps + ciphertext of 32 + 16n bytes (see wgdata). Three messages each way are heuristic, never more:
  the type is not a published constant. This needs S4 = 0 and one H4 value (AmneziaWG 1.x, 2.0 with
  fixed headers).

Not covered: AmneziaWG 3.x header protection (headers XORed with a keystream) leaves no cleartext field;
2.0 header ranges defeat the mid-session check (the handshake checks still hold). Plain WireGuard
(types 1..4, no padding) is left to the wireguard classifier.
"""

from __future__ import annotations

from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.junk import JunkGate, gate_alone
from tunnelwatch.classify.packet import UDP, Packet
from tunnelwatch.classify.wgdata import MIN_DATA, DataDir, both_ways, data_fields

INIT_SIZE: Final = 148
RESPONSE_SIZE: Final = 92
#: largest datagram considered as a padded initiation (S1 <= 1132 keeps it under 1280 in practice; S1 is
#: kept in 11 bits of a candidate's entry)
_MAX_INIT: Final = 1500
_SHORTEST: Final = min(MIN_DATA, RESPONSE_SIZE, INIT_SIZE)
#: possible initiations remembered per direction: the real one is the last large datagram before the
#: response (junk comes before it; a retry comes with fresh junk before it), a few more cover reordering
_MAX_CANDS: Final = 4
#: S4 padding searched in front of a transport message's header
_MAX_S4: Final = 64
#: a transport counter just after the handshake is below this
_EARLY_CTR: Final = 1 << 16
_DATA_LEAST: Final = 3


def _standard(mtype: int) -> bool:
    """WireGuard's own types (1..4) and Cloudflare's 0xC1..0xC4 (with a client id above): not ours."""
    low = mtype & 0xFF
    return 1 <= mtype <= 4 or 0xC1 <= low <= 0xC4


class _Handshake:
    __slots__ = ("init_dir", "init_idx", "resp_idx", "s1", "s2")

    def __init__(self, init_dir: int, init_idx: bytes, resp_idx: bytes, s1: int, s2: int) -> None:
        self.init_dir = init_dir
        self.init_idx = init_idx
        self.resp_idx = resp_idx
        self.s1 = s1
        self.s2 = s2


class _State:
    __slots__ = ("cands", "data", "gate", "hs")

    def __init__(self, gate: JunkGate) -> None:
        self.gate = gate
        #: per direction: initiation-sized datagrams as sender index << 43 | type << 11 | S1 (plain ints in a
        #: short list: this lives in every UDP flow being classified)
        self.cands: tuple[list[int], list[int]] = ([], [])
        self.hs: _Handshake | None = None
        self.data: tuple[DataDir, DataDir] | None = None  # made on the first data-shaped datagram


class AmneziaWG(Classifier):
    """AmneziaWG (obfuscated WireGuard: junk datagrams, padded handshakes, custom message types)."""

    name: ClassVar[str] = "amneziawg"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    protocols: ClassVar[tuple[str, ...]] = ("amneziawg",)

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Match padded handshakes by their echoed index; follow data messages; skip junk."""
        p = pkt.payload
        st = flow.state.get("amneziawg")
        if type(st) is _State:
            if st.gate.first_look(p, direction):
                return REJECT
        else:  # until a datagram long enough for a data message, response or initiation comes
            alone = gate_alone(flow, p, direction, len(p) < _SHORTEST)
            if not isinstance(alone, JunkGate):
                return alone
            st = flow.put_state("amneziawg", _State(alone))
        if st.hs is None:
            r = self._handshake(st, p, direction) or self._data(st, p, direction)
        else:
            r = self._after(st.hs, p, direction)
        if r is None and st.gate.junk_seen():
            return REJECT
        return r

    def _handshake(self, st: _State, p: bytes, d: int) -> InspectResult:
        n = len(p)
        if n >= RESPONSE_SIZE and not (n == RESPONSE_SIZE and p[0] == 2):
            s2 = n - RESPONSE_SIZE
            mtype, _, receiver = unpack_from("<III", p, s2)
            cand = next((c for c in st.cands[d ^ 1] if c >> 43 == receiver), None)
            if cand is not None and (cand >> 11) & 0xFFFFFFFF != mtype and not _standard(mtype):
                st.hs = _Handshake(d ^ 1, p[s2 + 8:s2 + 12], p[s2 + 4:s2 + 8], cand & 0x7FF, s2)
                st.cands = ([], [])
                return self.verdict("amneziawg", "heuristic", *self._hs_evidence(st.hs))
        if INIT_SIZE <= n <= _MAX_INIT and not (n == INIT_SIZE and p[0] == 1):
            s1 = n - INIT_SIZE
            mtype, sender = unpack_from("<II", p, s1)
            if not _standard(mtype):
                cands = st.cands[d]
                if len(cands) >= _MAX_CANDS:
                    del cands[0]
                cands.append(sender << 43 | mtype << 11 | s1)
        return None

    def _hs_evidence(self, hs: _Handshake) -> tuple[str, ...]:
        return (f"padded handshake: initiation {INIT_SIZE}+{hs.s1} bytes, response {RESPONSE_SIZE}+{hs.s2}",
                "response echoes the initiation's sender index at its offset; custom message types")

    def _after(self, hs: _Handshake, p: bytes, d: int) -> InspectResult:
        """Transport data after the handshake must carry the receiver index the handshake negotiated."""
        want = hs.resp_idx if d == hs.init_dir else hs.init_idx
        pos = p.find(want, 4, 8 + _MAX_S4)
        while pos >= 4:
            s4 = pos - 4
            body = len(p) - s4 - 32
            if (len(p) >= pos + 12 and unpack_from("<Q", p, pos + 4)[0] < _EARLY_CTR and body >= 0
                    and (body % 16 == 0 or body >= 576)):
                return self.verdict("amneziawg", "confirmed", *self._hs_evidence(hs),
                                    f"transport data carries the negotiated receiver index (S4={s4})")
            pos = p.find(want, pos + 1, 8 + _MAX_S4)
        return None

    def _data(self, st: _State, p: bytes, d: int) -> InspectResult:
        fields = data_fields(p)
        if fields is None or _standard(fields[0]):
            return None
        if st.data is None:
            st.data = (DataDir(), DataDir())
        if not st.data[d].feed(*fields, len(p)):
            return None
        if both_ways(st.data, _DATA_LEAST):
            a, b = st.data
            return self.verdict("amneziawg", "heuristic",
                                f"data messages both ways: type 0x{a.mtype:08x} both ways, a receiver index "
                                f"per direction, rising counters ({a.n}+{b.n} messages, handshake not seen)")
        return None
