"""The server certificate of a TLS 1.0-1.2 handshake as a source of names: its subject organisation (O).

VPN apps often reach their servers by bare address, without SNI, and the servers answer with the
provider's own certificate (PIA: "O=Private Internet Access", Windscribe: "O=Windscribe", a FortiGate's
factory certificate: "O=Fortinet"). Before TLS 1.3 the Certificate message travels in clear right after
the ServerHello, so the leaf certificate's subject can be read from the server's first segments; TLS 1.3
encrypts it (then there is nothing to read, and the reader says so). Only the DER needed to reach the
subject is walked: at most 8 records, 8 handshake messages and 16 name attributes; hostile bytes give
None, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

_OID_O: Final = b"\x55\x04\x0a"
_OID_CN: Final = b"\x55\x04\x03"
_STRING_TAGS: Final = frozenset({0x0C, 0x13, 0x14, 0x16, 0x1E, 0x1C})  # UTF8, Printable, T61, IA5, BMP, Univ.
_MAX_RECORDS: Final = 8
_MAX_MESSAGES: Final = 8
_MAX_ATTRS: Final = 16
MAX_TEXT: Final = 128
#: the reader's answers besides a Subject: wait for more server bytes, or give up on this flow
MORE: Final = "more"
NONE: Final = "none"


@dataclass(frozen=True, slots=True)
class Subject:
    """The leaf certificate's subject organisation and common name ("" when absent)."""

    organisation: str
    common_name: str


def _tlv(b: bytes, pos: int) -> tuple[int, int, int] | None:
    """(tag, content start, content end) of the DER element at pos; the end may lie beyond b."""
    if pos + 2 > len(b):
        return None
    tag, ln = b[pos], b[pos + 1]
    pos += 2
    if ln & 0x80:
        n = ln & 0x7F
        if not 1 <= n <= 3 or pos + n > len(b):
            return None
        ln = int.from_bytes(b[pos:pos + n], "big")
        pos += n
    return tag, pos, pos + ln


def _text(b: bytes, tag: int) -> str:
    raw = b[:MAX_TEXT * 2]
    s = raw.decode("utf-16-be", "replace") if tag == 0x1E else raw.decode("utf-8", "replace")
    return s.strip()[:MAX_TEXT]


def cert_subject(der: bytes) -> Subject | str:
    """The subject of a DER certificate that may be cut short: Subject, MORE (cut before the subject's
    end) or NONE (not a certificate)."""
    cert = _tlv(der, 0)
    if cert is None or cert[0] != 0x30:
        return MORE if len(der) < 8 else NONE
    tbs = _tlv(der, cert[1])
    if tbs is None or tbs[0] != 0x30:
        return MORE if len(der) < cert[1] + 8 else NONE
    pos = tbs[1]
    # [0] version (optional), serial, signature algorithm, issuer, validity, then the subject
    for want in (0xA0, 0x02, 0x30, 0x30, 0x30):
        el = _tlv(der, pos)
        if el is None:
            return MORE
        if el[0] != want:
            if want == 0xA0:
                continue  # v1 certificate: no version field
            return NONE
        if want == 0xA0:
            pos = el[2]
            continue
        if el[2] > len(der):
            return MORE
        pos = el[2]
    subject = _tlv(der, pos)
    if subject is None or subject[2] > len(der):
        return MORE
    if subject[0] != 0x30:
        return NONE
    org = cn = ""
    p = subject[1]
    for _ in range(_MAX_ATTRS):
        if p >= subject[2]:
            break
        rdn = _tlv(der, p)
        if rdn is None or rdn[0] != 0x31:
            return NONE
        seq = _tlv(der, rdn[1])
        if seq is not None and seq[0] == 0x30:
            oid = _tlv(der, seq[1])
            if oid is not None and oid[0] == 0x06:
                val = _tlv(der, oid[2])
                if val is not None and val[0] in _STRING_TAGS and val[2] <= rdn[2]:
                    if der[oid[1]:oid[2]] == _OID_O and not org:
                        org = _text(der[val[1]:val[2]], val[0])
                    elif der[oid[1]:oid[2]] == _OID_CN and not cn:
                        cn = _text(der[val[1]:val[2]], val[0])
        p = rdn[2]
    return Subject(org, cn)


def server_subject(p: bytes) -> Subject | str:
    """Read the server's first flight (TLS records from the start of its byte stream, possibly cut
    short): the leaf certificate's Subject, MORE (not all there yet) or NONE (TLS 1.3, or no certificate
    in clear)."""
    hs = bytearray()
    pos = 0
    for _ in range(_MAX_RECORDS):
        if pos >= len(p):
            break
        if pos + 5 > len(p):
            break
        if p[pos] != 0x16 or p[pos + 1] != 3:
            # ChangeCipherSpec or encrypted records before any certificate: TLS 1.3 (or resumption)
            return NONE
        ln = (p[pos + 3] << 8) | p[pos + 4]
        hs += p[pos + 5:pos + 5 + ln]
        pos += 5 + ln
    at = 0
    for _ in range(_MAX_MESSAGES):
        if at + 4 > len(hs):
            return MORE
        mtype = hs[at]
        mlen = (hs[at + 1] << 16) | (hs[at + 2] << 8) | hs[at + 3]
        if mtype == 11:  # Certificate: 3-byte list length, 3-byte length of the leaf, the leaf's DER
            body = bytes(hs[at + 4 + 6:at + 4 + mlen])
            return cert_subject(body)
        if mtype not in (2, 22):  # only ServerHello (and a CertificateStatus) may come first
            return NONE
        if mtype == 2 and _is_tls13(bytes(hs[at + 4:at + 4 + mlen])):
            return NONE
        at += 4 + mlen
    return NONE


def _is_tls13(sh: bytes) -> bool:
    """Whether a ServerHello selects TLS 1.3 (supported_versions extension = 0x0304)."""
    pos = 2 + 32
    if pos >= len(sh):
        return False
    pos += 1 + sh[pos] + 2 + 1  # session id, cipher suite, compression
    if pos + 2 > len(sh):
        return False
    end = min(len(sh), pos + 2 + ((sh[pos] << 8) | sh[pos + 1]))
    pos += 2
    for _ in range(32):
        if pos + 4 > end:
            return False
        etype = (sh[pos] << 8) | sh[pos + 1]
        elen = (sh[pos + 2] << 8) | sh[pos + 3]
        if etype == 43 and elen == 2:
            return sh[pos + 4:pos + 6] == b"\x03\x04"
        pos += 4 + elen
    return False
