"""n2n (ntop's peer-to-peer VPN) over UDP: the cleartext packet header of protocol versions 1, 2 and 3.

Every n2n packet starts with a header in clear: the version byte, the message type, and the community
name (a NUL-terminated name in a 16-byte field; 20 bytes in v3). v1 (n2n 1.x, Debian's 1.3): version,
msg_type, ttl, sent_by_supernode, community[16], src MAC, dst MAC, then the sender's socket (address
family 2 or 10 first). v2/v3: version, ttl, 16-bit flags whose low 5 bits are the packet code, then the
community; REGISTER/REGISTER_SUPER carry a 4-byte cookie that the ACK echoes. A registration answered
by the other side in the same community (cookie echoed, or in v1 the registering MAC reflected) is
confirmed. n2n 3's optional header encryption hides all of this and is not detected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import UDP, Packet

PROTOCOL: Final = "n2n"
# v1 message types
V1_REGISTER: Final = 1
V1_REGISTER_ACK: Final = 4
_V1_TYPES: Final = frozenset(range(1, 7))
_V1_MIN: Final = 36  # fixed fields up to the sender's socket family and port
# v2/v3 packet codes
PC_REGISTER: Final = 1
PC_REGISTER_ACK: Final = 4
PC_REGISTER_SUPER: Final = 5
PC_REGISTER_SUPER_ACK: Final = 6
PC_REGISTER_SUPER_NAK: Final = 7
_REPLIES: Final = {PC_REGISTER: (PC_REGISTER_ACK,),
                   PC_REGISTER_SUPER: (PC_REGISTER_SUPER_ACK, PC_REGISTER_SUPER_NAK)}
_COMMUNITY: Final = {1: 16, 2: 16, 3: 20}
_MAX_TTL: Final = 16
_PC_NAMES: Final = {1: "REGISTER", 2: "DEREGISTER", 3: "PACKET", 4: "REGISTER_ACK", 5: "REGISTER_SUPER",
                    6: "REGISTER_SUPER_ACK", 7: "REGISTER_SUPER_NAK", 8: "FEDERATION", 9: "PEER_INFO",
                    10: "QUERY_PEER"}


@dataclass(frozen=True, slots=True)
class Header:
    """The facts of one n2n header."""

    version: int
    code: int  # v1 msg_type or v2/v3 packet code
    community: bytes
    cookie: bytes  # v2/v3 REGISTER*/ACK cookie; v1: the source MAC
    mac: bytes  # v1: destination MAC; v2/v3: b""


def community(field: bytes) -> bytes:
    """The NUL-terminated printable name in a community field, or b"" when the field is not one."""
    end = field.find(b"\0")
    name = field if end < 0 else field[:end]
    if not name or not all(32 <= c < 127 for c in name):
        return b""
    return name


def parse(p: bytes) -> Header | None:
    """Parse an n2n header (any supported version); None when the datagram is not one."""
    n = len(p)
    if n < 4:
        return None
    ver = p[0]
    if ver == 1:
        if n < _V1_MIN or p[1] not in _V1_TYPES or p[2] > _MAX_TTL or p[3] > 1 or p[32] not in (0, 2, 10):
            return None
        name = community(p[4:20])
        return Header(1, p[1], name, p[20:26], p[26:32]) if name else None
    if ver not in (2, 3):
        return None
    csize = _COMMUNITY[ver]
    flags = (p[2] << 8) | p[3]
    code = flags & 0x1F
    if n < 4 + csize or p[1] > _MAX_TTL or flags & 0xFE00 or code > 10:
        return None
    name = community(p[4:4 + csize])
    if not name:
        return None
    off = 4 + csize
    cookie = p[off:off + 4] if code in (1, 4, 5, 6, 7) and n >= off + 4 else b""
    return Header(ver, code, name, cookie, b"")


@dataclass(slots=True)
class _State:
    version: int = 0
    community: bytes = b""
    request: Header | None = None
    request_dir: int = -1


class N2N(Classifier):
    """n2n edge/supernode traffic (protocol versions 1-3, header encryption off)."""

    name: ClassVar[str] = "n2n"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    first_on: ClassVar[frozenset[int]] = frozenset({UDP})
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {UDP: frozenset({1, 2, 3})}
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 7654): PROTOCOL}

    def first(self, pkt: Packet, direction: int) -> bool:
        """A version byte 1-3 (the cheap part of the header check every datagram passes)."""
        p = pkt.payload
        return bool(p) and 0 < p[0] <= 3

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Every datagram must carry an n2n header of one version and community; match registrations."""
        p = pkt.payload
        if not p or p[0] > 3 or p[0] == 0:  # cheap: most UDP flows fail here
            return REJECT
        h = parse(p)
        if h is None:
            return REJECT
        st = flow.state.get(PROTOCOL)
        if st is None:
            st = flow.put_state(PROTOCOL, _State(h.version, h.community))
        elif h.version != st.version or h.community != st.community:
            return REJECT
        what = _PC_NAMES.get(h.code, f"type {h.code}") if h.version > 1 else _v1_name(h.code)
        req = st.request
        if req is not None and direction != st.request_dir and _answers(req, h):
            echo = "answers it" if h.version == 1 else "echoes its cookie"
            return self.verdict(PROTOCOL, "confirmed", f"n2n v{h.version} {_name(req)}",
                                f"{what} from the other side {echo} in the same community")
        if _is_request(h):
            st.request, st.request_dir = h, direction
        return self.verdict(PROTOCOL, "heuristic",
                            f"n2n v{h.version} {what} header (community name in clear)")


def _v1_name(code: int) -> str:
    return {1: "REGISTER", 2: "DEREGISTER", 3: "PACKET", 4: "REGISTER_ACK"}.get(code, f"type {code}")


def _name(h: Header) -> str:
    return _v1_name(h.code) if h.version == 1 else _PC_NAMES.get(h.code, f"type {h.code}")


def _is_request(h: Header) -> bool:
    if h.version == 1:
        return h.code == V1_REGISTER
    return h.code in _REPLIES and len(h.cookie) == 4


def _answers(req: Header, h: Header) -> bool:
    if h.version == 1:
        # v1 has no cookie: a REGISTER_ACK in the same community from a different MAC answers it
        return h.code == V1_REGISTER_ACK and h.cookie != req.cookie
    return h.code in _REPLIES.get(req.code, ()) and h.cookie == req.cookie
