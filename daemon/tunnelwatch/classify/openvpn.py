"""OpenVPN over UDP and TCP: TLS mode (plain, tls-auth, tls-crypt, tls-crypt-v2) and static-key mode.

Every OpenVPN packet starts with opcode<<3 | key_id, and every control packet carries its sender's
8-byte session id in clear right after it, whatever the tls-auth/tls-crypt wrapping. A flow is
confirmed when the client's hard reset is answered by a server hard reset and the session ids stay
consistent (or the server visibly acknowledges the client's session id). TCP adds a 2-byte length
prefix per packet. Static-key mode has no cleartext header at all: only its framing (HMAC + IV +
cipher blocks) can be seen, so it is heuristic.

Over UDP, datagrams that fit none of this are junk (see junk): a client may send any number before its
hard reset, so they are counted and ignored; the session still has to be opened by a client hard reset
whose layout fits (32+ fixed bits, see reset_layout) and confirmed by the server's answer, so tolerating
junk adds no way to be confirmed by accident. A UDP flow first seen mid-session is recognised from its
data channel (see openvpn_data). Over TCP each direction's stream is reassembled from byte 0 in arrival
order (bounded by `_TCP_MAX`), so a length prefix in its own segment or a record cut into 1- and 2-byte
segments parses like one write; a TCP stream is never junk-tolerant: its first bytes must be a record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass, Verdict
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.junk import JunkGate, gate_alone, shared_before
from tunnelwatch.classify.openvpn_data import DataDir, data_evidence
from tunnelwatch.classify.packet import TCP, UDP, Packet

P_CONTROL_HARD_RESET_CLIENT_V1: Final = 1
P_CONTROL_HARD_RESET_SERVER_V1: Final = 2
P_CONTROL_SOFT_RESET_V1: Final = 3
P_CONTROL_V1: Final = 4
P_ACK_V1: Final = 5
P_DATA_V1: Final = 6
P_CONTROL_HARD_RESET_CLIENT_V2: Final = 7
P_CONTROL_HARD_RESET_SERVER_V2: Final = 8
P_DATA_V2: Final = 9
P_CONTROL_HARD_RESET_CLIENT_V3: Final = 10
P_CONTROL_WKC_V1: Final = 11

OPCODE_NAMES: Final = {
    1: "HARD_RESET_CLIENT_V1", 2: "HARD_RESET_SERVER_V1", 3: "SOFT_RESET_V1", 4: "CONTROL_V1",
    5: "ACK_V1", 6: "DATA_V1", 7: "HARD_RESET_CLIENT_V2", 8: "HARD_RESET_SERVER_V2", 9: "DATA_V2",
    10: "HARD_RESET_CLIENT_V3", 11: "CONTROL_WKC_V1",
}
_CLIENT_RESETS: Final = frozenset({1, 7, 10})
_SERVER_RESETS: Final = frozenset({2, 8})
_CONTROL: Final = frozenset({3, 4, 5, 11})
_RESETS: Final = _CLIENT_RESETS | _SERVER_RESETS
# Smallest hard reset: opcode + session id + ack len + packet id = 14 bytes. The largest
# (tls-crypt-v2 with a wrapped client key) stays well under 1400.
_MIN_RESET: Final = 14
_MAX_RESET: Final = 1400
# Static key: HMAC-SHA1 (20) + IV (16) + CBC ciphertext holding at least packet id + time (16).
_STATIC_OVERHEAD: Final = 36
_STATIC_MIN_PKTS: Final = 4
_TIME_MIN: Final = 1_420_070_400  # 2015-01-01: replay timestamps are Unix times
_TIME_MAX: Final = 4_102_444_800  # 2100-01-01
#: bytes of one direction's TCP stream buffered while its records are incomplete (a record is <= 1702)
_TCP_MAX: Final = 2048
_DATA_LEAST: Final = 3  # P_DATA packets each way before a data-channel verdict


@dataclass(slots=True)
class _State:
    client_sid: bytes = b""
    server_sid: bytes = b""
    client_reset: str = ""
    server_reset: bool = False
    server_first: bool = False
    acked: bool = False
    consistent: int = 0
    static_ok: list[int] = field(default_factory=lambda: [0, 0])
    static_len: int = 0  # the first static-key-framed length seen
    static_var: bool = False  # and whether another one followed (a set would cost ~200 bytes a flow)
    static_bad: bool = False
    tcp_buf: list[bytes] | None = None  # TCP only: made on the first segment (UDP states are many)
    #: 1 when the flow's first payload came from the responder (a capture or queue that started
    #: mid-handshake, after the SYN): the sender of the first payload is the OpenVPN client
    flip: int = 0
    tcp_records: int = 0  # on TCP the first *record* opens a session (a reset may span segments)
    tcp_checked: bool = False  # the stream's first 3 bytes passed the cheap look
    gate: JunkGate | None = None  # UDP only
    data: tuple[DataDir, DataDir] | None = None  # UDP P_DATA channel, made on the first P_DATA-shaped one
    static_said: bool = False  # the static-key framing gave a verdict


def _tcp_start(buf: bytes) -> bool:
    """Whether a TCP stream's first 3 bytes (length prefix + opcode) may open an OpenVPN session."""
    plen = (buf[0] << 8) | buf[1]
    return _MIN_RESET - 2 <= plen <= 1700 and not buf[2] & 7 and buf[2] >> 3 in _RESETS


class OpenVPN(Classifier):
    """OpenVPN (UDP and TCP, TLS and static-key modes)."""

    name: ClassVar[str] = "openvpn"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP, TCP})
    first_on: ClassVar[frozenset[int]] = frozenset({TCP})
    protocols: ClassVar[tuple[str, ...]] = ("openvpn",)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 1194): "openvpn", (TCP, 1194): "openvpn"}

    def first(self, pkt: Packet, direction: int) -> bool:
        """On TCP: too short to tell, or a length prefix and opcode that may open a session."""
        p = pkt.payload
        return len(p) < 3 or _tcp_start(p)

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Parse OpenVPN packets (records, on TCP) and cross-check the session ids of both ends."""
        st = flow.state.get("openvpn")
        if pkt.proto == UDP:
            p = pkt.payload
            if type(st) is _State:
                return self._udp(flow, st, p, direction)
            # until a datagram that _udp would not count as junk comes; junk before it also stands for
            # "static-key framing already broken" (the first junk datagram broke it)
            junk = _junk(p, direction, True)
            before = 0 if junk else shared_before(flow, direction)  # junk to the fresh is junk to all
            if before:
                junk = _junk(p, direction, False)
            alone = gate_alone(flow, p, direction, junk)
            if not isinstance(alone, JunkGate):
                return alone
            st = flow.put_state("openvpn", _State(gate=alone, static_bad=before > 0))
            return self._udp(flow, st, p, direction, looked=True)
        if st is None:
            if not self.first(pkt, direction):
                return REJECT  # the cheap look of _tcp on a fresh stream, before any state is made
            st = flow.put_state("openvpn", _State())
            pay = flow.payload_pkts
            if pay[direction] == 1 and not pay[direction ^ 1]:
                st.flip = direction
        return self._tcp(st, pkt.payload, direction ^ st.flip)

    def _udp(self, flow: Flow, st: _State, p: bytes, direction: int, looked: bool = False) -> InspectResult:
        gate = st.gate
        assert gate is not None  # made with the state on UDP
        if not looked and gate.first_look(p, direction):
            return REJECT  # both ends opened with one other protocol: a real exchange of it
        # A server reset may open a session only as the flow's first datagram (a capture started late);
        # a client reset may follow any amount of junk: its layout is what keeps random data out.
        first = flow.pay0 + flow.pay1 == 1
        static_alive = not st.static_bad
        static = self._static(st, p, direction)  # static-key framing is tracked on every datagram
        tls = self._packet(st, p, direction, "udp", first, tolerant=True)
        if tls is REJECT:
            return REJECT
        data = self._data(st, p, direction)
        best: Verdict | None = None
        for r in (tls, data, static):
            if isinstance(r, Verdict) and r.beats(best):
                best = r
        if best is not None:
            return best
        if static_alive and static is REJECT and st.static_said and not st.client_reset and not data:
            return REJECT  # framing it called static-key broke: withdraw that verdict
        if tls is False and data is False and static is REJECT and gate.junk_seen():
            return REJECT
        return None

    def _data(self, st: _State, p: bytes, direction: int) -> Verdict | bool:
        """P_DATA both ways without a handshake (mid-session), see openvpn_data; False: not P_DATA."""
        if st.server_reset or not p or p[0] >> 3 not in (P_DATA_V1, P_DATA_V2):
            return False
        if st.data is None:
            st.data = (DataDir(), DataDir())
        if not st.data[direction].feed(p):
            return False
        confirmed, ev = data_evidence(st.data[0], st.data[1], _DATA_LEAST)
        if not ev:
            return True
        return self.verdict("openvpn", "confirmed" if confirmed else "heuristic", ev)

    def _tcp(self, st: _State, data: bytes, direction: int) -> InspectResult:
        bufs = st.tcp_buf
        if bufs is None:
            bufs = st.tcp_buf = [b"", b""]
        buf = bufs[direction] + data
        if not st.tcp_checked:
            # Cheap first look at the stream's first 3 bytes (length prefix + opcode), however the first
            # write was cut into segments: most TCP flows are not OpenVPN at all.
            if len(buf) < 3:
                bufs[direction] = buf
                return None
            if not _tcp_start(buf):
                return REJECT
            st.tcp_checked = True
        if len(buf) > _TCP_MAX:  # never buffer much: a real OpenVPN record fits well below this
            return REJECT
        result: InspectResult = None
        while len(buf) >= 2:
            plen = (buf[0] << 8) | buf[1]
            if plen < _MIN_RESET - 2 or plen > 1700:
                return REJECT
            if len(buf) < 2 + plen:
                break
            rec, buf = buf[2:2 + plen], buf[2 + plen:]
            r = self._packet(st, rec, direction, "tcp", st.tcp_records == 0)
            result = None if isinstance(r, bool) else r  # not tolerant: never junk (False)
            st.tcp_records += 1
            if result is REJECT or (isinstance(result, Verdict) and result.final):
                return result
        bufs[direction] = buf
        return result

    def _packet(self, st: _State, p: bytes, direction: int, tr: str, first: bool,
                tolerant: bool = False) -> InspectResult | bool:
        """One OpenVPN packet of the TLS mode. What does not fit is junk (False) when `tolerant` (UDP),
        else REJECT (a TCP stream is records from byte 0 or not OpenVPN)."""
        bad: InspectResult | bool = False if tolerant else REJECT
        if len(p) < 1:
            return None
        op, key_id = p[0] >> 3, p[0] & 7
        if not st.client_reset and not st.server_reset:
            if key_id != 0 or direction != 0 or not (first or tolerant):
                return bad
            layout = reset_layout(p)
            if op in _CLIENT_RESETS and layout:
                st.client_sid = p[1:9]
                st.client_reset = f"{OPCODE_NAMES[op]} ({layout})"
                return self.verdict("openvpn", "heuristic", f"{tr} client {st.client_reset}")
            if op in _SERVER_RESETS and layout and first:
                # Capture on the far side of a NAT or started late: only the server's half is here.
                st.server_first = st.server_reset = True
                st.server_sid = p[1:9]
                return None
            return bad
        if st.server_first:
            if op in _CONTROL and key_id == 0 and direction == 0 and p[1:9] == st.server_sid:
                st.consistent += 1
                return self.verdict("openvpn", "heuristic", f"{tr} server HARD_RESET_SERVER first",
                                    f"server session id consistent in {st.consistent} control packet(s)")
            return None if op in (P_DATA_V1, P_DATA_V2) or direction == 1 else bad
        if direction == 1 and op in _SERVER_RESETS and key_id == 0 and reset_layout(p):
            sid = p[1:9]
            if sid == st.client_sid:
                return REJECT  # a server echoing the client's own id is not OpenVPN
            st.server_sid = sid
            st.server_reset = True
            if st.client_sid and st.client_sid in p[9:]:
                st.acked = True
                return self._confirmed(st, tr)
            return None
        if op in _CONTROL and key_id == 0 and len(p) >= 9:
            sid = p[1:9]
            if (direction == 0 and sid == st.client_sid) or (direction == 1 and st.server_sid and
                                                             sid == st.server_sid):
                st.consistent += 1
                if st.server_reset:
                    return self._confirmed(st, tr)
                return self.verdict("openvpn", "heuristic", f"{tr} client {st.client_reset}",
                                    f"client session id consistent in {st.consistent} control packet(s)")
            return bad
        if op in (P_DATA_V1, P_DATA_V2) and st.server_reset:
            return None
        if op in _CLIENT_RESETS and direction == 0 and p[1:9] == st.client_sid:
            return None  # retransmitted reset
        return bad

    def _confirmed(self, st: _State, tr: str) -> InspectResult:
        ev = [f"{tr} client {st.client_reset}", "server HARD_RESET_SERVER"]
        if st.acked:
            ev.append("server acks client session id")
        if st.consistent:
            ev.append(f"session ids consistent in {st.consistent} control packet(s)")
        return self.verdict("openvpn", "confirmed", *ev)

    def _static(self, st: _State, p: bytes, direction: int) -> InspectResult:
        """Static-key mode: every packet is HMAC-SHA1 + IV + whole cipher blocks, both ways."""
        if st.static_bad:
            return REJECT
        n = len(p)
        if n < _STATIC_OVERHEAD + 16 or (n - _STATIC_OVERHEAD) % 16 or _looks_plain(p):
            st.static_bad = True
            return REJECT
        st.static_ok[direction] += 1
        if not st.static_len:
            st.static_len = n
        elif n != st.static_len:
            st.static_var = True
        if min(st.static_ok) >= _STATIC_MIN_PKTS and st.static_var:
            st.static_said = True
            return self.verdict(
                "openvpn", "heuristic",
                f"static-key framing (HMAC+IV+16-byte blocks) on {sum(st.static_ok)} packets both ways",
            )
        return None


def _junk(p: bytes, direction: int, static_too: bool) -> bool:
    """Whether _udp counts this datagram as junk and changes nothing else for it, on a flow that showed
    nothing yet: no client reset (from the client, key id 0), not P_DATA-shaped, and (`static_too`, when
    the static-key framing is still alive) no static-key framing either."""
    b0 = p[0]
    if not (b0 & 7 or direction or b0 >> 3 not in _RESETS) or b0 >> 3 in (P_DATA_V1, P_DATA_V2):
        return False
    n = len(p)
    return not static_too or n < _STATIC_OVERHEAD + 16 or bool((n - _STATIC_OVERHEAD) % 16) or _looks_plain(p)


def reset_layout(p: bytes) -> str:
    """Which control-channel wrapping a hard reset fits ('plain', 'tls-auth', 'tls-crypt'), or ''.

    A first reset's reliability-layer message id is 0 and, with tls-auth/tls-crypt, its replay
    packet id is 1: together 32+ fixed bits that ciphertext and random data almost never match.
    """
    n = len(p)
    if not (_MIN_RESET <= n <= _MAX_RESET):
        return ""
    acks = p[9]
    end = 10 + 4 * acks + (8 if acks else 0)
    if acks <= 8 and n >= end + 4 and p[end:end + 4] == b"\0\0\0\0":
        return "plain"
    # tls-crypt(-v2): replay packet id then a Unix time in clear; OpenVPN 2.6's tls-crypt-v2 client
    # sets high bits of the packet id (seen: 0x0a010001), so only its low half must be 1.
    if (n >= 9 + 8 + 32 and p[11:13] == b"\0\x01"
            and _TIME_MIN <= int.from_bytes(p[13:17], "big") <= _TIME_MAX):
        return "tls-crypt"
    for h in (16, 20, 28, 32, 48, 64):  # HMAC sizes: MD5 .. SHA512
        if n >= 22 + h and p[9 + h:13 + h] == b"\0\0\0\x01":
            acks = p[17 + h]
            end = 18 + h + 4 * acks + (8 if acks else 0)
            if acks <= 8 and n >= end + 4 and p[end:end + 4] == b"\0\0\0\0":
                return "tls-auth"
    return ""


def _looks_plain(p: bytes) -> bool:
    """True when the start of the packet is mostly zero or printable (i.e. not ciphertext)."""
    head = p[:32]
    printable = sum(1 for b in head if 32 <= b < 127 or b == 0)
    return printable > len(head) * 3 // 4
