"""Microsoft SSTP (PPP over HTTPS): only what is visible from outside, and nothing more.

SSTP runs inside TLS on TCP 443, and from outside that TLS is ordinary HTTPS: a long-lived TLS
connection to port 443 is NOT evidence (every browser tab and push channel is one), so TLS-wrapped
SSTP is left to the operator's endpoint lists (confidence "list"). What can be seen in clear is the
same session where TLS is terminated before the server (MS-SSTP allows plain HTTP behind SSL-offload
edge devices), or a client configured without TLS:
- the request `SSTP_DUPLEX_POST /sra_{BA195980-CD49-458b-9E23-C84EE0ADCD75}/ HTTP/1.1`
  (Content-Length 18446744073709551615, an SSTPCORRELATIONID header): heuristic alone;
- confirmed with the server's side: its `HTTP/1.1 200` answer, or an SSTP control packet (version
  0x10, C bit set, a known message type: Call Connect Request/Ack/Nak/Connected/Abort/Disconnect,
  Echo Request/Response) in either direction after the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from struct import unpack_from
from typing import ClassVar, Final

from tunnelwatch.classify.base import REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, Packet

PROTOCOL: Final = "sstp"
_SUPERSEDES: Final = frozenset({"http"})
METHOD: Final = b"SSTP_DUPLEX_POST "
URI: Final = b"/sra_{BA195980-CD49-458b-9E23-C84EE0ADCD75}/"
_MSG_NAMES: Final = {1: "Call Connect Request", 2: "Call Connect Ack", 3: "Call Connect Nak",
                     4: "Call Connected", 5: "Call Abort", 6: "Call Disconnect", 7: "Call Disconnect Ack",
                     8: "Echo Request", 9: "Echo Response"}


def control_packet(p: bytes) -> str:
    """The message name of an SSTP control packet at the start of p ('' when it is not one)."""
    if len(p) < 8 or p[0] != 0x10 or p[1] != 0x01:
        return ""
    length = unpack_from("!H", p, 2)[0] & 0x0FFF
    mtype, nattr = unpack_from("!HH", p, 4)
    if length < 8 or length > len(p) + 4096 or nattr > 8:
        return ""
    return _MSG_NAMES.get(mtype, "")


@dataclass(slots=True)
class _State:
    request: bool = False
    uri_ok: bool = False


class SSTP(Classifier):
    """SSTP seen in clear (behind TLS offload, or without TLS); TLS-wrapped SSTP only via endpoint lists."""

    name: ClassVar[str] = "sstp"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({TCP})
    first_on: ClassVar[frozenset[int]] = frozenset({TCP})
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {TCP: frozenset(METHOD[:1])}
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    ports: ClassVar[dict[tuple[int, int], str]] = {}

    def first(self, pkt: Packet, direction: int) -> bool:
        """A client packet starting with the SSTP_DUPLEX_POST request line."""
        return direction == 0 and pkt.payload.startswith(METHOD)

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """The SSTP_DUPLEX_POST request line on the first client packet, then the server's side."""
        p = pkt.payload
        st = flow.state.get(PROTOCOL)
        if st is None:
            if not self.first(pkt, direction):
                return REJECT
            st = flow.put_state(PROTOCOL, _State(request=True))
            st.uri_ok = p[len(METHOD):len(METHOD) + len(URI)].upper() == URI.upper()
            ev = ["SSTP_DUPLEX_POST request" + (" to the SSTP URI" if st.uri_ok else "")]
            if b"SSTPCORRELATIONID:" in p.upper():
                ev.append("SSTPCORRELATIONID header")
            return self.verdict(PROTOCOL, "heuristic", *ev, supersedes=_SUPERSEDES)
        if direction == 1 and p.startswith(b"HTTP/1.1 200"):
            return self.verdict(PROTOCOL, "confirmed", "SSTP_DUPLEX_POST request answered 200",
                                supersedes=_SUPERSEDES)
        if direction == 1 and p.startswith(b"HTTP/"):
            return REJECT  # refused: not an SSTP session
        # the client's Call Connect Request may follow the request headers in the same segment
        hdr_end = p.find(b"\r\n\r\n") if p.startswith(METHOD) else -1
        msg = control_packet(p[hdr_end + 4:] if hdr_end >= 0 else p)
        if msg:
            return self.verdict(PROTOCOL, "confirmed", "SSTP_DUPLEX_POST request",
                                f"SSTP control packet: {msg}", supersedes=_SUPERSEDES)
        return None
