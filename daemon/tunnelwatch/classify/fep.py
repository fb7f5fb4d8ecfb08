"""Fully encrypted first packets (Shadowsocks, VMess, obfs4 and the like): "looks like nothing" over TCP.

Owns the exemption rules Wu et al. measured on the Great Firewall of China ("How the Great Firewall of
China Detects and Blocks Fully Encrypted Traffic", USENIX Security 2023). The client's first TCP data
packet is exempt (not fully encrypted) when any of these holds:
  Ex1 average popcount per byte <= 3.4 or >= 4.6; Ex2 the first 6 bytes are printable ASCII;
  Ex3 more than 50% of the bytes are printable; Ex4 more than 20 contiguous printable bytes;
  Ex5 a known protocol prefix (TLS record 0x16/0x17 0x03 0x00-0x09, HTTP request methods).
The GFW applied these to one direction only and accepted roughly 0.6% false positives. Here, to keep
ordinary traffic unflagged, the classifier is stricter: the client must speak first with at least
`MIN_LEN` bytes, a few more known binary protocols are exempt, and the server's first data packet must
be non-exempt too. The verdict is always heuristic: no handshake can be parsed in "random" bytes, so the
protocol is reported as "fully_encrypted" (the lengths are evidence, not proof of Shadowsocks/VMess/obfs4).
"""

from __future__ import annotations

from typing import ClassVar, Final

from tunnelwatch.classify.base import DONE, REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.flow import Flow
from tunnelwatch.packet import TCP, Packet

#: shortest first packet judged: every protocol of this kind sends a salt/IV or key share (>= 16 bytes)
#: plus an authenticated header, and short packets make the popcount mean too noisy to mean anything
MIN_LEN: Final = 48
#: only this prefix of a packet is measured (bounds the cost on jumbo/GRO-merged payloads)
MAX_MEASURED: Final = 2048
POPCOUNT_LOW: Final = 3.4
POPCOUNT_HIGH: Final = 4.6
_PRINTABLE: Final = bytes(range(0x20, 0x7F))
#: printable bytes -> 'P', everything else -> NUL, so a printable run is a run of 'P'
_RUN_MAP: Final = bytes(0x50 if 0x20 <= b < 0x7F else 0 for b in range(256))
_RUN_NEEDLE: Final = b"P" * 21
_HTTP: Final = (b"GET ", b"PUT ", b"POST ", b"HEAD ")
# Binary protocols whose first client bytes are fixed and cheap to recognise; without these exemptions
# their random-looking bodies (keys, nonces) would pass the GFW rules. Why each: SOCKS4/5 greetings,
# RDP/TPKT, SMB/NetBIOS session, MS-SQL TDS prelogin, MQTT CONNECT, PostgreSQL SSLRequest/startup.
_BINARY_PREFIXES: Final = (b"\x05\x01", b"\x05\x02", b"\x04\x01", b"\x03\x00", b"\x00\x00", b"\x12\x01",
                           b"\x10", b"\x81\x00", b"\xfeSMB", b"\xffSMB")


def popcount_mean(p: bytes) -> float:
    """Average number of set bits per byte (Ex1's measure); 0.0 for empty input."""
    return int.from_bytes(p, "big").bit_count() / len(p) if p else 0.0


def exemption(p: bytes) -> str:
    """The first exemption (Wu et al. Ex1-Ex5, plus ours) that applies to a first packet, '' for none."""
    p = p[:MAX_MEASURED]
    n = len(p)
    if n < MIN_LEN:
        return "short"
    # Ex5: protocol fingerprints, cheapest first (three byte compares).
    if (p[0] == 0x16 or p[0] == 0x17) and p[1] == 3 and p[2] <= 9:
        return "Ex5 TLS"
    if p.startswith(_HTTP):
        return "Ex5 HTTP"
    if p.startswith(_BINARY_PREFIXES) or p.startswith(b"SSH-"):
        return "known protocol prefix"
    if _length_prefixed(p, n):
        return "length-prefixed framing"
    if not p[:6].translate(None, _PRINTABLE):
        return "Ex2 first 6 bytes printable"
    if (n - len(p.translate(None, _PRINTABLE))) * 2 > n:
        return "Ex3 more than half printable"
    pc = popcount_mean(p)
    if pc <= POPCOUNT_LOW or pc >= POPCOUNT_HIGH:
        return "Ex1 popcount"
    if _RUN_NEEDLE in p.translate(_RUN_MAP):
        return "Ex4 printable run > 20"
    return ""


def _length_prefixed(p: bytes, n: int) -> bool:
    # A 16-bit length field (either byte order) that matches the packet is structure, not ciphertext
    # (Viber, many game and messenger framings); for random bytes the odds are about 1 in 5000.
    be = (p[0] << 8) | p[1]
    le = (p[1] << 8) | p[0]
    return n - 4 <= be <= n or n - 4 <= le <= n


class FullyEncrypted(Classifier):
    """TCP flows whose first data packets both ways look uniformly random (heuristic only)."""

    name: ClassVar[str] = "fully_encrypted"
    klass: ClassVar[Klass] = "proxy_obfuscated"
    transports: ClassVar[frozenset[int]] = frozenset({TCP})
    protocols: ClassVar[tuple[str, ...]] = ("fully_encrypted",)

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Judge the client's first data packet, then the server's first; reject at the first exemption."""
        p = pkt.payload
        first = flow.state.get(self.name)
        if first is None:
            # These protocols are client-first: a server banner (SMTP, FTP, SSH servers...) rules them out.
            # The handshake must have been seen (SYN, SYN-ACK, then data): a flow picked up mid-stream
            # shows bulk data, not its first packet, and Wu et al.'s rules only hold for the first one.
            if (direction != 0 or flow.payload_pkts[1] or flow.pkts_dir[1] == 0 or flow.packets < 3
                    or exemption(p)):
                return REJECT
            flow.state[self.name] = len(p)
            return None
        if first < 0:
            return DONE  # decided on the server's first packet: later (bulk) packets change nothing
        if direction == 0:
            return None  # the client's later packets (a split first flight) change nothing
        if exemption(p):
            return REJECT
        flow.state[self.name] = -1
        pc = popcount_mean(p[:MAX_MEASURED])
        return self.verdict("fully_encrypted", "heuristic",
                            f"client first packet {first} bytes, no Wu et al. exemption applies",
                            f"server first packet {len(p)} bytes, popcount {pc:.2f}/byte, no exemption")
