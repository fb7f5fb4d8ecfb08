"""Surviving junk before a handshake: what a UDP tunnel classifier may ignore, and when it may give up early.

Owns the rule the WireGuard, AmneziaWG and OpenVPN (UDP) classifiers share: a datagram that does not fit
the protocol is *junk*, counted and ignored, never a reason to reject the flow on its own (a customer's
client can send any number of random datagrams from its socket before the real handshake, and AmneziaWG
does so by design). Two things still end the wait, so an ordinary flow costs little:

* the first datagram seen from EACH direction is clearly one and the same other protocol (DNS, QUIC,
  DTLS, TLS, STUN, a text protocol, Tailscale disco). Junk comes from the tunnel client only: a tunnel
  server stays silent on junk and then answers with its own handshake, so a server whose first datagram
  is, say, a DNS answer to a client whose first datagram was a DNS query is a real DNS exchange. Requiring
  both directions keeps a single mimicking junk datagram (AmneziaWG 1.5's I1..I5 imitate QUIC or DNS) from
  switching the classifier off, and only signatures with >= ~24 fixed bits count, so the random padding
  of an obfuscated handshake response almost never reads as one of them;
* more than `MAX_JUNK` junk datagrams (AmneziaWG allows up to 128 junk packets plus 5 signature packets).

While a flow showed a classifier nothing but junk, it has no state of its own: the three share one
`SharedGate` per flow (`gate_alone`), and a classifier takes a private `JunkGate` only when a datagram of
its shape comes. Most UDP flows are no tunnel and never build the rest.
"""

from __future__ import annotations

from struct import unpack_from
from typing import Final

from tunnelwatch.classify.base import REJECT, InspectResult
from tunnelwatch.classify.common import dns_message, dtls_record, tls_record
from tunnelwatch.classify.flow import Flow

#: junk datagrams tolerated per flow before a classifier gives up (Jc <= 128, I1..I5, retries)
MAX_JUNK: Final = 160
_QUIC_VERSIONS: Final = frozenset({0x00000001, 0x6B3343CF, 0xFF00001D, 0xFF000020, 0x51303530, 0x51303436})
_STUN_COOKIE: Final = 0x2112A442
_DISCO: Final = "TS💬".encode()
_TEXT_PREFIX: Final = 12
_TEXT: Final = bytes(range(32, 127)) + b"\t\n\r"


# Three classifiers (WireGuard, AmneziaWG, OpenVPN) ask about the same datagram one after the other: the
# last answer is kept with the bytes object it was for (identity: the same object is the same bytes).
_last: tuple[object, str] = (None, "")


def other_protocol(p: bytes) -> str:
    """The well-known protocol this datagram clearly is, or '' (only strong signatures count)."""
    global _last
    seen, name = _last
    if seen is p:
        return name
    name = _other_protocol(p)
    if type(p) is bytes:  # a mutable buffer could change under the same identity
        _last = (p, name)
    return name


def _other_protocol(p: bytes) -> str:
    n = len(p)
    if n < 8:
        return ""
    b0 = p[0]
    if b0 & 0xC0 == 0xC0 and unpack_from("!I", p, 1)[0] in _QUIC_VERSIONS:
        return "quic"
    if b0 < 4 and n >= 20 and unpack_from("!I", p, 4)[0] == _STUN_COOKIE:
        return "stun"
    if p.startswith(_DISCO):
        return "tailscale"
    if 20 <= b0 <= 26 and dtls_record(p):
        return "dtls"
    if 20 <= b0 <= 24 and tls_record(p):
        return "tls"
    if n >= _TEXT_PREFIX and not p[:_TEXT_PREFIX].translate(None, _TEXT):  # printable or tab/CR/LF only
        return "text"
    if dns_message(p):
        return "dns"
    return ""


class JunkGate:
    """Per-flow junk accounting: the first datagram's protocol per direction and the junk count."""

    __slots__ = ("first0", "first1", "junk")

    def __init__(self) -> None:
        # what the first datagram seen from each direction clearly was ('' = nothing clear, None = unseen);
        # two slots rather than a list: one of these lives per classifier in each UDP flow of its shape
        self.first0: str | None = None
        self.first1: str | None = None
        self.junk = 0

    def first_look(self, p: bytes, direction: int) -> bool:
        """Note a direction's first datagram; True when both directions clearly speak one other protocol."""
        if (self.first1 if direction else self.first0) is not None:
            return False
        name = other_protocol(p)
        if direction:
            self.first1 = name
            return bool(name) and self.first0 == name
        self.first0 = name
        return bool(name) and self.first1 == name

    def junk_seen(self) -> bool:
        """Count one junk datagram; True when there has been too much of it to keep waiting."""
        self.junk += 1
        return self.junk > MAX_JUNK


#: the flow.state key of the shared gate (no classifier has this name)
SHARED: Final = "junk-gate"


class SharedGate:
    """The junk gates of WireGuard, AmneziaWG and OpenVPN while each saw nothing but junk: one per flow.

    Those three are asked about every datagram of a UDP flow from its first (they have no first-byte test
    and stay until they reject; a flow decided in between either resumes them with their state, no
    datagram skipped since only payload the engine inspects is counted, or starts them again from no
    state), so while none has seen its own shape their gates would hold the same thing: each direction's
    first protocol, and a junk count equal to the datagrams seen. One record of which payload datagram
    (the flow's per-direction count) opened each direction gives all three, for 64 bytes instead of three
    gates and three dict entries.
    """

    __slots__ = ("at0", "at1", "first0", "first1")

    def __init__(self) -> None:
        self.first0: str = ""
        self.first1: str = ""
        #: flow.pay0 / pay1 when that direction's first datagram came (None: not yet)
        self.at0: int | None = None
        self.at1: int | None = None

    def seen(self, flow: Flow) -> int:
        """Datagrams looked at so far (each was junk to every classifier still on this gate)."""
        n = 0
        if self.at0 is not None:
            n += flow.pay0 - self.at0 + 1
        if self.at1 is not None:
            n += flow.pay1 - self.at1 + 1
        return n

    def before(self, flow: Flow, direction: int) -> int:
        """Datagrams seen before the current one, which came from `direction` (looked at yet or not)."""
        return self.seen(flow) - ((self.at1 if direction else self.at0) is not None)

    def first_look(self, flow: Flow, p: bytes, direction: int) -> bool:
        """JunkGate.first_look, for each of the three asking about the same datagram in turn."""
        pay = flow.pay1 if direction else flow.pay0
        if direction:
            if self.at1 is None:
                self.at1, self.first1 = pay, other_protocol(p)
            elif self.at1 != pay:
                return False
            name, other = self.first1, (self.first0 if self.at0 is not None else None)
        else:
            if self.at0 is None:
                self.at0, self.first0 = pay, other_protocol(p)
            elif self.at0 != pay:
                return False
            name, other = self.first0, (self.first1 if self.at1 is not None else None)
        return bool(name) and other == name

    def private(self, flow: Flow, direction: int) -> JunkGate:
        """The gate of a classifier that leaves the shared one on this datagram (its first of its shape)."""
        g = JunkGate()
        if self.at0 is not None:
            g.first0 = self.first0
        if self.at1 is not None:
            g.first1 = self.first1
        g.junk = self.before(flow, direction)
        return g


def shared_before(flow: Flow, direction: int) -> int:
    """Datagrams a classifier still on the shared gate saw before this one (0: this is its first)."""
    sg = flow.state.get(SHARED)
    return sg.before(flow, direction) if type(sg) is SharedGate else 0


def gate_alone(flow: Flow, p: bytes, direction: int, junk: bool) -> JunkGate | InspectResult:
    """For a classifier that saw nothing but junk so far (no state of its own): the first look on the
    flow's shared gate and, when the classifier says this datagram is `junk` too, the count. Returns what
    inspect() returns then, or the classifier's own gate when the datagram needs its whole state (the
    caller builds it around the gate). Most UDP flows never get further, and never pay for the rest."""
    sg = flow.state.get(SHARED)
    if type(sg) is not SharedGate:
        sg = flow.put_state(SHARED, SharedGate())
    if sg.first_look(flow, p, direction):
        return REJECT  # both ends opened with one other protocol: a real exchange of it
    if not junk:
        return sg.private(flow, direction)
    if flow.pay0 + flow.pay1 <= MAX_JUNK:
        return None  # the gate cannot have seen more datagrams than the flow has had
    return REJECT if sg.before(flow, direction) >= MAX_JUNK else None
