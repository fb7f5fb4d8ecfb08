"""Names on the wire: the classifier that gives a flow the host name it is going to (`flow.name`).

It never gives a verdict of its own (what a name means is the endpoint lists' business, see
endpoints.py); it only sets `flow.name = (name, how)`, with how one of:
- "sni": the server name of the client's TLS ClientHello (first client packets on TCP, up to 3
  segments joined for a hello larger than one segment);
- "quic-sni": the same, read from the decrypted QUIC Initial packets (quicname.py, up to 3 datagrams);
- "dns": the name a DNS answer, seen earlier by this engine, resolved to the flow's server address;
- "cert-org": for TLS without any of those, the organisation (O=) in the subject of the server's leaf
  certificate, in clear before TLS 1.3 (tlscert.py; up to 3 server packets, 4 KiB, read).
A name from the flow's own handshake replaces a DNS-learned one. DNS answers are learned from UDP
responses from port 53 (the first reply of each query flow) into a bounded, TTL-respecting cache keyed
by client and address, held by this classifier instance: the cross-flow state belongs to the only code
that writes and reads it. Names are interned: many flows to one host share one string.
"""

from __future__ import annotations

import sys
from typing import ClassVar, Final

from tunnelwatch.classify.base import DONE, Classifier, Context, InspectResult, Klass
from tunnelwatch.classify.dnsname import NameCache
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import TCP, UDP, Packet
from tunnelwatch.classify.quicname import InitialState, initial_hello, initial_version
from tunnelwatch.classify.tlscert import MORE, Subject, server_subject
from tunnelwatch.classify.tlsname import record_hello

SNI: Final = "sni"
QUIC_SNI: Final = "quic-sni"
DNS: Final = "dns"
CERT_ORG: Final = "cert-org"
#: client packets joined to read one ClientHello (TCP segments, or QUIC Initial datagrams)
MAX_HELLO_PKTS: Final = 3
#: bytes of a TCP ClientHello kept while waiting for its next segment
MAX_HELLO_BYTES: Final = 8192
#: payload packets of a DNS flow looked at before giving up on its answer
MAX_DNS_PKTS: Final = 4
#: payload packets (both ways) of any flow after which the name is no longer looked for
MAX_NAME_PKTS: Final = 8
#: server packets, and bytes of them, read for the certificate of a TLS flow without a name
MAX_CERT_PKTS: Final = 3
MAX_CERT_BYTES: Final = 4096


class _CertWait:
    """A nameless TLS flow waiting for the server's certificate: the server bytes so far."""

    __slots__ = ("buf", "pkts")

    def __init__(self) -> None:
        self.buf = b""
        self.pkts = 0


class Names(Classifier):
    """Sets flow.name from TLS SNI, QUIC Initial SNI, a DNS answer or the server certificate's O=; never
    a verdict."""

    name: ClassVar[str] = "names"
    klass: ClassVar[Klass] = "benign"
    transports: ClassVar[frozenset[int]] = frozenset({TCP, UDP})
    protocols: ClassVar[tuple[str, ...]] = ("tls", "quic", "dns")

    def __init__(self) -> None:
        #: (client, address) -> name, from the DNS answers this engine saw
        self.dns = NameCache()

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Collect the flow's name; DONE as soon as there is nothing more to read."""
        st = flow.state.get("names")
        if st is None:
            return self._first(flow, pkt, direction)
        if flow.pay0 + flow.pay1 > MAX_NAME_PKTS:
            return DONE  # what was awaited (the rest of a hello, a certificate, an answer) did not come
        if isinstance(st, InitialState):
            if direction != 0:
                return None  # the server's Initial: its keys differ, and the hello is the client's
            h = initial_hello(pkt.payload, st)
            if h is not None and h.sni is not None:
                flow.name = (sys.intern(h.sni), QUIC_SNI)
                return DONE
            return DONE if st.packets >= MAX_HELLO_PKTS or (h is not None and h.complete) else None
        if isinstance(st, _CertWait):
            return self._cert(flow, st, pkt.payload) if direction == 1 else None
        if isinstance(st, bytes):  # a TCP ClientHello continued in the next client segment
            if direction != 0:
                return None
            return self._tls(flow, st + pkt.payload)
        # a DNS query flow waiting for its answer
        if direction == 1 and (pkt.sport == 53 or pkt.dport == 53):
            self.dns.learn_response(pkt.payload, pkt.dst, pkt.ts)
            return DONE
        return DONE if flow.pay0 + flow.pay1 >= MAX_DNS_PKTS else None

    def _first(self, flow: Flow, pkt: Packet, direction: int) -> InspectResult:
        if flow.name is None and len(self.dns):
            # the server is the responder, or the initiator of a capture that started mid-flow
            for client, addr in ((flow.src, flow.dst), (flow.dst, flow.src)):
                n = self.dns.lookup(client, addr, pkt.ts)
                if n is not None:
                    flow.name = (n, DNS)
                    break
        p = pkt.payload
        if pkt.proto == TCP:
            if direction == 0 and len(p) >= 9 and p[0] == 0x16 and p[5] == 1:
                return self._tls(flow, p)
            return DONE
        if pkt.sport == 53 or pkt.dport == 53:
            if direction == 1:  # the first packet seen is the answer (the query went unseen)
                self.dns.learn_response(p, pkt.dst, pkt.ts)
                return DONE
            flow.put_state("names", 0)
            return None
        if direction == 0 and initial_version(p):
            st = InitialState()
            h = initial_hello(p, st)
            if h is not None and h.sni is not None:
                flow.name = (sys.intern(h.sni), QUIC_SNI)
                return DONE
            if st.keys is None or (h is not None and h.complete):
                return DONE  # not decryptable as a client Initial: nothing to wait for
            flow.put_state("names", st)
            return None
        return DONE

    def _tls(self, flow: Flow, data: bytes) -> InspectResult:
        h = record_hello(data)
        if h is None:
            return DONE
        if h.sni is not None:
            flow.name = (sys.intern(h.sni), SNI)
            return DONE
        if h.complete or flow.pay0 >= MAX_HELLO_PKTS or len(data) >= MAX_HELLO_BYTES:
            if flow.name is not None:
                return DONE
            flow.put_state("names", _CertWait())  # no name: perhaps the server's certificate has one
            return None
        flow.put_state("names", data)  # the hello's tail is in the next segment (kept until then only)
        return None

    def _cert(self, flow: Flow, st: _CertWait, p: bytes) -> InspectResult:
        st.pkts += 1
        st.buf = (st.buf + p)[:MAX_CERT_BYTES]
        got = server_subject(st.buf)
        if isinstance(got, Subject):
            if got.organisation:
                flow.name = (sys.intern(got.organisation), CERT_ORG)
            return DONE
        if got != MORE or st.pkts >= MAX_CERT_PKTS or len(st.buf) >= MAX_CERT_BYTES:
            return DONE
        return None
