"""Names learned from DNS answers: which name a client resolved to reach an address.

A flow to an address carries no name when the client sends none (a VPN app's tunnel on a bare
address, or TLS without SNI), yet the DNS answer the client got just before says which name led
there. `parse_answers` reads a DNS response (question name, A/AAAA records and their TTLs; compression
pointers followed at most 16 times per name, at most 32 records); `NameCache` remembers (client, address)
-> name in a bounded LRU that respects each record's TTL (capped, with a short floor: clients connect
right after resolving, even on TTL 0). Keyed by the client too: a name holds only for the host that
resolved it, so one LAN host's forged "answers" cannot name another host's flows. No payload is kept,
only the name and the two addresses.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Final

from tunnelwatch.classify.tlsname import clean_name

#: addresses remembered at once (per engine); the least recently learned go first
MAX_ENTRIES: Final = 8192
#: longest time an answer is believed, whatever its TTL says (addresses of CDNs move)
MAX_TTL: Final = 3600
#: shortest: a TTL of 0 still covers the connection the client opens right after the answer
MIN_TTL: Final = 10
_MAX_RECORDS: Final = 32
_MAX_JUMPS: Final = 16
_A, _AAAA = 1, 28


def _name(p: bytes, pos: int) -> tuple[bytes | None, int]:
    """(dotted name or None, position after the name in the record)."""
    labels: list[bytes] = []
    after = -1
    total = 0
    for _ in range(128 + _MAX_JUMPS):
        if pos >= len(p):
            return None, pos
        ln = p[pos]
        if ln == 0:
            return b".".join(labels), (after if after >= 0 else pos + 1)
        if ln & 0xC0 == 0xC0:
            if pos + 1 >= len(p):
                return None, pos
            if after < 0:
                after = pos + 2
            target = ((ln & 0x3F) << 8) | p[pos + 1]
            if target >= pos:
                return None, pos  # pointers must point backwards: no loops
            pos = target
            continue
        if ln > 63:
            return None, pos
        labels.append(p[pos + 1:pos + 1 + ln])
        total += ln + 1
        if total > 255:
            return None, pos
        pos += ln + 1
    return None, pos


def parse_answers(p: bytes) -> tuple[str, list[tuple[bytes, int]]] | None:
    """A DNS response's question name and its (address, TTL) answers; None if not a usable response."""
    if len(p) < 12 or not p[2] & 0x80 or p[3] & 0x0F:  # a response, RCODE 0
        return None
    qd = (p[4] << 8) | p[5]
    an = (p[6] << 8) | p[7]
    if qd != 1 or an == 0:
        return None
    raw, pos = _name(p, 12)
    if raw is None:
        return None
    qname = clean_name(raw)
    if qname is None:
        return None
    pos += 4  # qtype, qclass
    out: list[tuple[bytes, int]] = []
    for _ in range(min(an, _MAX_RECORDS)):
        _, pos = _name(p, pos)
        if pos + 10 > len(p):
            break
        rtype = (p[pos] << 8) | p[pos + 1]
        ttl = int.from_bytes(p[pos + 4:pos + 8], "big")
        rdlen = (p[pos + 8] << 8) | p[pos + 9]
        rdata = p[pos + 10:pos + 10 + rdlen]
        pos += 10 + rdlen
        if len(rdata) != rdlen:
            break
        if (rtype == _A and rdlen == 4) or (rtype == _AAAA and rdlen == 16):
            out.append((rdata, ttl if ttl < 0x80000000 else 0))  # RFC 2181: a "negative" TTL is 0
    return (qname, out) if out else None


class NameCache:
    """(client, address) -> the name that client resolved to reach the address; bounded LRU with
    per-entry expiry. Keys are the two packed addresses joined."""

    __slots__ = ("_map", "max_entries")

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._map: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def learn(self, name: str, client: bytes, addr: bytes, ttl: int, now: float) -> None:
        """Remember that `name` resolved to `addr` for `client` at `now`, for `ttl` s (capped and floored)."""
        m = self._map
        key = client + addr
        m.pop(key, None)
        if len(m) >= self.max_entries:
            m.popitem(last=False)
        m[key] = (name, now + max(MIN_TTL, min(ttl, MAX_TTL)))

    def lookup(self, client: bytes, addr: bytes, now: float) -> str | None:
        """The name `client` last resolved to addr, if its answer has not expired."""
        key = client + addr
        e = self._map.get(key)
        if e is None:
            return None
        if e[1] < now:
            del self._map[key]
            return None
        return e[0]

    def learn_response(self, p: bytes, client: bytes, now: float) -> int:
        """Learn every address of a DNS response sent to `client`; returns how many."""
        parsed = parse_answers(p)
        if parsed is None:
            return 0
        name = sys.intern(parsed[0])  # many flows go to one name: share the string
        for addr, ttl in parsed[1]:
            self.learn(name, client, addr, ttl, now)
        return len(parsed[1])

    def __len__(self) -> int:
        return len(self._map)
