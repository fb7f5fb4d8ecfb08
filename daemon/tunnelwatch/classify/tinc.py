"""Tinc: the TCP meta connection's cleartext ID lines, and the UDP data flows it announces.

Both ends of a tinc meta connection open with an ID request in clear, "0 <node name> 17\\n" (tinc 1.0;
tinc 1.1 adds a minor version, "17.7"); tinc 1.0 follows it with a cleartext METAKEY line ("1 <cipher>
<digest> <maclength> <compression> <hex key>\\n") and everything after that is encrypted. ID lines both
ways are confirmed. Tinc's UDP data packets are ciphertext with no cleartext header, so they are
recognised through the meta connection: its responder's port is also that node's UDP port, which a
confirmed meta connection announces (the same pairing nDPI uses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, UDP, Packet

PROTOCOL: Final = "tinc"
_MAX_LINE: Final = 128  # node names are short; a longer first line is not a tinc ID request
_MIN_UDP: Final = 12  # sequence number + at least a cipher block + MAC
_NAME_CHARS: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_DIGITS: Final = frozenset(b"0123456789")


@dataclass(slots=True)
class _State:
    buf: list[bytes] = field(default_factory=lambda: [b"", b""])
    version: list[str] = field(default_factory=lambda: ["", ""])


def id_line(line: bytes) -> str:
    """The protocol version of a tinc ID request line (without its newline), e.g. '17' or '17.7', or ''."""
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] != b"0" or not parts[1] or not set(parts[1]) <= _NAME_CHARS:
        return ""
    major, _, minor = parts[2].partition(b".")
    if major != b"17" or (minor and not set(minor) <= _DIGITS) or len(minor) > 3:
        return ""
    return parts[2].decode("ascii")


def metakey_prefix(data: bytes) -> bool:
    """True when data starts like a tinc 1.0 METAKEY line: '1' then four decimal numbers then hex."""
    parts = data[:64].split(b" ", 5)
    if len(parts) < 6 or parts[0] != b"1":
        return False
    if not all(p and set(p) <= _DIGITS and len(p) <= 6 for p in parts[1:5]):
        return False
    key = parts[5].split(b"\n", 1)[0]
    return bool(key) and all(c in b"0123456789ABCDEFabcdef" for c in key)


class Tinc(Classifier):
    """Tinc VPN (TCP meta connection; UDP data paired with a confirmed meta connection)."""

    name: ClassVar[str] = "tinc"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({TCP, UDP})
    first_on: ClassVar[frozenset[int]] = frozenset({TCP, UDP})
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {TCP: frozenset(b"0"), UDP: frozenset()}
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    ports: ClassVar[dict[tuple[int, int], str]] = {(TCP, 655): PROTOCOL, (UDP, 655): PROTOCOL}

    def first(self, pkt: Packet, direction: int) -> bool:
        """On TCP an ID request line; on UDP never (only a flow a meta connection announced may be tinc,
        and the engine asks only flows nothing announced)."""
        return pkt.proto == TCP and pkt.payload[:2] == b"0 "

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """ID lines on TCP; on UDP only data to or from a node a confirmed meta connection announced."""
        p = pkt.payload
        if pkt.proto == UDP:
            exp = flow.expected
            if exp is None or exp.protocol != PROTOCOL or len(p) < _MIN_UDP or _looks_plain(p):
                return REJECT
            return self.verdict(PROTOCOL, "confirmed", "UDP data with a ciphertext layout",
                                "endpoint announced by a confirmed tinc meta connection")
        st = flow.state.get(PROTOCOL)
        if st is None:
            if not self.first(pkt, direction):  # the first payload either way must be an ID request
                return REJECT
            st = flow.put_state(PROTOCOL, _State())
        if st.version[direction]:
            return None  # METAKEY or encrypted meta data after this side's ID line
        buf = st.buf[direction] + p
        nl = buf.find(b"\n")
        if nl < 0:
            if len(buf) > _MAX_LINE or buf[:2] != b"0 "[:len(buf)]:
                return REJECT
            st.buf[direction] = buf
            return None
        version = id_line(buf[:nl]) if nl <= _MAX_LINE else ""
        if not version:
            return REJECT
        st.version[direction] = version
        st.buf[direction] = b""
        rest = buf[nl + 1:]
        other = st.version[1 - direction]
        if not other:
            ev = [f"ID request (protocol {version}) in clear"]
            if metakey_prefix(rest):
                ev.append("METAKEY line follows")
            return self.verdict(PROTOCOL, "heuristic", *ev)
        if version.split(".")[0] != other.split(".")[0]:
            return REJECT
        # The meta connection's responder is a node listening on this port for UDP data too.
        ctx.expect(flow.dst, flow.dport, UDP, PROTOCOL, self.klass, "tinc node", pkt.ts)
        ev = [f"ID requests both ways (protocol {st.version[0]} / {st.version[1]})"]
        if metakey_prefix(rest):
            ev.append("METAKEY line follows")
        return self.verdict(PROTOCOL, "confirmed", *ev)


def _looks_plain(p: bytes) -> bool:
    """True when the start of a datagram is mostly zero or printable (i.e. not ciphertext)."""
    head = p[:32]
    plain = sum(1 for b in head if 32 <= b < 127 or b == 0)
    return plain > len(head) * 3 // 4
