"""OpenVPN under XOR obfuscation ("xor patch", provider "scramble"/"obfuscated" servers), UDP and TCP.

Implements the two passive fingerprints of Xue et al., "OpenVPN is Open to VPN Fingerprinting" (USENIX
Security 2022), which survive a per-packet XOR with a fixed key because the first byte of every packet
(opcode << 3 | key_id) still maps to one value per opcode:

- opcode pattern: the client's first packet (hard reset) and the server's first packet (hard reset) each
  appear once, and what follows uses only a few other values (P_CONTROL, P_ACK, later P_DATA): at least 4
  and, in the first packets, at most 6 distinct first bytes in all;
- ACK size: pure P_ACK packets are small and repeat with sizes that differ only by whole 4-byte packet ids
  (their ack array, at most 8 ids), while the control packets beside them carry the much larger TLS
  records. Their size is 18 + 4 x ids plus the tls-auth/tls-crypt wrapping (an HMAC of 16/20/32/64 bytes +
  8, or 40), so always 2 modulo 4.

TCP keeps OpenVPN's 2-byte record length in clear (the patch XORs the record, not the framing), so records
are reassembled first. Cleartext opcodes are left to the openvpn classifier, which confirms them; this
one only reports "heuristic" and never looks past its packet budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from tunnelwatch.classify.base import DONE, REJECT, Classifier, Context, InspectResult, Klass, Verdict
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, UDP, Packet

NAME: Final = "openvpn_obfs"
# Smallest record: opcode + session id + ack count + packet id (a plain reset) = 14 bytes. A reset stays
# below 1200: a first QUIC datagram is at least 1200, so QUIC is refused on its first packet.
_MIN_REC: Final = 14
_MAX_RESET: Final = 1200
_MAX_REC: Final = 1700
_MAX_BUF: Final = 4096
# P_ACK: opcode + session id + ack count + >= 1 packet id + remote session id (22), plus tls-auth/crypt
_ACK_MIN: Final = 22
_ACK_MAX: Final = 300
_ACK_SPREAD: Final = 28  # 1 to 8 packet ids in one ack array
_MIN_AFTER: Final = 4  # records after the two resets before the pattern may be judged
_MAX_OTHER: Final = 4  # distinct non-reset first bytes: CONTROL, ACK, DATA_V2 (+ DATA_V1 / SOFT_RESET)
_MAX_RETX: Final = 3
# Cleartext hard resets with key id 0: the openvpn classifier's business, not an obfuscated flow.
_PLAIN_CLIENT: Final = frozenset({1 << 3, 7 << 3, 10 << 3})
_PLAIN_SERVER: Final = frozenset({2 << 3, 8 << 3})


# The resets part of the state (which direction is the client's, the client's and the server's reset,
# retransmits of them) packed in one int. On UDP, until a third record comes, that int is the flow's whole
# state: this state lives in most UDP flows while they are classified, and an ordinary flow (a datagram
# each way) never needs more, so it costs 32 bytes there instead of a _State (72 bytes; 112 when these
# were six fields of it). TCP makes its _State at once (it needs the record buffers). Bits, low to high:
#   client direction (1) | retransmits (2) | client reset: first byte (8), size (11) | server reset: same
# A size of 0 means that reset has not come yet (a record has at least _MIN_REC bytes, at most _MAX_REC).
_ONE_RETX: Final = 1 << 1
_BREAKS: Final = -1  # _reset: the record breaks the pattern
_NOT_A_RESET: Final = -2  # _reset: both resets are in and the record is neither (a third record)


def _unpack(r: int) -> tuple[int, int, int, int, int, int]:
    """client_dir, retx, c, c_len, s, s_len of the packed resets (see above)."""
    return r & 1, r >> 1 & 3, r >> 3 & 0xFF, r >> 11 & 0x7FF, r >> 22 & 0xFF, r >> 30 & 0x7FF


def _reset(r: int, b: int, n: int, direction: int) -> int:
    """The packed resets `r` with the record (first byte b, n >= _MIN_REC bytes) taken as a reset or a
    retransmitted copy of one; _BREAKS or _NOT_A_RESET when it is neither. (Fields are read as needed, not
    with _unpack: this runs on most UDP flows' first datagrams.)"""
    c_len = r >> 11 & 0x7FF
    if not c_len:
        return r | b << 3 | n << 11
    c = r >> 3 & 0xFF
    s_len = r >> 30
    if not s_len:
        if direction == r & 1:
            # before the server answers, the client may only retransmit its reset
            if b == c and n == c_len and (r >> 1 & 3) < _MAX_RETX:
                return r + _ONE_RETX
            return _BREAKS
        # the same first byte both ways (DNS ids, DTLS, RTP, game headers) is not a reset pair
        if b == c or n >= _MAX_RESET or (c in _PLAIN_CLIENT and b in _PLAIN_SERVER):
            return _BREAKS
        return r | b << 22 | n << 30
    s = r >> 22 & 0xFF
    if b in (c, s):
        # resets appear once; only a retransmitted copy of one is allowed
        if n == (c_len if b == c else s_len) and (r >> 1 & 3) < _MAX_RETX:
            return r + _ONE_RETX
        return _BREAKS
    return _NOT_A_RESET


@dataclass(slots=True)
class _State:
    resets: int  # packed as described above _unpack
    after: int = 0
    fired: bool = False
    #: first byte -> sizes of the records that started with it (bounded by the packet budget); made on
    #: first use, like the TCP buffers
    sizes: dict[int, list[int]] | None = None
    tcp_buf: list[bytes] | None = None  # TCP only


class OpenVPNObfs(Classifier):
    """XOR-obfuscated OpenVPN from its opcode pattern and ACK sizes (Xue et al. 2022)."""

    name: ClassVar[str] = NAME
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP, TCP})
    first_on: ClassVar[frozenset[int]] = frozenset({UDP, TCP})
    protocols: ClassVar[tuple[str, ...]] = ("openvpn",)

    def first(self, pkt: Packet, direction: int) -> bool:
        """A first record (TCP: its length prefix; UDP: the datagram) sized as a reset may be."""
        p = pkt.payload
        if pkt.proto == TCP:
            return len(p) >= 2 and _MIN_REC <= ((p[0] << 8) | p[1]) < _MAX_RESET
        return _MIN_REC <= len(p) < _MAX_RESET

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Follow the first byte and size of each record; judge once both resets and a few more are in."""
        st = flow.state.get(NAME)
        p = pkt.payload
        if pkt.proto == UDP:
            if st is None:
                # cheap refusal of the common case: QUIC and tiny datagrams
                if not self.first(pkt, direction):
                    return REJECT
                flow.put_state(NAME, _reset(direction, p[0], len(p), direction))
                return None
            if type(st) is int:  # the resets alone so far (see _reset): the full state on a third record
                if len(p) < _MIN_REC:
                    return REJECT
                r = _reset(st, p[0], len(p), direction)
                if r == _BREAKS:
                    return REJECT
                if r != _NOT_A_RESET:
                    flow.put_state(NAME, r)
                    return None
                st = flow.put_state(NAME, _State(st))
            elif st.fired:
                return DONE
            return self._record(st, p, direction)
        if st is None:
            # cheap refusal of the common case: TLS/HTTP/SSH lengths
            if not self.first(pkt, direction):
                return REJECT
            st = flow.put_state(NAME, _State(direction))
        elif st.fired:
            return DONE
        if st.tcp_buf is None:
            st.tcp_buf = [b"", b""]
        buf = st.tcp_buf[direction] + p
        if len(buf) > _MAX_BUF:
            return REJECT
        result: InspectResult = None
        while len(buf) >= 2:
            n = (buf[0] << 8) | buf[1]
            if not _MIN_REC <= n <= _MAX_REC:
                return REJECT
            if len(buf) < 2 + n:
                break
            result = self._record(st, buf[2:2 + n], direction)
            buf = buf[2 + n:]
            if result is not None:
                return result
        st.tcp_buf[direction] = buf
        return result

    def _record(self, st: _State, rec: bytes, direction: int) -> InspectResult:
        n = len(rec)
        if n < _MIN_REC:
            return REJECT
        r = _reset(st.resets, rec[0], n, direction)
        if r == _BREAKS:
            return REJECT
        if r != _NOT_A_RESET:
            st.resets = r
            return None
        b = rec[0]
        by_first = st.sizes
        if by_first is None:
            by_first = st.sizes = {}
        by_first.setdefault(b, []).append(n)
        if len(by_first) > _MAX_OTHER:
            return REJECT
        st.after += 1
        # OpenVPN repeats CONTROL and ACK: at least two records reuse a value (random first bytes rarely do)
        if st.after < _MIN_AFTER or len(by_first) < 2 or st.after - len(by_first) < 2:
            return None
        # The server's reset acks the client's (one packet id + the client's session id: 12 bytes more):
        # with that cross-check, one ACK record is enough (over TCP, pure TCP ACKs eat the packet budget).
        _, _, _, c_len, _, s_len = _unpack(st.resets)
        acked = s_len == c_len + 12
        ack = self._ack_value(by_first, 1 if acked else 2)
        if ack is None:
            return None
        st.fired = True
        return self._verdict(st, by_first, ack)

    @staticmethod
    def _ack_value(by_first: dict[int, list[int]], need: int) -> int | None:
        """The value whose records look like P_ACK: `need` or more, small, sizes apart by whole packet ids,
        and much smaller than the largest control record."""
        for v, sizes in by_first.items():
            if len(sizes) < need:
                continue
            lo, hi = min(sizes), max(sizes)
            if lo < _ACK_MIN or hi > _ACK_MAX or hi - lo > _ACK_SPREAD or any(s % 4 != 2 for s in sizes):
                continue
            if any(max(o) > hi + 64 for w, o in by_first.items() if w != v):
                return v
        return None

    def _verdict(self, st: _State, by_first: dict[int, list[int]], ack: int) -> Verdict:
        _, _, c, c_len, s, s_len = _unpack(st.resets)
        sizes = by_first[ack]
        lo, hi = min(sizes), max(sizes)
        span = f"{lo} bytes" if lo == hi else f"{lo}-{hi} bytes in 4-byte steps"
        n = f"{len(sizes)} ACK record{'s' if len(sizes) > 1 else ''}"
        ev = [
            "opcode pattern of OpenVPN under XOR obfuscation",
            f"client reset 0x{c:02x} and server reset 0x{s:02x} once each, then "
            f"{len(by_first)} other values in {st.after} records",
            f"ACK-size fingerprint: {n} (0x{ack:02x}) of {span}",
        ]
        if s_len == c_len + 12:
            ev.append("server reset 12 bytes longer than the client's (acks it: packet id + session id)")
        return self.verdict("openvpn", "heuristic", *ev)
