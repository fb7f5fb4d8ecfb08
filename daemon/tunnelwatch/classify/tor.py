"""Tor's link protocol inside TLS, from what an on-path observer sees (heuristic, outranks plain "tls").

Tor clients put a random hostname in the ClientHello's SNI: "www." + 4-25 base32 characters ([a-z2-7])
+ ".com". That shape alone also fits real names (www.facebook.com), so a second, independent fact is
required: either the relay's TLS 1.2 certificate names a random "www.<base32>.net" subject, or the
application-data packets have the sizes of fixed 514-byte (512 before link protocol 4) Tor cells under a
common record layout (TLS 1.3 / 1.2 AEAD, TLS 1.0-1.2 CBC with HMAC-SHA1/SHA256, 1/n-1 record splitting).
The relay address list is a different module (endpoint lists); this one never looks at addresses.
"""

from __future__ import annotations

import re
from typing import ClassVar, Final

from tunnelwatch.classify.base import DONE, REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, Packet
from tunnelwatch.classify.tlsname import client_hello_sni

_SNI_RE: Final = re.compile(rb"www\.[a-z2-7]{4,25}\.com")
_CERT_RE: Final = re.compile(rb"www\.[a-z2-7]{4,25}\.net")
_MAX_HANDSHAKE_PKTS: Final = 6
_TLS: Final = frozenset({"tls"})


def _cell_sizes() -> frozenset[int]:
    sizes: set[int] = set()
    for cell in (512, 514):
        for k in (1, 2, 3):
            body = cell * k
            # AEAD: TLS 1.3 (type byte + 16-byte tag), TLS 1.2 GCM (8-byte nonce + tag), ChaCha20 (tag).
            sizes.update({5 + body + 17, 5 + body + 24, 5 + body + 16})
            sizes.add(k * (5 + cell + 17))  # TLS 1.3, one record per cell
            for mac in (20, 32):
                cbc = (body + mac + 1 + 15) // 16 * 16
                sizes.add(5 + 16 + cbc)  # TLS 1.1/1.2 CBC: explicit IV
                sizes.add(5 + cbc)  # TLS 1.0 CBC
                split = (body - 1 + mac + 1 + 15) // 16 * 16
                first = (1 + mac + 1 + 15) // 16 * 16
                sizes.add(5 + first + 5 + split)  # TLS 1.0 with 1/n-1 record splitting
    return frozenset(sizes)


#: TCP payload sizes of packets that carry exactly k (1-3) Tor cells in TLS application-data records
CELL_PACKET_SIZES: Final = _cell_sizes()


class Tor(Classifier):
    """Tor relays and bridges without a pluggable transport: random SNI plus cell-sized TLS records."""

    name: ClassVar[str] = "tor"
    klass: ClassVar[Klass] = "proxy_obfuscated"
    transports: ClassVar[frozenset[int]] = frozenset({TCP})
    first_on: ClassVar[frozenset[int]] = frozenset({TCP})
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {TCP: frozenset({0x16})}
    protocols: ClassVar[tuple[str, ...]] = ("tor",)

    def first(self, pkt: Packet, direction: int) -> bool:
        """A client packet that may be a TLS ClientHello (the cheap part of the first look)."""
        p = pkt.payload
        return direction == 0 and len(p) >= 48 and p[0] == 0x16

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Match the SNI shape on the first client packet, then look for a second, independent fact."""
        p = pkt.payload
        st: list[int] | None = flow.state.get("tor")
        if st is None:
            if not self.first(pkt, direction):
                return REJECT  # cheap exit for everything that is not a TLS ClientHello
            sni = client_hello_sni(p)
            if sni is None or _SNI_RE.fullmatch(sni) is None:
                return REJECT
            flow.put_state("tor", [0, 0, 0])  # [cell-sized packets, certificate matched, packets seen]
            return None
        st[2] += 1
        if direction == 1 and not st[1] and st[2] <= _MAX_HANDSHAKE_PKTS and _CERT_RE.search(p):
            st[1] = 1
        elif p[:1] == b"\x17" and len(p) in CELL_PACKET_SIZES:
            st[0] += 1
        if st[1]:
            return self.verdict("tor", "heuristic", "random www.<base32>.com SNI",
                                "certificate names a random www.<base32>.net host", supersedes=_TLS)
        if st[0] >= 2:
            return self.verdict("tor", "heuristic", "random www.<base32>.com SNI",
                                f"{st[0]} application-data packets sized as whole 512/514-byte cells",
                                supersedes=_TLS)
        return None if st[2] < 32 else DONE
