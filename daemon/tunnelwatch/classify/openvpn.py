"""OpenVPN over UDP and TCP: TLS mode (plain, tls-auth, tls-crypt, tls-crypt-v2) and static-key mode.

Every OpenVPN packet starts with opcode<<3 | key_id, and every control packet carries its sender's
8-byte session id in clear right after it, whatever the tls-auth/tls-crypt wrapping. A flow is
confirmed when the client's hard reset is answered by a server hard reset and the session ids stay
consistent (or the server visibly acknowledges the client's session id). TCP adds a 2-byte length
prefix per packet. Static-key mode has no cleartext header at all: only its framing (HMAC + IV +
cipher blocks) can be seen, so it is heuristic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass, Verdict
from tunnelwatch.flow import Flow
from tunnelwatch.packet import TCP, UDP, Packet

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


@dataclass
class _State:
    client_sid: bytes = b""
    server_sid: bytes = b""
    client_reset: str = ""
    server_reset: bool = False
    server_first: bool = False
    acked: bool = False
    consistent: int = 0
    static_ok: list[int] = field(default_factory=lambda: [0, 0])
    static_lens: set[int] = field(default_factory=set)
    static_bad: bool = False
    tls_dead: bool = False
    tcp_buf: list[bytes] = field(default_factory=lambda: [b"", b""])
    #: 1 when the flow's first payload came from the responder (a capture or queue that started
    #: mid-handshake, after the SYN): the sender of the first payload is the OpenVPN client
    flip: int = 0
    tcp_records: int = 0  # on TCP the first *record* opens a session (a reset may span segments)


class OpenVPN(Classifier):
    """OpenVPN (UDP and TCP, TLS and static-key modes)."""

    name: ClassVar[str] = "openvpn"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP, TCP})
    protocols: ClassVar[tuple[str, ...]] = ("openvpn",)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 1194): "openvpn", (TCP, 1194): "openvpn"}

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Parse OpenVPN packets (records, on TCP) and cross-check the session ids of both ends."""
        st = flow.state.get("openvpn")
        if st is None:
            # Cheap first look before any state exists: most flows are not OpenVPN at all.
            p = pkt.payload
            if pkt.proto == TCP:
                if (len(p) < 3 or not _MIN_RESET - 2 <= ((p[0] << 8) | p[1]) <= 1700
                        or p[2] & 7 or p[2] >> 3 not in _RESETS):
                    return REJECT
            elif not (p[0] & 7 == 0 and p[0] >> 3 in _RESETS) and (
                    len(p) < _STATIC_OVERHEAD + 16 or (len(p) - _STATIC_OVERHEAD) % 16):
                return REJECT
            st = flow.state["openvpn"] = _State()
            if flow.payload_pkts[direction] == 1 and not flow.payload_pkts[direction ^ 1]:
                st.flip = direction
        direction ^= st.flip
        # Only the flow's first payload packet may open a TLS-mode session: later packets of other
        # traffic (static-key ciphertext, random UDP) start with a reset-like byte 3 times in 256.
        first = flow.payload_pkts[0] + flow.payload_pkts[1] == 1
        if pkt.proto == TCP:
            return self._tcp(st, pkt.payload, direction)
        p = pkt.payload
        static = self._static(st, p, direction)  # static-key framing is tracked on every datagram
        if not st.tls_dead:
            r = self._packet(st, p, direction, "udp", first)
            if r is not REJECT:
                return r
            st.tls_dead = True
        return static

    def _tcp(self, st: _State, data: bytes, direction: int) -> InspectResult:
        buf = st.tcp_buf[direction] + data
        if len(buf) > 4096:  # never buffer much: a real OpenVPN record fits well below this
            return REJECT
        result: InspectResult = None
        while len(buf) >= 2:
            plen = (buf[0] << 8) | buf[1]
            if plen < _MIN_RESET - 2 or plen > 1700:
                return REJECT
            if len(buf) < 2 + plen:
                break
            rec, buf = buf[2:2 + plen], buf[2 + plen:]
            result = self._packet(st, rec, direction, "tcp", st.tcp_records == 0)
            st.tcp_records += 1
            if result is REJECT or (isinstance(result, Verdict) and result.final):
                return result
        st.tcp_buf[direction] = buf
        return result

    def _packet(self, st: _State, p: bytes, direction: int, tr: str, first: bool) -> InspectResult:
        if len(p) < 1:
            return None
        op, key_id = p[0] >> 3, p[0] & 7
        if not st.client_reset and not st.server_reset:
            if not first or key_id != 0 or direction != 0:
                return REJECT
            layout = reset_layout(p)
            if op in _CLIENT_RESETS and layout:
                st.client_sid = p[1:9]
                st.client_reset = f"{OPCODE_NAMES[op]} ({layout})"
                return self.verdict("openvpn", "heuristic", f"{tr} client {st.client_reset}")
            if op in _SERVER_RESETS and layout:
                # Capture on the far side of a NAT or started late: only the server's half is here.
                st.server_first = st.server_reset = True
                st.server_sid = p[1:9]
                return None
            return REJECT
        if st.server_first:
            if op in _CONTROL and key_id == 0 and direction == 0 and p[1:9] == st.server_sid:
                st.consistent += 1
                return self.verdict("openvpn", "heuristic", f"{tr} server HARD_RESET_SERVER first",
                                    f"server session id consistent in {st.consistent} control packet(s)")
            return None if op in (P_DATA_V1, P_DATA_V2) or direction == 1 else REJECT
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
            return REJECT
        if op in (P_DATA_V1, P_DATA_V2) and st.server_reset:
            return None
        if op in _CLIENT_RESETS and direction == 0 and p[1:9] == st.client_sid:
            return None  # retransmitted reset
        return REJECT

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
        st.static_lens.add(n)
        if min(st.static_ok) >= _STATIC_MIN_PKTS and len(st.static_lens) >= 2:
            return self.verdict(
                "openvpn", "heuristic",
                f"static-key framing (HMAC+IV+16-byte blocks) on {sum(st.static_ok)} packets both ways",
            )
        return None


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
