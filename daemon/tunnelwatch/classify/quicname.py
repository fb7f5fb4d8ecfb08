"""QUIC client Initial packets decrypted, to read the ClientHello (its SNI) inside the CRYPTO frames.

Initial packets are encrypted, but with keys anyone can derive (RFC 9001 section 5.2): the initial
secret is HKDF-Extract(version salt, client's Destination Connection ID), the client secret
HKDF-Expand-Label(secret, "client in"), and from it the AES-128-GCM key, IV and header-protection key
("quic key"/"quic iv"/"quic hp"; QUIC v2, RFC 9369, uses its own salt, "quicv2 ..." labels and packet
type 1 for Initial). Header protection is removed with AES-ECB over a 16-byte sample of the ciphertext.
Versions: 1, 2 and drafts 29-32 (the draft-29 salt; still sent by some stacks).

Bounded: at most 3 coalesced packets per datagram, CRYPTO data only from offsets below 8 KiB, at most 96
fragments per flow (Chromium scatters its hello over dozens of CRYPTO frames mixed with PING and PADDING).
The keys derive from the first Initial's DCID and are kept for the flow's next Initial (a large hello
spans two); an SNI beyond a gap, its start still missing, is found by scanning the contiguous runs
(tlsname.scan_sni). Hostile input gives None, never an exception.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tunnelwatch.classify.tlsname import Hello, parse_hello, scan_sni

V1: Final = 0x00000001
V2: Final = 0x6B3343CF
_SALT_V1: Final = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
_SALT_V2: Final = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
_SALT_D29: Final = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
#: version -> (initial salt, label prefix, long-header packet type of Initial)
VERSIONS: Final[dict[int, tuple[bytes, bytes, int]]] = {
    V1: (_SALT_V1, b"quic ", 0),
    V2: (_SALT_V2, b"quicv2 ", 1),
    **{0xFF000000 + d: (_SALT_D29, b"quic ", 0) for d in range(29, 33)},
}
#: CRYPTO stream bytes kept per flow: a ClientHello with post-quantum key shares is about 2 KB
MAX_CRYPTO: Final = 8192
#: Chromium spreads its hello over dozens of small CRYPTO frames among PING and PADDING ("chaos protection")
MAX_FRAGMENTS: Final = 96
_MAX_COALESCED: Final = 3
#: frames other than PADDING read per packet (a run of PADDING bytes is skipped in one step)
_MAX_FRAMES: Final = 256


@dataclass(frozen=True, slots=True)
class Keys:
    """Client Initial protection keys of one connection."""

    version: int
    key: bytes
    iv: bytes
    hp: bytes


@dataclass(slots=True)
class InitialState:
    """Per-flow reassembly: the keys of the first Initial and the CRYPTO fragments seen so far."""

    keys: Keys | None = None
    fragments: dict[int, bytes] = field(default_factory=dict)
    packets: int = 0


def hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with SHA-256 and an empty context (RFC 8446 section 7.1)."""
    info = length.to_bytes(2, "big") + bytes([6 + len(label)]) + b"tls13 " + label + b"\x00"
    out, block, i = b"", b"", 1
    while len(out) < length:  # length <= 32 here: one or two HMAC blocks
        block = hmac.new(secret, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def client_keys(version: int, dcid: bytes) -> Keys | None:
    """The client's Initial keys for this version and Destination Connection ID (None: unknown version)."""
    v = VERSIONS.get(version)
    if v is None:
        return None
    salt, prefix, _ = v
    initial = hmac.new(salt, dcid, hashlib.sha256).digest()
    secret = hkdf_expand_label(initial, b"client in", 32)
    return Keys(version, hkdf_expand_label(secret, prefix + b"key", 16),
                hkdf_expand_label(secret, prefix + b"iv", 12), hkdf_expand_label(secret, prefix + b"hp", 16))


def _varint(p: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); (-1, pos) when the bytes end first."""
    if pos >= len(p):
        return -1, pos
    n = 1 << (p[pos] >> 6)
    if pos + n > len(p):
        return -1, pos
    v = p[pos] & 0x3F
    for i in range(1, n):
        v = (v << 8) | p[pos + i]
    return v, pos + n


def initial_version(p: bytes) -> int:
    """The version of a long-header packet whose version we can decrypt, else 0."""
    if len(p) < 7 or p[0] & 0x80 == 0:
        return 0
    v = int.from_bytes(p[1:5], "big")
    return v if v in VERSIONS else 0


def decrypt_initials(p: bytes, st: InitialState) -> bool:
    """Decrypt the client Initial packets in datagram p into st.fragments; True if any was decrypted."""
    pos, ok = 0, False
    for _ in range(_MAX_COALESCED):
        if pos + 7 > len(p) or p[pos] & 0x80 == 0:
            break
        nxt = _one(p, pos, st)
        if nxt < 0:
            break
        ok = True
        pos = nxt
    return ok


def _one(p: bytes, start: int, st: InitialState) -> int:
    """Decrypt one long-header packet at p[start]; returns where the next one starts, -1 on failure."""
    version = int.from_bytes(p[start + 1:start + 5], "big")
    v = VERSIONS.get(version)
    if v is None or ((p[start] >> 4) & 3) != v[2]:
        return -1  # not an Initial of a version we know (0-RTT, Handshake, version negotiation, ...)
    pos = start + 5
    dlen = p[pos]
    dcid = p[pos + 1:pos + 1 + dlen]
    pos += 1 + dlen
    if dlen > 20 or pos >= len(p) or p[pos] > 20:
        return -1
    pos += 1 + p[pos]  # source connection id
    tlen, pos = _varint(p, pos)
    if tlen < 0:
        return -1
    pos += tlen  # token
    length, pn_off = _varint(p, pos)
    end = pn_off + length
    if length < 20 or end > len(p):
        return -1
    keys = st.keys
    if keys is None or keys.version != version:
        keys = client_keys(version, dcid)
        if keys is None:
            return -1
    sample = p[pn_off + 4:pn_off + 20]
    mask = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor().update(sample)
    first = p[start] ^ (mask[0] & 0x0F)
    pn_len = (first & 3) + 1
    pn_bytes = bytes(p[pn_off + i] ^ mask[1 + i] for i in range(pn_len))
    header = bytes([first]) + p[start + 1:pn_off] + pn_bytes
    nonce = bytearray(keys.iv)
    for i, b in enumerate(pn_bytes):
        nonce[12 - pn_len + i] ^= b
    try:
        plain = AESGCM(keys.key).decrypt(bytes(nonce), p[pn_off + pn_len:end], header)
    except InvalidTag:
        return -1  # not an Initial after all, or a server's (other keys): nothing to read
    st.keys = keys  # the first Initial's DCID sets the keys of the connection's later Initials
    _frames(plain, st)
    return end


def _frames(plain: bytes, st: InitialState) -> None:
    pos = 0
    for _ in range(_MAX_FRAMES):
        if pos >= len(plain):
            return
        ftype = plain[pos]
        if ftype == 0x00:  # PADDING: skip the whole run at once
            nxt = len(plain) - len(plain[pos:].lstrip(b"\x00"))
            pos = nxt
            continue
        if ftype == 0x01:  # PING
            pos += 1
            continue
        if ftype in (0x02, 0x03):  # ACK: largest, delay, range count, first range, ranges (+ ECN counts)
            vals = 4
            pos += 1
            count = 0
            for i in range(vals):
                val, pos = _varint(plain, pos)
                if val < 0:
                    return
                if i == 2:
                    count = val
            for _ in range(min(count, 64) * 2 + (3 if ftype == 0x03 else 0)):
                val, pos = _varint(plain, pos)
                if val < 0:
                    return
            continue
        if ftype != 0x06:
            return  # CONNECTION_CLOSE or something unexpected in an Initial: stop reading
        off, pos = _varint(plain, pos + 1)
        ln, pos = _varint(plain, pos)
        if off < 0 or ln < 0 or pos + ln > len(plain):
            return
        if off < MAX_CRYPTO and len(st.fragments) < MAX_FRAGMENTS:
            data = plain[pos:pos + min(ln, MAX_CRYPTO - off)]
            if len(data) > len(st.fragments.get(off, b"")):
                st.fragments[off] = data
        pos += ln


def crypto_runs(st: InitialState) -> list[bytes]:
    """The CRYPTO stream as its contiguous runs, in offset order (the first starts at 0 if any does)."""
    runs: list[bytes] = []
    parts: list[bytes] = []
    have = -1
    for o, d in sorted(st.fragments.items()):  # at most MAX_FRAGMENTS: one pass in offset order
        if o > have:
            if parts:
                runs.append(b"".join(parts))
            parts, have = [], o
        if o + len(d) > have:
            parts.append(d[have - o:])
            have = o + len(d)
    if parts:
        runs.append(b"".join(parts))
    return runs


def crypto_prefix(st: InitialState) -> bytes:
    """The CRYPTO stream from offset 0 as far as it is contiguous."""
    return crypto_runs(st)[0] if 0 in st.fragments else b""


def initial_hello(p: bytes, st: InitialState) -> Hello | None:
    """Feed one client datagram; the ClientHello as far as the CRYPTO stream holds it, or None."""
    st.packets += 1
    if not decrypt_initials(p, st):
        return None
    runs = crypto_runs(st)
    h = parse_hello(runs[0]) if 0 in st.fragments else None
    if h is not None and (h.sni is not None or h.complete):
        return h
    # the SNI may sit beyond a gap (the hello's middle is still in a later Initial): look for it there
    for data in runs:
        sni = scan_sni(data)
        if sni is not None:
            return Hello(sni, h.alpn if h is not None else (), False, sni.encode("ascii"))
    return h
