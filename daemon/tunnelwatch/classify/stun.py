"""STUN (RFC 3489/5389/8489) and TURN (RFC 5766/8656), over UDP and TCP.

A STUN message is a 20-byte header (two zero top bits, class/method type, body length, magic cookie
0x2112A442 or, in classic RFC 3489, the first part of a 16-byte transaction id) followed by TLV
attributes whose walk must end exactly at the announced length. A request answered in the other
direction by a response carrying the same transaction id is confirmed. A lone well-formed message
with the magic cookie is heuristic; classic messages (no cookie) need the cross-check, since their
header has fewer fixed bits. TURN methods (Allocate, Refresh, Send, Data, CreatePermission,
ChannelBind) report "turn", as do ChannelData frames after a TURN exchange. On TCP, messages may be
sent back to back or each behind an RFC 4571 2-byte length; a segment may hold several messages.

Messenger calls are STUN/TURN with an application's fingerprint, reported under their own protocol name
so that an operator can write a `policy.protocol` rule for them, with the confidence of the STUN
exchange itself (confirmed once a transaction is cross-checked) and the fingerprint in the evidence:
- "whatsapp_call": attribute types 0x4000-0x4007 or methods 0x200-0x2FF, both unassigned by IANA and
  seen only in WhatsApp's relay and peer traffic (nDPI uses the same attribute range);
- "signal_call": a REALM of signal.org or whispersystems.org (Signal's TURN servers name it);
- "telegram_call": a REALM of telegram.org (Telegram's TURN relays);
- "teams_call": an attribute of Microsoft's STUN/TURN extensions ([MS-TURN], [MS-ICE2]) that only
  Skype for Business / Skype / Teams clients and relays send: CANDIDATE-IDENTIFIER 0x8054,
  MS-SERVICE-QUALITY 0x8055, MS-IMPLEMENTATION-VERSION 0x8070, MS-MULTIPLEXED-TURN-SESSION-ID 0x8095
  (nDPI names the same ones for its Skype_TeamsCall).
The REALM is chosen by the server and echoed by the client, so it names the service, not a guess from
addresses. Once seen, the application sticks to the flow. Without a fingerprint the flow stays stun/turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from struct import unpack_from
from typing import ClassVar, Final, Literal

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, UDP, Packet
from tunnelwatch.classify.stun_wire import (
    APPS,
    DOOMED,
    HEADER,
    MAGIC_COOKIE,
    SIGNAL,
    TEAMS,
    TELEGRAM,
    WHATSAPP,
    Message,
    channel_data,
    doomed,
    message_type,
    parse_message,
)

__all__ = ["APPS", "HEADER", "MAGIC_COOKIE", "SIGNAL", "STUN", "TEAMS", "TELEGRAM", "WHATSAPP", "Message",
           "channel_data", "message_type", "parse_message"]

_CLASS_NAMES: Final = ("request", "indication", "success response", "error response")
_METHOD_NAMES: Final = {1: "Binding", 2: "SharedSecret", 3: "Allocate", 4: "Refresh", 6: "Send", 7: "Data",
                        8: "CreatePermission", 9: "ChannelBind", 10: "Connect", 11: "ConnectionBind",
                        12: "ConnectionAttempt"}
TURN_METHODS: Final = frozenset({3, 4, 6, 7, 8, 9, 10, 11, 12})
# Attributes worth naming in evidence (names only: their values are payload).
_NOTABLE: Final = {0x0006: "USERNAME", 0x0014: "REALM", 0x8022: "SOFTWARE", 0x0019: "REQUESTED-TRANSPORT",
                   0x8029: "ICE-CONTROLLED", 0x802A: "ICE-CONTROLLING", 0x0025: "USE-CANDIDATE",
                   0xC057: "GOOG-NETWORK-INFO", 0x8008: "MS-VERSION", 0x0013: "DATA"}
_MAX_REQUESTS: Final = 32
_MAX_TCP_BUF: Final = 8192
# Flows that show no STUN at all within this many payload packets are not STUN flows.
_GIVE_UP: Final = 6


@dataclass(slots=True)
class _State:
    # Made only for a flow that may be STUN (a message parsed, or a TCP stream too short to tell yet);
    # scalars and containers made on first use, since a short TCP flow may hold it until it is decided.
    requests: dict[bytes, tuple[int, int]] | None = None
    seen: int = 0
    classic_only: bool = True
    turn: bool = False
    channels: set[int] | None = None  # made on the first ChannelBind: most flows never have one
    channel_data: int = 0
    first: str = ""
    notable: set[str] | None = None
    confirmed: str = ""
    app: str = ""
    app_why: str = ""
    announced: bool = False
    buf0: bytes = b""  # each TCP direction's bytes not yet walked
    buf1: bytes = b""
    # each TCP direction's framing: -1 unknown, 0 plain, 1 RFC 4571; 2 + n: a start of n bytes that can
    # frame no STUN (stun_wire.doomed), kept as its length until it is long enough to be dropped
    # (2 + n < 25: a small int, which Python shares, where -2 - n would be an object of its own)
    framing0: int = -1
    framing1: int = -1


#: a TCP flow's state while it showed no STUN: each direction's unwalked bytes and framing (see _State)
_Starts = tuple[bytes, bytes, int, int]
_NO_STARTS: Final[_Starts] = (b"", b"", -1, -1)


def _doomed_direction(flow: Flow, st: _Starts | None, data: bytes,
                      direction: int) -> InspectResult | Literal[False]:
    """What STUN.inspect concludes for a TCP flow that showed no STUN yet when this direction's stream
    started with bytes that can frame no STUN (stun_wire.doomed), worked out on the 4-tuple alone; False
    when the whole state is needed. Most short TCP flows are no STUN: this spares them the state."""
    if st is None:
        exp = flow.expected
        if exp is not None and exp.protocol in APPS:
            return False  # the state carries the app
        st = _NO_STARTS
    framing = st[3] if direction else st[2]
    n = len(data)
    if framing > 1:
        n += framing - 2
    elif framing >= 0 or st[direction] or n < DOOMED or not doomed(data):
        return False
    if n >= HEADER + 2 or flow.pay0 + flow.pay1 >= _GIVE_UP:
        return REJECT  # long enough to tell (_tcp drops the start), or no STUN in _GIVE_UP packets
    flow.put_state("stun", (st[0], st[1], st[2], 2 + n) if direction else (st[0], st[1], 2 + n, st[3]))
    return None


def _frame(st: _State, direction: int, framing: int) -> None:
    if direction:
        st.framing1 = framing
    else:
        st.framing0 = framing


def _keep(st: _State, direction: int, data: bytes) -> None:
    if direction:
        st.buf1 = data
    else:
        st.buf0 = data


class STUN(Classifier):
    """STUN and TURN: transaction ids cross-checked between requests and responses."""

    name: ClassVar[str] = "stun"
    klass: ClassVar[Klass] = "voip"
    transports: ClassVar[frozenset[int]] = frozenset({TCP, UDP})
    first_on: ClassVar[frozenset[int]] = frozenset({TCP})
    protocols: ClassVar[tuple[str, ...]] = ("stun", "turn", *APPS)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 3478): "stun"}

    def first(self, pkt: Packet, direction: int) -> bool:
        """On TCP: too short to tell, or a stream start with STUN framing."""
        p = pkt.payload
        return len(p) < HEADER + 2 or self._detect_framing(p, 0) >= 0

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Parse the STUN messages (or TURN ChannelData) in this packet and cross-check transactions."""
        st = flow.state.get("stun")
        if pkt.proto == TCP and (st is None or type(st) is tuple):
            r = _doomed_direction(flow, st, pkt.payload, direction)
            if r is not False:
                return r
        if type(st) is tuple:  # a TCP flow that showed no STUN yet: only its streams' starts were kept
            st = flow.put_state("stun", _State(buf0=st[0], buf1=st[1], framing0=st[2], framing1=st[3]))
        elif st is None:
            p = pkt.payload
            if pkt.proto == TCP:
                if not self.first(pkt, direction):
                    return REJECT  # what _tcp would conclude on a fresh stream, without the state
            else:
                m = parse_message(p)
                if m is None or m.end != len(p):  # no state yet, so no TURN: nothing to remember
                    return REJECT if flow.pay0 + flow.pay1 >= _GIVE_UP else None
            st = flow.put_state("stun", _State())
            exp = flow.expected
            if exp is not None and exp.protocol in APPS:
                st.app, st.app_why, st.announced = exp.protocol, exp.evidence, True
        if pkt.proto == TCP:
            ok = self._tcp(st, pkt.payload, direction)
        else:
            ok = self._datagram(st, pkt.payload, direction)
        if ok is None:
            return REJECT
        if st.app and not st.announced and pkt.proto == UDP:
            # a messenger uses one UDP socket per call for relays, peers and media: its other flows are
            # the same call (the initiator is the app's side: it sends the first binding requests)
            st.announced = True
            ctx.expect(flow.src, flow.sport, UDP, st.app, "voip",
                       f"same UDP socket as a flow with {st.app_why}", pkt.ts)
        if st.confirmed:
            return self._verdict(st, "confirmed")
        if st.seen and not st.classic_only:
            return self._verdict(st, "heuristic")
        if st.channel_data >= 2 and st.turn:
            return self._verdict(st, "heuristic")
        if not st.seen and (flow.pay0 + flow.pay1) >= _GIVE_UP:
            return REJECT
        if not st.seen and not st.app and pkt.proto == TCP:
            # nothing learnt but where each stream stands: a 4-tuple instead of the whole state (a flow
            # with a short first segment keeps it until it is decided, as most such flows are not STUN)
            flow.put_state("stun", (st.buf0, st.buf1, st.framing0, st.framing1))
        return None

    def _datagram(self, st: _State, p: bytes, direction: int) -> bool | None:
        """Handle one UDP payload; None means 'certainly not STUN' (reject)."""
        m = parse_message(p)
        if m is not None and m.end == len(p):
            self._message(st, m, direction)
            return True
        if st.turn and channel_data(p, 0, False) == len(p):
            self._channel(st, p, 0)
            return True
        # WebRTC multiplexes DTLS and SRTP on the same 5-tuple after STUN: not a reason to reject.
        return True

    def _tcp(self, st: _State, data: bytes, direction: int) -> bool | None:
        """Reassemble a little of one TCP direction and walk the messages it holds."""
        framing = st.framing1 if direction else st.framing0
        if framing > 1:  # a start that can frame no STUN: only its length was kept (see stun_wire.doomed)
            n = framing - 2 + len(data)
            if n > _MAX_TCP_BUF:
                return None if not st.seen else True
            if n < HEADER + 2:
                _frame(st, direction, 2 + n)
                return True
            _frame(st, direction, -1)  # as the walk below drops such a buffer once it can tell
            return True if st.seen else None
        buf = (st.buf1 if direction else st.buf0) + data
        if len(buf) > _MAX_TCP_BUF:
            return None if not st.seen else True
        pos = 0
        while len(buf) - pos >= 4:
            framing = st.framing1 if direction else st.framing0
            if framing < 0:
                framing = self._detect_framing(buf, pos)
                if framing < 0:
                    if len(buf) - pos < HEADER + 2:
                        if len(buf) >= DOOMED and doomed(buf):
                            _frame(st, direction, 2 + len(buf))
                            _keep(st, direction, b"")
                            return True
                        break  # too little to tell yet
                    _keep(st, direction, b"")
                    return True if st.seen else None
                _frame(st, direction, framing)
            if framing == 1:
                flen = unpack_from("!H", buf, pos)[0]
                if len(buf) - pos - 2 < flen:
                    break
                frame = buf[pos + 2:pos + 2 + flen]
                m = parse_message(frame)
                if m is not None and m.end == len(frame):
                    self._message(st, m, direction)
                elif st.turn and channel_data(frame, 0, False) == len(frame):
                    self._channel(st, frame, 0)
                pos += 2 + flen
                continue
            if buf[pos] & 0xC0 == 0:
                if len(buf) - pos < HEADER:
                    break
                if 20 + unpack_from("!H", buf, pos + 2)[0] > len(buf) - pos:
                    break  # message continues in the next segment
                m = parse_message(buf, pos)
                if m is None:
                    _keep(st, direction, b"")
                    return True if st.seen else None
                self._message(st, m, direction)
                pos = m.end
            elif st.turn:
                end = channel_data(buf, pos, True)
                if end < 0:
                    break
                self._channel(st, buf, pos)
                pos = end
            else:
                _keep(st, direction, b"")
                return True if st.seen else None
        _keep(st, direction, buf[pos:] if pos else buf)
        return True

    @staticmethod
    def _detect_framing(buf: bytes, pos: int) -> int:
        """0 for back-to-back STUN messages, 1 for RFC 4571 length-prefixed frames, -1 for neither."""
        n = len(buf) - pos
        if n >= HEADER and buf[pos] & 0xC0 == 0:
            end = pos + HEADER + unpack_from("!H", buf, pos + 2)[0]
            if end <= len(buf):
                if parse_message(buf[pos:end]) is not None:
                    return 0
            elif unpack_from("!I", buf, pos + 4)[0] == MAGIC_COOKIE:
                return 0  # the message continues in the next segment
        if n >= HEADER + 2 and buf[pos + 2] & 0xC0 == 0:
            flen = unpack_from("!H", buf, pos)[0]
            if flen < HEADER:
                return -1
            if n - 2 >= flen:
                m = parse_message(buf[pos + 2:pos + 2 + flen])
                return 1 if m is not None and m.end == flen else -1
            if unpack_from("!I", buf, pos + 6)[0] == MAGIC_COOKIE:
                return 1
        return -1

    def _message(self, st: _State, m: Message, direction: int) -> None:
        st.seen += 1
        if m.cookie:
            st.classic_only = False
        if m.method in TURN_METHODS:
            st.turn = True
        if m.app and not st.app:
            st.app, st.app_why = m.app, m.app_why
        if m.method == 9 and m.channel >= 0:
            if st.channels is None:
                st.channels = set()
            st.channels.add(m.channel)
        mname = _METHOD_NAMES.get(m.method, f"method 0x{m.method:03x}")
        if not st.first:
            st.first = f"{mname} {_CLASS_NAMES[m.cls]}" + (" with magic cookie" if m.cookie else
                                                            " (classic RFC 3489, no cookie)")
        for a in m.attrs:
            name = _NOTABLE.get(a)
            if name is not None:
                if st.notable is None:
                    st.notable = set()
                if len(st.notable) < 6:
                    st.notable.add(name)
        if m.cls == 0:
            if st.requests is None:
                st.requests = {}
            if len(st.requests) < _MAX_REQUESTS:
                st.requests[m.tid] = (direction, m.method)
        elif m.cls >= 2 and st.requests is not None:
            req = st.requests.get(m.tid)
            if req is not None and req[0] != direction and req[1] == m.method and not st.confirmed:
                st.confirmed = f"{_CLASS_NAMES[m.cls]} to {mname} request matches its transaction id"

    def _channel(self, st: _State, p: bytes, off: int) -> None:
        st.channel_data += 1
        ch = unpack_from("!H", p, off)[0]
        if st.channels is not None and ch in st.channels and not st.confirmed:
            st.confirmed = f"ChannelData on channel 0x{ch:04x} bound by ChannelBind"

    def _verdict(self, st: _State, confidence: str) -> InspectResult:
        ev = [st.first or "TURN ChannelData frames"]
        if st.confirmed:
            ev.append(st.confirmed)
        elif st.seen:
            ev.append(f"{st.seen} well-formed message(s), no cross-checked transaction yet")
        if st.channel_data:
            ev.append(f"{st.channel_data} ChannelData frame(s)")
        if st.notable:
            ev.append("attributes: " + ", ".join(sorted(st.notable)))
        proto = "turn" if st.turn else "stun"
        if st.app:
            ev.insert(1, f"{st.app.split('_')[0].capitalize()} call: {st.app_why} in a {proto} exchange")
            proto = st.app
        return self.verdict(proto, "confirmed" if confidence == "confirmed" else "heuristic", *ev)
