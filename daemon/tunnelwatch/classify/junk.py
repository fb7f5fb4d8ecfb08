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

While a flow showed a classifier nothing but junk, the gate is that classifier's whole state
(`gate_alone`): most UDP flows are no tunnel and never build the rest.
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
        # two slots rather than a list: one of these lives per UDP flow and classifier while classified
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


def gate_alone(flow: Flow, name: str, gate: JunkGate | None, p: bytes, direction: int,
               junk: bool) -> JunkGate | InspectResult:
    """For a flow that showed a classifier nothing but junk so far, whose state is this gate alone (None:
    no state yet): the first look and, when the classifier says this datagram is `junk` too, the count.
    Returns what inspect() returns then, or the gate when the datagram needs the whole state (the caller
    builds it around the gate). Most UDP flows never get further, and never pay for the rest."""
    if gate is None:
        gate = JunkGate()
        if junk:
            flow.put_state(name, gate)
    if gate.first_look(p, direction):
        return REJECT  # both ends opened with one other protocol: a real exchange of it
    if not junk:
        return gate
    return REJECT if gate.junk_seen() else None
