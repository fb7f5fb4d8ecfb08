"""IMO calls over UDP: the short keep-alive messages, a heuristic only.

From nDPI's imo.c (found by reverse engineering) and its capture: IMO peers and relays exchange 10-byte
messages 0x09 0x02, two bytes, then 0x02 and five zero bytes, and 11-byte ones 0x00 0x09 0x03, two bytes,
0x02 and five zero bytes; a call often opens with single-byte datagrams. A flow is considered only when
its first datagram is one of these; one of the longer forms within the first few packets makes it
heuristic. Nothing ties one side's message to the other's, so it is never confirmed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from tunnelwatch.classify.base import DONE, REJECT, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import UDP, Packet

PROTOCOL: Final = "imo"
_TAIL: Final = b"\x02\x00\x00\x00\x00\x00"
_PATIENCE: Final = 5


def keepalive(p: bytes) -> str | None:
    """Which IMO keep-alive form `p` is, or None."""
    if len(p) == 10 and p[0] == 0x09 and p[1] == 0x02 and p[4:] == _TAIL:
        return "10-byte message 0x0902 .. 02 00 00 00 00 00"
    if len(p) == 11 and p[:3] == b"\x00\x09\x03" and p[5:] == _TAIL:
        return "11-byte message 0x000903 .. 02 00 00 00 00 00"
    return None


@dataclass(slots=True)
class _State:
    left: int = _PATIENCE
    form: str = ""


class Imo(Classifier):
    """IMO call keep-alives (heuristic)."""

    name: ClassVar[str] = "imo"
    klass: ClassVar[Klass] = "voip"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    first_on: ClassVar[frozenset[int]] = frozenset({UDP})
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)

    def first(self, pkt: Packet, direction: int) -> bool:
        """A first datagram of an IMO length."""
        return len(pkt.payload) in (1, 10, 11)

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Short first datagram, then an IMO keep-alive within a few packets."""
        p = pkt.payload
        st: _State | None = flow.state.get(PROTOCOL)
        if st is None:
            if not self.first(pkt, direction):
                return REJECT
            st = flow.put_state(PROTOCOL, _State())
        form = keepalive(p)
        if form is not None:
            st.form = form
            return self.verdict(PROTOCOL, "heuristic", form, "IMO keep-alive shape (nDPI's IMO pattern)")
        st.left -= 1
        if st.left <= 0:
            return DONE
        return None
