"""SSH used as a proxy (port forwarding, `ssh -D` SOCKS, `ssh -L`) told from interactive SSH and scp.

Everything after the key exchange is encrypted, so the only facts are the sizes and directions of packets.
Each forwarded connection opens its own channel: the client sends SSH_MSG_CHANNEL_OPEN "direct-tcpip"
(target host, port and originator: 80+ bytes on the wire), the server answers with a bare
OPEN_CONFIRMATION (17 bytes of payload: 44 bytes with chacha20-poly1305, 52 with AES-GCM, 64 with
AES-CTR + hmac-sha2-256-etm) and the client immediately sends the forwarded request (80+ bytes). An
interactive session or scp opens ONE session channel; interactive sessions then trade tiny
keystroke/echo packets, scp moves bulk data one way. The rule: at least `MIN_OPENS` of those
open/confirm/request triples after authentication (three: setting up one interactive session already
makes two, auth success -> session open and open -> confirmation -> pty/shell request), and no run of
`MAX_KEYSTROKES` keystroke/echo pairs between two triples. The run restarts at each triple because a
forwarded connection ends with an EOF/CLOSE exchange of the same small sizes (two pairs per connection):
counted over the whole flow, three short forwarded connections looked like typing.
It needs the packets after authentication (OpenSSH: about 30 packets in; the third forwarded connection
about 60 packets in), so it decides only when the engine's budget for the flow is large enough; with a
smaller budget it stays silent and the flow remains plain "ssh". Heuristic only: a client-side TCP
tunnel is all a network can see, not what goes through it.

Which side is the SSH client is read from the clear key exchange, not assumed from the flow's direction:
the daemon never sees the TCP handshake, so its flow starts with whichever banner was queued first, and
many servers send theirs first. The client sends KEXDH/ECDH/hybrid INIT (30) or the group-exchange
REQUEST/INIT (34/32); the server answers with REPLY/GROUP (31/33). Without those (not seen, split), the
initiator of the flow is taken as the client.
"""

from __future__ import annotations

from typing import ClassVar, Final

from tunnelwatch.classify.base import DONE, REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, Packet

#: payload packets of version exchange, key exchange and authentication (OpenSSH: 14-18) to skip
SKIP: Final = 16
#: a direct-tcpip CHANNEL_OPEN (host names are at most 255 bytes); bulk data segments are larger
OPEN_MIN: Final = 80
OPEN_MAX: Final = 400
#: the forwarded request that follows the confirmation (an HTTP request, a TLS ClientHello...)
REQ_MIN: Final = 80
REQ_MAX: Final = 2000
#: largest server packet that is a bare OPEN_CONFIRMATION with the common ciphers
CONFIRM_MAX: Final = 64
#: keystroke/echo packets are the smallest SSH packets (36-52 bytes with the common ciphers)
KEY_MAX: Final = 52
MIN_OPENS: Final = 3
MAX_KEYSTROKES: Final = 6
#: stop looking after this many payload packets (the triples come early or the flow is something else)
MAX_PKTS: Final = 160
_SSH: Final = frozenset({"ssh"})
#: clear key-exchange message codes by sender (RFC 4253, 4419, 5656; hybrid PQ methods reuse 30/31)
_FROM_CLIENT: Final = frozenset({30, 32, 34})
_FROM_SERVER: Final = frozenset({31, 33})
#: clear SSH packets walked per segment at most (KEXINIT, INIT/REPLY, NEWKEYS can share one)
_MAX_CLEAR: Final = 4
_MAX_CLEAR_LEN: Final = 35_000  # RFC 4253 6.1: implementations must handle 35000-byte packets

# state slots: previous two payload packets as signed sizes (+ client, - server), triples, keystroke pairs,
# the SSH client's direction (-1 until the key exchange showed it)
_P1, _P2, _OPENS, _KEYS, _CLIENT = range(5)


def kex_client_direction(p: bytes, direction: int) -> int:
    """The SSH client's direction if this segment holds a clear key-exchange message, else -1."""
    pos, n = 0, len(p)
    for _ in range(_MAX_CLEAR):
        if pos + 6 > n:
            break
        ln = int.from_bytes(p[pos:pos + 4], "big")
        if ln < 12 or ln > _MAX_CLEAR_LEN:
            break  # not a clear SSH packet (encrypted, or not SSH): nothing to learn
        code = p[pos + 5]
        if code in _FROM_CLIENT:
            return direction
        if code in _FROM_SERVER:
            return direction ^ 1
        pos += 4 + ln
    return -1


class SshForward(Classifier):
    """SSH flows that open several forwarded channels (heuristic, outranks plain "ssh")."""

    name: ClassVar[str] = "ssh_forwarding"
    klass: ClassVar[Klass] = "proxy_obfuscated"
    transports: ClassVar[frozenset[int]] = frozenset({TCP})
    first_on: ClassVar[frozenset[int]] = frozenset({TCP})
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {TCP: frozenset(b"S")}
    protocols: ClassVar[tuple[str, ...]] = ("ssh_forwarding",)

    def first(self, pkt: Packet, direction: int) -> bool:
        """An SSH banner."""
        return pkt.payload.startswith(b"SSH-")

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Skip the handshake, then count open/confirm/request triples and keystroke/echo pairs."""
        st: list[int] | None = flow.state.get(self.name)
        if st is None:
            if not self.first(pkt, direction):
                return REJECT  # the client's banner opens every SSH connection
            st = flow.put_state(self.name, [0, 0, 0, 0, -1])
            return None
        if st[_OPENS] >= MIN_OPENS:
            return DONE  # decided: the rest of the flow is the forwarded traffic itself
        n = flow.pay0 + flow.pay1
        if n <= SKIP:
            if st[_CLIENT] < 0:
                st[_CLIENT] = kex_client_direction(pkt.payload, direction)
            return None
        if n > MAX_PKTS:
            return DONE
        size = len(pkt.payload)
        cur = size if direction == (st[_CLIENT] if st[_CLIENT] >= 0 else 0) else -size
        p1, p2 = st[_P1], st[_P2]
        if REQ_MIN <= cur <= REQ_MAX and -CONFIRM_MAX <= p1 < 0 and OPEN_MIN <= p2 <= OPEN_MAX:
            st[_OPENS] += 1
            st[_KEYS] = 0
        elif 0 > cur >= -KEY_MAX and 0 < p1 <= KEY_MAX:
            st[_KEYS] += 1
            if st[_KEYS] >= MAX_KEYSTROKES:
                return DONE  # typed input echoed back: an interactive session
        st[_P2], st[_P1] = p1, cur
        if st[_OPENS] >= MIN_OPENS:
            return self.verdict("ssh_forwarding", "heuristic",
                                f"{st[_OPENS]} channel open/confirm/request exchanges after authentication",
                                f"{st[_KEYS]} keystroke/echo pairs since the last one", supersedes=_SSH)
        return None
