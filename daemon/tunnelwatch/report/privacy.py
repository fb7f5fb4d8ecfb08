"""Privacy of subscriber (LAN) addresses in reports: in clear, pseudonymised with a keyed hash, or omitted.

The pseudonym is HMAC-SHA256(key, canonical address) truncated to 64 bits and rendered "h:<16 hex>": stable
for one key (the ISP can count and correlate one subscriber's flows), not reversible without the key (and
with a 256-bit random key, not guessable by hashing the small IPv4 space). Only addresses inside the
configured subscriber networks are touched; remote servers stay in clear because policy needs them.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Final

MODES = ("clear", "hash", "omit")
PREFIX = "h:"
#: 64 bits: collision odds stay negligible for the few million subscribers one key covers.
DIGEST_BYTES = 8
MIN_KEY_BYTES = 16
_ADDR_KEYS = ("src", "dst")


#: subscriber addresses when the operator names none: a CPE's LAN side is private (RFC 1918, CGNAT
#: RFC 6598, link-local, IPv6 ULA and link-local); the servers a subscriber talks to stay in clear
DEFAULT_SUBSCRIBER_NETS: Final = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                                  "169.254.0.0/16", "fc00::/7", "fe80::/10")


class Pseudonymizer:
    """Applies the configured privacy mode to subscriber addresses."""

    def __init__(self, mode: str, key: bytes | None, *, subscriber_nets: Iterable[str] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"privacy mode must be one of {', '.join(MODES)}, not {mode!r}")
        if mode == "hash" and (key is None or len(key) < MIN_KEY_BYTES):
            raise ValueError(f"privacy mode hash needs a key of at least {MIN_KEY_BYTES} bytes")
        self.mode = mode
        self._key = key or b""
        self.nets = [ipaddress.ip_network(n, strict=False) for n in subscriber_nets] \
            if subscriber_nets is not None else None

    def __repr__(self) -> str:
        return f"Pseudonymizer(mode={self.mode!r}, nets={self.nets!r})"  # never the key

    def covers(self, a: str) -> bool:
        """True when `a` is a subscriber address (inside subscriber_nets, or any address when none given)."""
        if self.nets is None:
            return True
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            return True  # unparsable: treat as sensitive rather than leak it
        return any(ip in n for n in self.nets)

    def addr(self, a: str) -> str | None:
        """The address as reported: itself (clear), "h:<hex>" (hash) or None (omit)."""
        if self.mode == "clear" or not self.covers(a):
            return a
        if self.mode == "omit":
            return None
        try:
            canon = ipaddress.ip_address(a.strip()).compressed
        except ValueError:
            canon = a.strip()
        mac = hmac.new(self._key, canon.encode("utf-8", "replace"), hashlib.sha256).digest()
        return PREFIX + mac[:DIGEST_BYTES].hex()

    def apply(self, rec: dict[str, object]) -> dict[str, object]:
        """A copy of a flow/event dict with subscriber src/dst transformed (None when omitted)."""
        out = dict(rec)
        for k in _ADDR_KEYS:
            v = out.get(k)
            if isinstance(v, str):
                out[k] = self.addr(v)
        return out


def load_or_create_key(path: str | os.PathLike[str]) -> bytes:
    """Read a key file (raw bytes), creating a random 32-byte one with mode 0600 when absent."""
    p = Path(path)
    try:
        key = p.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another worker created it first: use theirs
            return load_or_create_key(p)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        return key
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{p}: privacy key shorter than {MIN_KEY_BYTES} bytes")
    return key
