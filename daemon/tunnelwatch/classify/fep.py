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

The rules only hold for the first packet of a stream, so the classifier must know that the flow's start is
in view; how it knows differs between a full capture (SYN, SYN-ACK, ACK, then data) and the daemon's view
(the kernel never queues payload-less segments: the first packet the engine sees is the client's first
data). `_start_in_view` explains the guard that works in both.
"""

from __future__ import annotations

from typing import ClassVar, Final

from tunnelwatch.classify.base import DONE, REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, TCP_SYN, Packet

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
#: a flow judged without its handshake in view keeps being checked for this many payload packets: a
#: payload-less segment among them proves the start was not in view after all (see `_start_in_view`)
PAYLOAD_ONLY_PKTS: Final = 24
# state slots (one list per flow): the client's first packet's length, the start was in view only as the
# flow's first packet (the payload-only case), the verdict was given
_LEN, _PAYLOAD_ONLY, _JUDGED = range(3)


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


def _start_in_view(flow: Flow, pkt: Packet) -> int:
    """Whether this packet, the client's first data packet, is the first packet of the TCP stream.

    0: no (or not known); 1: yes, the SYN is in view; 2: yes, as far as a payload-only view can tell.
    Wu et al.'s rules are about a stream's first bytes: bulk data picked up mid-stream is just as random
    (TLS record bodies, SSH), so judging a flow whose start is not in view flags ordinary traffic.

    * The packet carries the SYN itself (TCP Fast Open): the start, in every view.
    * A full capture: the flow began with payload-less packets both ways (SYN, SYN-ACK, the ACK) and this
      is the first data. A capture that began mid-flow shows data or lone ACKs first instead.
    * The daemon's view: the kernel queues only segments with payload, from the connection's first packet
      on (connbytes counts from conntrack's NEW), so the first queued packet of a flow that was not
      re-opened (`flow.reopens == 0`) is the client's first data; nothing precedes it in the flow. A
      re-opened flow (a later window) starts mid-session and is never judged.
      A capture that begins with this flow's data looks exactly the same at this packet, yet there the
      start is not in view. The two views differ in one fact: a full capture shows payload-less segments
      (ACKs), the daemon never does. So this case is only provisional (2): once the engine shows a
      payload-less segment of the flow, it is a view that would have shown the SYN too, the start was not
      in view, and the classifier rejects the flow (withdrawing its verdict). TCP acknowledges every
      second full segment and a delayed ACK fires after tens of milliseconds of silence, so a capture
      shows one within the first few packets: it is checked up to `PAYLOAD_ONLY_PKTS` payload packets.
      What no packet can tell: the daemon after conntrack picked a connection up mid-stream (router reboot,
      table flush), and a connection the engine forgot (idle, evicted) that the kernel still queues in a
      later window: both look like a new flow. Knowing that needs a fact from outside the packets (a
      connmark bit set on the SYN by the firewall, passed to the engine), which this module cannot get.
      Likewise the flow's direction inline is that of its first queued packet: a server that speaks
      first becomes the "client". Banners and greetings are printable or length-prefixed (exempt); a
      server-first protocol with a random-looking first packet would be judged as client-first.
    """
    if pkt.tcp_flags & TCP_SYN:
        return 1
    if flow.reopens:
        return 0
    if flow.packets >= 3 and flow.pkts1:
        return 1  # the caller checked that no data came before this packet: all before it were payload-less
    return 2 if flow.packets == 1 else 0


def _payload_only(flow: Flow) -> bool:
    """Every packet the engine showed of this flow carried payload (the kernel's view, see above)."""
    return flow.packets == flow.pay0 + flow.pay1


class FullyEncrypted(Classifier):
    """TCP flows whose first data packets both ways look uniformly random (heuristic only)."""

    name: ClassVar[str] = "fully_encrypted"
    klass: ClassVar[Klass] = "proxy_obfuscated"
    transports: ClassVar[frozenset[int]] = frozenset({TCP})
    protocols: ClassVar[tuple[str, ...]] = ("fully_encrypted",)

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Judge the client's first data packet, then the server's first; reject at the first exemption."""
        p = pkt.payload
        st: list[int] | None = flow.state.get(self.name)
        if st is None:
            # These protocols are client-first: a server banner (SMTP, FTP, SSH servers...) rules them out.
            if direction != 0 or flow.pay1 or exemption(p):
                return REJECT
            start = _start_in_view(flow, pkt)
            if not start:
                return REJECT
            flow.put_state(self.name, [len(p), int(start == 2), 0])
            return None
        if st[_PAYLOAD_ONLY]:
            if not _payload_only(flow):
                return REJECT  # a payload-less segment: the flow's start was not in view (see above)
            if st[_JUDGED]:
                return DONE if flow.pay0 + flow.pay1 >= PAYLOAD_ONLY_PKTS else None
        elif st[_JUDGED]:
            return DONE  # decided on the server's first packet: later (bulk) packets change nothing
        if direction == 0:
            return None  # the client's later packets (a split first flight) change nothing
        if exemption(p):
            return REJECT
        st[_JUDGED] = 1
        pc = popcount_mean(p[:MAX_MEASURED])
        return self.verdict("fully_encrypted", "heuristic",
                            f"client first packet {st[_LEN]} bytes, no Wu et al. exemption applies",
                            f"server first packet {len(p)} bytes, popcount {pc:.2f}/byte, no exemption")
