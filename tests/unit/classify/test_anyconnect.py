"""AnyConnect/OpenConnect: DTLS 0x0100 and DTLS 1.2 resumption/PSK-NEGOTIATE, CSTP pairing, hard negatives."""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator

from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, run_engine

C, S = "192.0.2.10", "198.51.100.7"
SID = bytes(range(1, 33))
LEGACY, DTLS12 = 0x0100, 0xFEFD


def record(ctype: int, version: int, body: bytes, epoch: int = 0, seq: int = 0) -> bytes:
    hdr = struct.pack("!BHH", ctype, version, epoch) + seq.to_bytes(6, "big")
    return hdr + struct.pack("!H", len(body)) + body


def handshake(mtype: int, body: bytes, msg_seq: int = 0) -> bytes:
    n = len(body).to_bytes(3, "big")
    return bytes([mtype]) + n + struct.pack("!H", msg_seq) + bytes(3) + n + body


def client_hello(version: int, sid: bytes, suites: tuple[int, ...] = (0x0035, 0x002F),
                 cookie: bytes = b"") -> bytes:
    body = struct.pack("!H", version) + os.urandom(32) + bytes([len(sid)]) + sid
    body += bytes([len(cookie)]) + cookie
    body += struct.pack("!H", 2 * len(suites)) + struct.pack(f"!{len(suites)}H", *suites) + b"\x01\x00"
    return record(22, version, handshake(1, body))


def server_hello(version: int, sid: bytes, suite: int = 0x0035) -> bytes:
    body = struct.pack("!H", version) + os.urandom(32) + bytes([len(sid)]) + sid
    body += struct.pack("!HB", suite, 0)
    return record(22, version, handshake(2, body)) + record(20, version, b"\x01") + \
        record(22, version, os.urandom(40), epoch=1)


def hello_verify(version: int) -> bytes:
    return record(22, version, handshake(3, struct.pack("!H", version) + b"\x14" + os.urandom(20)))


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def legacy_handshake(sport: int = 54107) -> list[IP]:
    return [u(C, S, sport, 443, client_hello(LEGACY, SID)), u(S, C, 443, sport, hello_verify(LEGACY)),
            u(C, S, sport, 443, client_hello(LEGACY, SID, cookie=os.urandom(20))),
            u(S, C, 443, sport, server_hello(LEGACY, SID))]


def test_legacy_dtls_client_hello_alone_is_heuristic() -> None:
    v = one_verdict(legacy_handshake()[:1])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "anyconnect", "heuristic")


def test_legacy_dtls_resumed_session_is_confirmed() -> None:
    v = one_verdict(legacy_handshake())
    assert (v.protocol, v.confidence) == ("anyconnect", "confirmed")
    assert "ServerHello resumes a session negotiated outside this flow" in v.evidence


def test_server_hello_with_another_session_id_is_not_confirmed() -> None:
    pkts = legacy_handshake()
    pkts[-1] = u(S, C, 443, 54107, server_hello(LEGACY, bytes(32)))
    assert one_verdict(pkts).confidence != "confirmed"


def test_tls_flow_to_gateway_after_confirmed_dtls_is_tagged() -> None:
    hello = bytes.fromhex("16030100a20100009e0303") + os.urandom(40)
    tls_gw = IP(src=C, dst=S) / TCP(sport=50000, dport=443, flags="PA") / Raw(hello)
    tls_other = IP(src=C, dst="203.0.113.5") / TCP(sport=50001, dport=443, flags="PA") / Raw(hello)
    by_port = {f.sport: v for f, v in run_engine([*legacy_handshake(), tls_gw, tls_other])}
    assert (by_port[54107].protocol, by_port[54107].confidence) == ("anyconnect", "confirmed")
    assert (by_port[50000].protocol, by_port[50000].confidence) == ("anyconnect", "confirmed")
    assert "same server:port ran a confirmed AnyConnect DTLS channel" in by_port[50000].evidence
    assert by_port[50001].protocol == "tls"


def test_dtls12_out_of_band_resumption_on_443_is_heuristic() -> None:
    v = one_verdict([u(C, S, 40000, 443, client_hello(DTLS12, SID)),
                     u(S, C, 443, 40000, server_hello(DTLS12, SID))])
    assert (v.protocol, v.confidence) == ("anyconnect", "heuristic")


def test_openconnect_psk_negotiate_is_confirmed() -> None:
    app_id = os.urandom(32)
    v = one_verdict([u(C, S, 40000, 443, client_hello(DTLS12, app_id, (0x00A8, 0x00A9))),
                     u(S, C, 443, 40000, server_hello(DTLS12, b"", 0x00A8))])
    assert (v.protocol, v.confidence) == ("anyconnect", "confirmed")
    assert any("PSK-NEGOTIATE" in e for e in v.evidence)


def test_webrtc_style_dtls_is_not_anyconnect() -> None:
    full = client_hello(DTLS12, b"", (0xC02B, 0xC02F))
    for port in (443, 50000):
        v = one_verdict([u(C, S, 40000, port, full),
                         u(S, C, port, 40000, server_hello(DTLS12, os.urandom(32)))])
        assert v.klass == "benign" and v.protocol == "dtls"
    # A resumption on a port other than 443 is not claimed either.
    v = one_verdict([u(C, S, 40000, 5684, client_hello(DTLS12, SID)),
                     u(S, C, 5684, 40000, server_hello(DTLS12, SID))])
    assert v.protocol != "anyconnect"


def test_legacy_records_mid_session_both_ways_are_heuristic() -> None:
    pkts = []
    for i in range(1, 4):
        pkts += [u(C, S, 54107, 443, record(23, LEGACY, os.urandom(96), 1, i)),
                 u(S, C, 443, 54107, record(23, LEGACY, os.urandom(160), 1, i))]
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("anyconnect", "heuristic")


def test_record_lengths_must_fill_the_datagram() -> None:
    # Zoom's P2P packets start like a 0x0100 alert record but the length field does not fit.
    zoomish = bytes.fromhex("15010000000002030033010d040000fffee3e6") + bytes(1009)
    v = one_verdict([u(C, S, 39065, 46757, zoomish), u(S, C, 46757, 39065, zoomish)])
    assert v.protocol != "anyconnect"


def test_plain_tls_and_random_udp_443_are_not_anyconnect() -> None:
    hello = bytes.fromhex("16030100a20100009e0303") + os.urandom(40)
    v = one_verdict([IP(src=C, dst=S) / TCP(sport=50000, dport=443, flags="PA") / Raw(hello)])
    assert v.protocol == "tls"
    rnd = random.Random(11)
    v = one_verdict([u(C, S, 40000, 443, rnd.randbytes(200)) for _ in range(5)])
    assert v.protocol != "anyconnect"


def test_fuzz_never_raises() -> None:
    rnd = random.Random(21)
    seeds = [client_hello(LEGACY, SID), server_hello(LEGACY, SID), hello_verify(LEGACY),
             client_hello(DTLS12, SID, (0x00A8,)), record(23, LEGACY, os.urandom(50), 1, 1)]

    def raws() -> Iterator[bytes]:
        for i in range(3000):
            data = mutate(rnd, seeds)
            yield bytes(u(C, S, 1000 + i % 60, 443, data) if i % 3 else u(S, C, 443, 1000 + i % 60, data))

    assert feed_raw(["anyconnect"], raws()).classifier_errors == 0
