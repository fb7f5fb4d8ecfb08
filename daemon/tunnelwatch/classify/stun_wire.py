"""The STUN/TURN wire format (RFC 3489/5389/8489, RFC 5766/8656): message and ChannelData parsing,
the messengers' fingerprints in attributes, and the test of a TCP stream's start that can frame no
STUN. The classifier that uses them is stun.py."""

from __future__ import annotations

from struct import unpack_from
from typing import Final, NamedTuple

MAGIC_COOKIE: Final = 0x2112A442
HEADER: Final = 20
# RFC 3489 had no cookie, so its messages are checked against its own small vocabulary.
_CLASSIC_TYPES: Final = frozenset({0x0001, 0x0101, 0x0111, 0x0002, 0x0102, 0x0112})
_CLASSIC_ATTRS: Final = frozenset(range(0x0001, 0x000C)) | {0x0020, 0x8020, 0x8022, 0x8023, 0x8028}
CHANNEL_NUMBER: Final = 0x000C
_MAX_ATTRS: Final = 48
REALM: Final = 0x0014
WHATSAPP: Final = "whatsapp_call"
SIGNAL: Final = "signal_call"
TELEGRAM: Final = "telegram_call"
TEAMS: Final = "teams_call"
APPS: Final = (WHATSAPP, SIGNAL, TELEGRAM, TEAMS)
# Microsoft's comprehension-optional attributes (MS-TURN / MS-ICE2), sent by Skype and Teams
_MS_ATTRS: Final = {0x8054: "CANDIDATE-IDENTIFIER", 0x8055: "MS-SERVICE-QUALITY",
                    0x8070: "MS-IMPLEMENTATION-VERSION", 0x8095: "MS-MULTIPLEXED-TURN-SESSION-ID"}
# realm suffix -> (application, evidence); values are compared, never copied into evidence
_REALMS: Final = ((b"signal.org", SIGNAL, "REALM is signal.org (Signal's TURN servers)"),
                  (b"whispersystems.org", SIGNAL, "REALM is whispersystems.org (Signal's TURN servers)"),
                  (b"telegram.org", TELEGRAM, "REALM is telegram.org (Telegram's TURN relays)"))



class Message(NamedTuple):
    """One parsed STUN message."""

    cls: int
    method: int
    cookie: bool
    tid: bytes
    attrs: tuple[int, ...]
    channel: int
    end: int
    app: str = ""  # a messenger fingerprint (APPS), or ""
    app_why: str = ""


def message_type(t: int) -> tuple[int, int]:
    """Split a 14-bit STUN message type into (class, method)."""
    cls = ((t >> 4) & 1) | ((t >> 7) & 2)
    method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80)
    return cls, method


def parse_message(p: bytes, off: int = 0) -> Message | None:
    """Parse one STUN message at p[off:]; None unless header and attribute walk are consistent."""
    if len(p) - off < HEADER or p[off] & 0xC0:
        return None
    t, length, cookie_word = unpack_from("!HHI", p, off)
    end = off + HEADER + length
    if end > len(p):
        return None
    cookie = cookie_word == MAGIC_COOKIE
    if not cookie and (t not in _CLASSIC_TYPES or length % 4):
        return None
    cls, method = message_type(t)
    if method == 0:
        return None
    attrs: list[int] = []
    channel = -1
    app, why = "", ""
    if cookie and 0x200 <= method <= 0x2FF:
        app, why = WHATSAPP, f"method 0x{method:03x} (unassigned; WhatsApp's)"
    pos = off + HEADER
    while pos < end:
        if end - pos < 4 or len(attrs) >= _MAX_ATTRS:
            return None
        at, al = unpack_from("!HH", p, pos)
        nxt = pos + 4 + al
        if nxt > end:
            return None
        if at == CHANNEL_NUMBER and al >= 2:
            channel = unpack_from("!H", p, pos + 4)[0]
        elif (at == REALM or 0x4000 <= at <= 0x4007) and cookie and not app:
            if at != REALM:
                app, why = WHATSAPP, f"attribute type 0x{at:04x} (unassigned; WhatsApp's)"
            else:
                realm = bytes(p[pos + 4:nxt]).rstrip(b"\x00").lower()
                for suffix, name, text in _REALMS:
                    if realm == suffix or realm.endswith(b"." + suffix):
                        app, why = name, text
                        break
        elif at in _MS_ATTRS and not app:
            app, why = TEAMS, f"attribute {_MS_ATTRS[at]} (0x{at:04x}: Microsoft's STUN extension)"
        padded = pos + 4 + ((al + 3) & ~3)
        # Some clients (seen from WhatsApp) leave the last attribute unpadded.
        pos = padded if padded <= end else nxt
        attrs.append(at)
    if not cookie and not all(a in _CLASSIC_ATTRS for a in attrs):
        return None
    tid = bytes(p[off + 4:off + HEADER]) if not cookie else bytes(p[off + 8:off + HEADER])
    return Message(cls, method, cookie, tid, tuple(attrs), channel, end, app, why)


def channel_data(p: bytes, off: int, tcp: bool) -> int:
    """End offset of a TURN ChannelData frame at p[off:] (0x4000-0x7FFF channel), or -1."""
    if len(p) - off < 4 or not 0x40 <= p[off] <= 0x7F:
        return -1
    length = unpack_from("!H", p, off + 2)[0]
    end = off + 4 + length
    padded = off + 4 + ((length + 3) & ~3)
    if tcp:
        return padded if padded <= len(p) else -1
    # Over UDP the padding is optional.
    return len(p) if end <= len(p) <= padded else -1


_COOKIE: Final = MAGIC_COOKIE.to_bytes(4, "big")
#: bytes of a TCP direction's start that settle whether it can open either STUN framing (doomed)
DOOMED: Final = 10


def doomed(buf: bytes) -> bool:
    """True when no continuation of a stream starting with buf (>= DOOMED bytes) can frame STUN:
    _detect_framing needs, for plain messages, a zero top-2-bits first byte and the cookie at 4 or a
    classic type at 0; for RFC 4571 frames, a length >= 20 and the same at 2. Its bytes 0-9 decide."""
    cookie = _COOKIE
    plain = not buf[0] & 0xC0 and (buf[4:8] == cookie or (buf[0] << 8 | buf[1]) in _CLASSIC_TYPES)
    framed = ((buf[0] << 8 | buf[1]) >= HEADER and not buf[2] & 0xC0
              and (buf[6:10] == cookie or (buf[2] << 8 | buf[3]) in _CLASSIC_TYPES))
    return not plain and not framed
