"""IPFIX export: message/set/template layout per RFC 7011, decoded here by an independent minimal decoder."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from tunnelwatch.report.ipfix import MAX_UDP_MESSAGE, IpfixExporter, varlen
from tunnelwatch.report.privacy import Pseudonymizer

PEN = 32473
FLOW: dict[str, object] = {
    "src": "192.168.1.10", "sport": 40000, "dst": "203.0.113.10", "dport": 1194, "transport": "udp",
    "klass": "vpn_tunnel", "protocol": "openvpn", "confidence": "confirmed", "action": "block",
    "packets": 12, "bytes": 3456, "first_seen": 1_780_000_000.25, "last_seen": 1_780_000_005.5,
}
Spec = tuple[int, int, int]  # (ie, length, pen)


Record = dict[tuple[int, int], bytes]  # (pen, ie) -> value


def decode(msg: bytes, templates: dict[int, list[Spec]]) -> tuple[dict[str, int], list[Record]]:
    """Header fields and data records of one IPFIX message; learns templates into `templates`."""
    version, length, export_time, seq, domain = struct.unpack_from("!HHIII", msg)
    assert version == 10 and length == len(msg)
    records: list[Record] = []
    pos = 16
    while pos < length:
        sid, slen = struct.unpack_from("!HH", msg, pos)
        assert slen >= 4 and pos + slen <= length
        body, pos = msg[pos + 4:pos + slen], pos + slen
        if sid == 2:
            off = 0
            while off + 4 <= len(body):
                tid, count = struct.unpack_from("!HH", body, off)
                off += 4
                specs: list[Spec] = []
                for _ in range(count):
                    ie, flen = struct.unpack_from("!HH", body, off)
                    off += 4
                    pen = 0
                    if ie & 0x8000:
                        (pen,), off = struct.unpack_from("!I", body, off), off + 4
                    specs.append((ie & 0x7FFF, flen, pen))
                templates[tid] = specs
            continue
        assert sid in templates, "data set before its template"
        off = 0
        while off < len(body):
            rec: Record = {}
            for ie, flen, pen in templates[sid]:
                if flen == 65535:
                    flen, off = body[off], off + 1
                    if flen == 255:
                        (flen,), off = struct.unpack_from("!H", body, off), off + 2
                rec[(pen, ie)], off = body[off:off + flen], off + flen
            assert off <= len(body)
            records.append(rec)
    return {"time": export_time, "seq": seq, "domain": domain}, records


class Collector:
    """A UDP socket on loopback standing in for the collector's socket."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2)
        self.addr: tuple[str, int] = self.sock.getsockname()

    def messages(self, n: int) -> list[bytes]:
        return [self.sock.recvfrom(65535)[0] for _ in range(n)]

    def drain(self) -> list[bytes]:
        """Every datagram already queued (loopback delivers during sendto, so export() has returned)."""
        out: list[bytes] = []
        self.sock.setblocking(False)
        try:
            for _ in range(10_000):
                out.append(self.sock.recvfrom(65535)[0])
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(2)
        return out


@pytest.fixture
def coll() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.sock.close()


class Clock:
    def __init__(self) -> None:
        self.t = 1_780_000_010.0

    def __call__(self) -> float:
        return self.t


def test_udp_export_decodes_with_all_tags(coll: Collector) -> None:
    exp = IpfixExporter(coll.addr, observation_domain=7, clock=Clock())
    v6 = dict(FLOW, src="2001:db8::1", dst="2001:db8:2::5", protocol="wireguard", action="allow",
              registration_id="PTA-1")
    exp.export([FLOW, v6])
    templates: dict[int, list[Spec]] = {}
    hdr0, none = decode(coll.messages(1)[0], templates)
    assert none == [] and hdr0["domain"] == 7
    hdr, recs = decode(coll.messages(1)[0], templates)
    assert hdr["seq"] == 0 and hdr["time"] == 1_780_000_010
    assert len(recs) == 2
    r4, r6 = recs
    assert ipaddress.ip_address(r4[(0, 8)]) == ipaddress.ip_address("192.168.1.10")
    assert ipaddress.ip_address(r4[(0, 12)]) == ipaddress.ip_address("203.0.113.10")
    assert struct.unpack("!H", r4[(0, 7)])[0] == 40000 and struct.unpack("!H", r4[(0, 11)])[0] == 1194
    assert r4[(0, 4)] == b"\x11"
    assert struct.unpack("!Q", r4[(0, 1)])[0] == 3456 and struct.unpack("!Q", r4[(0, 2)])[0] == 12
    assert struct.unpack("!Q", r4[(0, 152)])[0] == 1_780_000_000_250
    assert struct.unpack("!Q", r4[(0, 153)])[0] == 1_780_000_005_500
    assert r4[(0, 95)] == struct.pack("!BII", 20, PEN, 1)
    assert r4[(0, 96)] == b"openvpn"
    assert [r4[(PEN, i)] for i in (1, 2, 3, 4, 5)] == [b"vpn_tunnel", b"confirmed", b"block", b"", b""]
    assert ipaddress.ip_address(r6[(0, 27)]) == ipaddress.ip_address("2001:db8::1")
    assert r6[(0, 96)] == b"wireguard" and r6[(PEN, 4)] == b"PTA-1" and r6[(PEN, 3)] == b"allow"
    assert r6[(0, 95)] == struct.pack("!BII", 20, PEN, 2)
    exp.export([FLOW])
    hdr2, _ = decode(coll.messages(1)[0], templates)
    assert hdr2["seq"] == 2, "sequence counts data records sent before this message"
    exp.close()


def test_templates_resent_over_udp_after_refresh(coll: Collector) -> None:
    clock = Clock()
    exp = IpfixExporter(coll.addr, template_refresh=600, clock=clock)
    exp.export([FLOW])
    coll.messages(2)
    clock.t += 599
    exp.export([FLOW])
    templates: dict[int, list[Spec]] = {}
    with pytest.raises(AssertionError, match="before its template"):
        decode(coll.messages(1)[0], templates)
    clock.t += 2
    exp.export([FLOW])
    first, second = coll.messages(2)
    assert decode(first, templates)[1] == [] and set(templates) == {256, 257}
    assert len(decode(second, templates)[1]) == 1
    exp.close()


def test_udp_messages_stay_under_mtu_and_lose_nothing(coll: Collector) -> None:
    exp = IpfixExporter(coll.addr, clock=Clock())
    flows = [dict(FLOW, sport=10000 + i, klass="x" * 200) for i in range(60)]
    exp.export(flows)
    templates: dict[int, list[Spec]] = {}
    msgs = coll.drain()
    ports = [struct.unpack("!H", r[(0, 7)])[0] for m in msgs for r in decode(m, templates)[1]]
    assert max(len(m) for m in msgs) <= MAX_UDP_MESSAGE
    assert len(msgs) > 2
    assert ports == [10000 + i for i in range(60)]
    exp.close()


def test_unusable_flows_are_skipped_not_raised(coll: Collector) -> None:
    exp = IpfixExporter(coll.addr, clock=Clock())
    bad: list[dict[str, object]] = [{}, dict(FLOW, src="not-an-ip"), dict(FLOW, dst="2001:db8::1"),
                                    dict(FLOW, sport="x", packets=-5, bytes=2**70, first_seen=float("nan"),
                                         transport=None, protocol=None)]
    exp.export(bad)
    templates: dict[int, list[Spec]] = {}
    decode(coll.messages(1)[0], templates)
    _, recs = decode(coll.messages(1)[0], templates)
    assert exp.stats["skipped"] == 3 and len(recs) == 1
    r = recs[0]
    assert r[(0, 7)] == b"\x00\x00" and r[(0, 2)] == b"\x00" * 8 and r[(0, 1)] == b"\xff" * 8
    assert r[(0, 95)] == b"" and r[(0, 96)] == b"" and r[(0, 4)] == b"\x00"
    assert struct.unpack("!Q", r[(0, 152)])[0] == 1_780_000_010_000
    exp.close()


def test_pseudonymised_subscriber_is_zeroed_and_tagged(coll: Collector) -> None:
    priv = Pseudonymizer("hash", b"k" * 32, subscriber_nets=["192.168.0.0/16"])
    exp = IpfixExporter(coll.addr, clock=Clock(), pseudonymizer=priv)
    exp.export([FLOW, dict(FLOW, src="10.9.9.9")])
    templates: dict[int, list[Spec]] = {}
    decode(coll.messages(1)[0], templates)
    _, (hidden, outside) = decode(coll.messages(1)[0], templates)
    assert hidden[(0, 8)] == b"\x00" * 4 and hidden[(PEN, 5)] == priv.addr("192.168.1.10").encode()  # type: ignore[union-attr]
    assert b"192.168" not in hidden[(PEN, 5)]
    assert outside[(0, 8)] == bytes([10, 9, 9, 9]) and outside[(PEN, 5)] == b""
    exp.close()


def test_tcp_sends_templates_once_per_connection() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(2)
    srv.settimeout(5)
    streams: list[bytes] = []

    def serve() -> None:
        for _ in range(2):
            c, _ = srv.accept()
            with c:
                c.settimeout(5)
                data = b""
                for _ in range(1000):
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                streams.append(data)

    t = threading.Thread(target=serve)
    t.start()
    exp = IpfixExporter(srv.getsockname(), transport="tcp", clock=Clock())
    exp.export([FLOW])
    exp.export([FLOW, FLOW])
    exp.close()
    exp.export([FLOW])
    exp.close()
    t.join(10)
    srv.close()
    assert len(streams) == 2
    for stream, want in zip(streams, ([1, 2], [1]), strict=True):
        templates: dict[int, list[Spec]] = {}
        counts, pos, n_tpl = [], 0, 0
        while pos < len(stream):
            length = struct.unpack_from("!H", stream, pos + 2)[0]
            before = len(templates)
            _, recs = decode(stream[pos:pos + length], templates)
            n_tpl += len(templates) > before
            if recs:
                counts.append(len(recs))
            pos += length
        assert counts == want and n_tpl == 1


def test_tcp_collector_down_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    addr = s.getsockname()
    s.close()
    exp = IpfixExporter(addr, transport="tcp")
    exp.export([FLOW])
    assert exp.stats["errors"] == 1 and "export to" in caplog.text


def test_varlen_long_form_and_bad_arguments() -> None:
    assert varlen(b"a" * 254)[:1] == b"\xfe"
    assert varlen(b"a" * 255)[:3] == b"\xff\x00\xff"
    with pytest.raises(ValueError):
        IpfixExporter(("127.0.0.1", 1), transport="sctp")
    with pytest.raises(ValueError):
        IpfixExporter(("127.0.0.1", 1), enterprise=0)
