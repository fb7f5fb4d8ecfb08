"""MGCP (Media Gateway Control Protocol, RFC 3435) over UDP: commands matched with their responses.

A command line is "VERB transaction-id endpoint MGCP 1.0" (version 0.1 and 1.0 are seen, optionally a
profile name after it), with VERB one of EPCF, CRCX, MDCX, DLCX, RQNT, NTFY, AUEP, AUCX, RSIP (MESG
is an extension), a transaction id of 1 to 9 digits and an endpoint name "local@domain". Lines end in
CRLF, LF or a lone CR. A response is "code transaction-id [commentary]" with a 3-digit code. A command
answered in the other direction by a response carrying its transaction id is confirmed; a well-formed
command alone is heuristic (gateways often send RSIP or NTFY into the void). A response with no command
seen proves nothing (many text protocols start with three digits), so it is never flagged alone.
Call agents use UDP 2727 and gateways 2427, but any port is checked: the command line is specific enough.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import UDP, Packet

PROTOCOL: Final = "mgcp"
VERBS: Final = frozenset({b"EPCF", b"CRCX", b"MDCX", b"DLCX", b"RQNT", b"NTFY", b"AUEP", b"AUCX", b"RSIP",
                          b"MESG"})
_DIGITS: Final = frozenset(b"0123456789")
_MIN_LEN: Final = 9  # "200 1" plus a line end is the shortest message
_MAX_PENDING: Final = 32
_MAX_MISSES: Final = 3


def _first_line(p: bytes) -> bytes:
    end = len(p)
    for sep in (b"\n", b"\r"):
        i = p.find(sep, 0, 300)
        if 0 <= i < end:
            end = i
    return p[:end] if end < len(p) or len(p) <= 300 else b""


def command(p: bytes) -> tuple[str, int] | None:
    """(verb, transaction id) of an MGCP command line, or None."""
    words = _first_line(p).split()
    if len(words) < 5 or words[0] not in VERBS or words[3] != b"MGCP":
        return None
    tid, endpoint, version = words[1], words[2], words[4]
    if not (1 <= len(tid) <= 9 and set(tid) <= _DIGITS) or b"@" not in endpoint or len(endpoint) > 255:
        return None
    if version not in (b"1.0", b"0.1"):
        return None
    return words[0].decode(), int(tid)


def response(p: bytes) -> tuple[int, int] | None:
    """(code, transaction id) of an MGCP response line, or None."""
    words = _first_line(p).split(None, 2)
    if len(words) < 2 or len(words[0]) != 3 or not set(words[0]) <= _DIGITS:
        return None
    tid = words[1]
    if not (1 <= len(tid) <= 9 and set(tid) <= _DIGITS):
        return None
    return int(words[0]), int(tid)


@dataclass(slots=True)
class _State:
    pending: dict[int, tuple[int, str]] = field(default_factory=dict)  # tid -> (direction, verb)
    commands: int = 0
    first: str = ""
    confirmed: str = ""
    misses: int = 0


class MGCP(Classifier):
    """MGCP call control: command lines, confirmed by a response with the same transaction id."""

    name: ClassVar[str] = "mgcp"
    klass: ClassVar[Klass] = "voip"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    first_on: ClassVar[frozenset[int]] = frozenset({UDP})
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {UDP: _DIGITS | {v[0] for v in VERBS}}
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 2427): PROTOCOL, (UDP, 2727): PROTOCOL}

    def first(self, pkt: Packet, direction: int) -> bool:
        """A command verb or a response code opening the datagram."""
        p = pkt.payload
        return len(p) >= _MIN_LEN and (p[:4] in VERBS or (48 <= p[0] <= 57 and p[3] == 32))

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Parse command and response lines; match transaction ids across directions."""
        p = pkt.payload
        st: _State | None = flow.state.get(PROTOCOL)
        if st is None:
            # every new UDP flow passes here: a 4-byte slice and a set lookup, or two digit tests
            if not self.first(pkt, direction):
                return REJECT
            st = flow.put_state(PROTOCOL, _State())
        cmd = command(p) if p[:4] in VERBS else None
        if cmd is not None:
            st.commands += 1
            if not st.first:
                st.first = f"{cmd[0]} command (MGCP command line with transaction id and endpoint)"
            if len(st.pending) < _MAX_PENDING:
                st.pending[cmd[1]] = (direction, cmd[0])
        else:
            resp = response(p)
            if resp is None:
                st.misses += 1
                if not st.commands or st.misses >= _MAX_MISSES:
                    return REJECT
            else:
                req = st.pending.get(resp[1])
                if req is not None and req[0] != direction and not st.confirmed:
                    st.confirmed = f"{resp[0]} response matches the {req[1]} transaction id"
                elif not st.commands and flow.packets >= 4:
                    return REJECT  # responses only: not enough to say MGCP
        if not st.commands:
            return None
        if st.confirmed:
            return self.verdict(PROTOCOL, "confirmed", st.first, st.confirmed)
        return self.verdict(PROTOCOL, "heuristic", st.first,
                            f"{st.commands} command(s), no matching response yet")
