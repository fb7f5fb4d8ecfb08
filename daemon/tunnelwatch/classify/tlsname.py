"""The TLS ClientHello as a source of names: its server name (SNI) and offered ALPN protocols.

One parser for every module that reads a ClientHello: `names` (the flow's name for endpoint lists), `tor`
(the random-hostname shape) and `quicname` (the hello inside a decrypted QUIC Initial). It reads a
handshake message that may be cut short (the first TCP segment of a large post-quantum hello, a QUIC
CRYPTO stream still missing its tail) and returns what the available bytes hold. Work is bounded by
the input: at most 64 extensions and 16 ALPN entries; hostile bytes give None or fewer fields, never an
exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_EXT_SNI: Final = 0
_EXT_ALPN: Final = 16
_MAX_EXTS: Final = 64
_MAX_ALPN: Final = 16
_MAX_RECORDS: Final = 8
#: bytes of a host name a name can have (RFC 1035: 253 characters in text form)
MAX_NAME: Final = 253
_NAME_BYTES: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-._")
_NONZERO: Final = re.compile(rb"[^\x00]")


@dataclass(frozen=True, slots=True)
class Hello:
    """What a ClientHello says about where it goes: SNI (lowercase, no trailing dot) and ALPN list."""

    sni: str | None
    alpn: tuple[str, ...]
    #: the whole hello was available (a missing SNI then means the client sent none)
    complete: bool
    #: the server name exactly as sent (case and all: Tor's random names are lowercase, real ones vary)
    sni_raw: bytes | None = None


def clean_name(raw: bytes) -> str | None:
    """A host name as sent on the wire, lowercased and checked: None unless a plausible DNS name."""
    name = raw.lower().rstrip(b".")
    if not name or len(name) > MAX_NAME or not _NAME_BYTES.issuperset(name):
        return None
    if name.replace(b".", b"").isdigit():
        return None  # an IPv4 literal (RFC 6066 forbids them in SNI, some clients send them): not a name
    return name.decode("ascii")


def parse_hello(msg: bytes) -> Hello | None:
    """Parse a handshake message (type 1, 3-byte length, body) that may be truncated; None if not a hello."""
    n = len(msg)
    if n < 4 + 2 + 32 + 1 or msg[0] != 1:
        return None
    full = 4 + ((msg[1] << 16) | (msg[2] << 8) | msg[3])
    end = min(n, full)
    pos = 4 + 2 + 32
    pos += 1 + msg[pos]  # session id
    if pos + 2 > end:
        return None
    pos += 2 + ((msg[pos] << 8) | msg[pos + 1])  # cipher suites
    if pos + 1 > end:
        return None
    pos += 1 + msg[pos]  # compression methods
    if pos + 2 > end:
        return Hello(None, (), n >= full, None)  # a hello without extensions (SSL 3 style)
    ext_end = min(end, pos + 2 + ((msg[pos] << 8) | msg[pos + 1]))
    pos += 2
    raw: bytes | None = None
    alpn: tuple[str, ...] = ()
    for _ in range(_MAX_EXTS):  # bounded: a hostile hello cannot make us loop
        if pos + 4 > ext_end:
            break
        etype = (msg[pos] << 8) | msg[pos + 1]
        elen = (msg[pos + 2] << 8) | msg[pos + 3]
        body = msg[pos + 4:pos + 4 + elen]
        pos += 4 + elen
        if len(body) < elen:
            break  # cut short: what follows is not here yet
        if etype == _EXT_SNI:
            raw = _sni(body)
        elif etype == _EXT_ALPN:
            alpn = _alpn(body)
    return Hello(clean_name(raw) if raw is not None else None, alpn, n >= full, raw)


def _sni(body: bytes) -> bytes | None:
    # server_name_list: 2-byte length, then (type 1 byte = 0 host_name, 2-byte length, name)
    if len(body) < 5 or body[2] != 0:
        return None
    ln = (body[3] << 8) | body[4]
    raw = body[5:5 + ln]
    return raw if len(raw) == ln else None


def _alpn(body: bytes) -> tuple[str, ...]:
    out: list[str] = []
    pos, end = 2, min(len(body), 2 + ((body[0] << 8) | body[1]) if len(body) >= 2 else 0)
    while pos < end and len(out) < _MAX_ALPN:
        ln = body[pos]
        proto = body[pos + 1:pos + 1 + ln]
        if not ln or len(proto) < ln:
            break
        out.append(proto.decode("ascii", "replace"))
        pos += 1 + ln
    return tuple(out)


def scan_sni(data: bytes) -> str | None:
    """Find a server_name extension in a piece of a ClientHello whose start is missing (a QUIC CRYPTO
    fragment beyond a gap): its type 0 and three nested lengths must agree and the name must be a plausible
    host name with a dot. At most 512 candidate positions are tried."""
    pos, n = 0, len(data)
    for _ in range(512):
        i = data.find(b"\x00\x00", pos)
        if i < 0 or i + 9 > n:
            return None
        elen = (data[i + 2] << 8) | data[i + 3]
        if (elen >= 8 and ((data[i + 4] << 8) | data[i + 5]) == elen - 2 and data[i + 6] == 0
                and ((data[i + 7] << 8) | data[i + 8]) == elen - 5):
            raw = data[i + 9:i + 4 + elen]
            name = clean_name(raw) if len(raw) == elen - 5 and b"." in raw else None
            if name is not None:
                return name
        # a run of zero bytes holds candidates only at its end: jump there (cost: the run's length)
        m = _NONZERO.search(data, i)
        run = (m.start() if m is not None else n) - i
        pos = max(i + 1, i + run - 3)
    return None


def handshake_bytes(p: bytes) -> bytes:
    """The handshake bytes carried by the TLS records at the start of p (bounded; may be cut short)."""
    if len(p) >= 5 and p[0] == 0x16 and p[1] == 3 and (len(p) < 5 + ((p[3] << 8) | p[4])):
        return p[5:]  # the common case: one record, its tail not here yet
    parts: list[bytes] = []
    pos = 0
    for _ in range(_MAX_RECORDS):
        if pos + 5 > len(p) or p[pos] != 0x16 or p[pos + 1] != 3:
            break
        ln = (p[pos + 3] << 8) | p[pos + 4]
        parts.append(p[pos + 5:pos + 5 + ln])
        pos += 5 + ln
    return b"".join(parts)


def record_hello(p: bytes) -> Hello | None:
    """The ClientHello in TLS records starting at p[0] (one packet, or a client's first segments joined)."""
    if len(p) < 9 or p[0] != 0x16 or p[1] != 3 or p[5] != 1:
        return None
    return parse_hello(handshake_bytes(p))


def client_hello_sni(p: bytes) -> bytes | None:
    """The server name in a TLS ClientHello record (first record of the packet), as sent, or None."""
    h = record_hello(p)
    return h.sni_raw if h is not None else None
