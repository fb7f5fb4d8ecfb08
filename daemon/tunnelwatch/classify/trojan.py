"""Trojan and other TLS-in-TLS proxies: an inner TLS handshake seen through the sizes of outer records.

A proxy that carries the user's HTTPS inside its own TLS (Trojan, VLESS/VMess over TLS) or WebSocket
(v2ray's "ws" transport) cannot hide the shape of the inner handshake: right after the outer handshake the
client sends one burst the size of a ClientHello (plus the proxy's request header; Trojan's is the 56-hex
password hash, CRLF, a SOCKS-like request and CRLF), the server answers with the inner server flight
(ServerHello + certificate chain, kilobytes), and the client's next record is the size of the inner
client Finished flight (TLS 1.3: ChangeCipherSpec + Finished, 64-80 bytes). Xue et al., "Fingerprinting
Obfuscated Proxy Traffic with Encapsulated TLS Handshakes" (USENIX Security 2024) showed this signal is
protocol-agnostic; they score bursts of the first 25 data packets statistically. This module is a cheap
rule on the first three bursts of carrier records, reads record/frame HEADERS only (content type and
length, never payload bytes), and reports `heuristic` only: an HTTP/1.1 client fetching a few kilobytes
and then sending a tiny second request has the same shape.
"""

from __future__ import annotations

from typing import ClassVar, Final

from tunnelwatch.classify.base import DONE, REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, Packet

#: inner ClientHello burst (bytes after the outer record overhead): the smallest real hellos (Go, no
#: padding) are about 200 bytes, browsers with post-quantum key shares about 1800, plus a proxy header
A_MIN: Final = 220
A_MAX: Final = 2600
#: a hello is written in one go; the proxy may cut it into a few records, not more
A_MAX_UNITS: Final = 3
#: inner server flight: at least a leaf + CA of small ECDSA certificates (~1.1 KB), at most a long chain
B_MIN: Final = 1100
B_MAX: Final = 24_000
#: inner client Finished flight: CCS (6) + Finished (58/74) in TLS 1.3, ClientKeyExchange + CCS +
#: Finished (93-126) in TLS 1.2, plus up to ~50 bytes of proxy framing; or, merged with the first request,
#: anything under two thirds of the hello burst
C_MIN: Final = 40
C_MAX: Final = 176
#: give up after this many payload packets / carrier records (the bursts come right after the handshake)
MAX_PKTS: Final = 40
MAX_UNITS: Final = 64
#: record overhead of the outer TLS: TLS 1.3 (content type + 16-byte tag), TLS 1.2 AES-GCM (nonce + tag)
_OV13: Final = 17
_OV12: Final = 24
_SUPERSEDES: Final = frozenset({"tls", "http"})

# state slots (one list per flow: integer ops only on the hot path)
_CARRIER, _V13, _STAGE, _A, _AN, _B, _NEED0, _NEED1, _UNITS, _FIN, _CCS = range(11)
_TLS, _WS = 1, 2


class Trojan(Classifier):
    """TLS or WebSocket carriers whose first records have the sizes of an inner TLS handshake."""

    name: ClassVar[str] = "trojan"
    klass: ClassVar[Klass] = "proxy_obfuscated"
    transports: ClassVar[frozenset[int]] = frozenset({TCP})
    first_on: ClassVar[frozenset[int]] = frozenset({TCP})
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {TCP: frozenset(b"\x16G")}
    protocols: ClassVar[tuple[str, ...]] = ("tls_in_tls", "tls_in_websocket")

    def first(self, pkt: Packet, direction: int) -> bool:
        """A client TLS ClientHello or GET request (the carriers it follows)."""
        p = pkt.payload
        if direction != 0 or len(p) < 6:
            return False
        return (p[0] == 0x16 and p[1] == 3 and p[5] == 1) or p[:4] == b"GET "

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Follow the carrier's record headers until the three bursts are known, then judge once."""
        p = pkt.payload
        st: list[int] | None = flow.state.get("trojan")
        if st is None:
            if not self.first(pkt, direction):
                return REJECT
            if p[0] == 0x16 and p[1] == 3 and p[5] == 1:
                st = [_TLS, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
            elif p[:4] == b"GET " and p[-4:] == b"\r\n\r\n" and (b"ebsocket" in p or b"ebSocket" in p):
                # frames start after the upgrade handshake; the request must end in this packet
                st = [_WS, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0]
                flow.put_state("trojan", st)
                return None
            else:
                return REJECT
            flow.put_state("trojan", st)
        if st[_STAGE] == 3 or flow.pay0 + flow.pay1 > MAX_PKTS:
            return DONE  # judged once (later records are the user's data), or the bursts never came
        if st[_STAGE] < 0:
            # WebSocket: the server's 101 response, alone in its packet, then frames both ways
            if direction == 0:
                return DONE
            if p[:12] not in (b"HTTP/1.1 101", b"HTTP/1.0 101") or p[-4:] != b"\r\n\r\n":
                return REJECT
            st[_STAGE] = 0
            return None
        return self._walk(st, p, direction)

    def _walk(self, st: list[int], p: bytes, d: int) -> InspectResult:
        n = len(p)
        slot = _NEED0 + d
        pos = st[slot]
        if pos >= n:
            st[slot] = pos - n  # the packet is the middle of one long record
            return None
        tls = st[_CARRIER] == _TLS
        while pos < n:
            if tls:
                if pos + 5 > n or not (20 <= p[pos] <= 24) or p[pos + 1] != 3:
                    return DONE  # a header split across segments, or lost sync: stay silent
                data = p[pos] == 23
                ln = (p[pos + 3] << 8) | p[pos + 4]
                if p[pos] == 20 and d == 0:
                    st[_CCS] = 1  # the client's second flight: the server's first flight is over
                elif data and not st[_FIN] and not st[_STAGE]:
                    if d == 1:
                        if not st[_CCS]:
                            st[_V13] = 1  # encrypted records in the server's first flight: outer TLS 1.3
                    elif st[_V13]:
                        st[_FIN] = 1  # the outer client Finished, not application data
                        data = False
                pos += 5 + ln
                inner = ln - (_OV13 if st[_V13] else _OV12)
            else:
                if pos + 2 > n:
                    return DONE
                b0, b1 = p[pos], p[pos + 1]
                if b0 & 0x70 or (b1 >> 7) != (d ^ 1):
                    return DONE  # reserved bits, or a mask bit on the wrong side: not a ws stream
                ln, hdr = b1 & 0x7F, 2
                if ln == 126:
                    if pos + 4 > n:
                        return DONE
                    ln, hdr = (p[pos + 2] << 8) | p[pos + 3], 4
                elif ln == 127:
                    return DONE  # a > 64 KiB frame is bulk data, not a handshake burst
                pos += hdr + (4 if d == 0 else 0) + ln
                data = (b0 & 0x0F) <= 2
                inner = ln
            st[_UNITS] += 1
            if st[_UNITS] > MAX_UNITS:
                return DONE
            if data:
                r = self._unit(st, d, inner)
                if r is not None:
                    return r
        st[slot] = pos - n
        return None

    def _unit(self, st: list[int], d: int, inner: int) -> InspectResult:
        """One application-data record/frame of `inner` bytes: advance the burst machine A -> B -> C."""
        stage = st[_STAGE]
        if stage == 0:
            if d == 0:  # server records before the client's first (tickets, TLS 1.3 handshake) do not count
                if inner < A_MIN:
                    # the hello is written in one go with the proxy's header: a small first record is
                    # a browser's HTTP/2 preface or an ordinary request
                    return DONE
                st[_STAGE], st[_A], st[_AN] = 1, inner, 1
        elif stage == 1:
            if d == 0:
                st[_A] += inner
                st[_AN] += 1
                if st[_AN] > A_MAX_UNITS or st[_A] > A_MAX:
                    return DONE
            else:
                st[_STAGE], st[_B] = 2, inner
        elif d == 1:
            st[_B] += inner
            if st[_B] > B_MAX:
                return DONE
        else:
            a, b = st[_A], st[_B]
            ws = st[_CARRIER] == _WS
            # The proxy often reads the inner Finished flight and the first request together (curl and Go
            # write them back to back) and sends them as one record: then it is still well below the hello.
            if b < B_MIN or b <= a or not (C_MIN <= inner <= C_MAX or C_MIN <= inner * 3 < a * 2):
                return DONE
            st[_STAGE] = 3
            return self.verdict("tls_in_websocket" if ws else "tls_in_tls", "heuristic",
                                f"first {'WebSocket frames' if ws else 'TLS records'} sized as an inner "
                                f"ClientHello ({a} bytes)",
                                f"server answer sized as an inner server handshake flight ({b} bytes)",
                                f"client's next record sized as an inner Finished flight ({inner} bytes)",
                                supersedes=_SUPERSEDES)
        return None
