"""SIP: request/response cross-check, compact headers, TCP segments, SDP announcing RTP; near-misses."""

from __future__ import annotations

import os
import random
import struct

from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from support import one_verdict, run_engine, verdicts
from tunnelwatch.classify.base import Context
from tunnelwatch.classify.engine import Engine
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import parse_ip
from tunnelwatch.classify.sip import SIP, parse_head, sdp_media, start_line

C, S = "192.0.2.10", "198.51.100.7"
CALL = "a84b4c76e66710@pc33.example.com"


def sdp(addr: str, port: int, extra: str = "") -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n{extra}")


def request(method: str = "INVITE", cseq: int = 1, body: str = "", compact: bool = False) -> bytes:
    h = (["v: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776", "f: <sip:alice@example.com>;tag=1",
          "t: <sip:bob@example.org>", f"i: {CALL}"] if compact else
         ["Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776", "From: <sip:alice@example.com>;tag=1",
          "To: <sip:bob@example.org>", f"Call-ID: {CALL}"])
    h += [f"CSeq: {cseq} {method}", "Max-Forwards: 70", f"Content-Length: {len(body)}"]
    if body:
        h.append("Content-Type: application/sdp")
    return (f"{method} sip:bob@example.org SIP/2.0\r\n" + "\r\n".join(h) + "\r\n\r\n" + body).encode()


def response(code: int, method: str = "INVITE", cseq: int = 1, body: str = "", call: str = CALL) -> bytes:
    h = ["Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776", "From: <sip:alice@example.com>;tag=1",
         "To: <sip:bob@example.org>;tag=2", f"Call-ID: {call}", f"CSeq: {cseq} {method}",
         f"Content-Length: {len(body)}"]
    return (f"SIP/2.0 {code} Reason\r\n" + "\r\n".join(h) + "\r\n\r\n" + body).encode()


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def t(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags="PA") / Raw(b)


def test_start_line_and_headers() -> None:
    assert start_line(b"REGISTER sip:example.com SIP/2.0\r") is not None
    assert start_line(b"SIP/2.0 180 Ringing") is not None
    assert start_line(b"GET sip:x SIP/2.0") is None
    assert start_line(b"INVITE http://x SIP/2.0") is None
    m = parse_head(request(compact=True).split(b"\r\n\r\n")[0])
    assert m is not None and (m.method, m.cseq, m.cseq_method, m.call_id) == ("INVITE", 1, "INVITE", CALL)


def test_request_answered_is_confirmed_on_any_port() -> None:
    v = one_verdict([u(C, S, 40000, 15060, request("OPTIONS")),
                     u(S, C, 15060, 40000, response(200, "OPTIONS"))])
    assert (v.klass, v.protocol, v.confidence) == ("voip", "sip", "confirmed")


def test_response_to_another_call_or_cseq_is_heuristic_only() -> None:
    for resp in (response(200, "OPTIONS", call="other@x"), response(200, "OPTIONS", cseq=2)):
        v = one_verdict([u(C, S, 40000, 5070, request("OPTIONS")), u(S, C, 5070, 40000, resp)])
        assert (v.protocol, v.confidence) == ("sip", "heuristic")


def test_invite_waits_for_the_final_response() -> None:
    pkts = [u(C, S, 5060, 5060, request()), u(S, C, 5060, 5060, response(100))]
    assert one_verdict(pkts).confidence == "heuristic"
    v = one_verdict([*pkts, u(S, C, 5060, 5060, response(200, body=sdp(S, 40000)))])
    assert v.confidence == "confirmed"


def test_one_way_request_with_compact_headers_is_heuristic() -> None:
    v = one_verdict([u(C, S, 40000, 5060, b"\r\n\r\n"),
                     u(C, S, 40000, 5060, request("REGISTER", compact=True))])
    assert (v.protocol, v.confidence) == ("sip", "heuristic")


def test_tcp_message_split_over_segments() -> None:
    msg = request(body=sdp(C, 30000))
    pkts = [t(C, S, 40000, 5060, msg[:30]), t(C, S, 40000, 5060, msg[30:200]),
            t(C, S, 40000, 5060, msg[200:]),
            t(S, C, 5060, 40000, response(180) + response(200, body=sdp(S, 40000)))]
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("sip", "confirmed")
    assert any("SDP" in e for e in v.evidence)


def test_sdp_media_parsing() -> None:
    body = (sdp("203.0.113.5", 30000, "a=rtcp:30011\r\nm=video 30002 RTP/SAVPF 96\r\na=rtcp-mux\r\n"
                "m=image 30004 udptl t38\r\nm=audio 0 RTP/AVP 0\r\n")).encode()
    addr = bytes([203, 0, 113, 5])
    assert sdp_media(body) == [(addr, 30000, 30011), (addr, 30002, 0)]
    assert sdp_media(b"v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n") == []


def test_sdp_announced_rtp_flow_becomes_confirmed() -> None:
    sig = [u(C, S, 5060, 5060, request(body=sdp(C, 30000))), u(S, C, 5060, 5060, response(100)),
           u(S, C, 5060, 5060, response(200, body=sdp(S, 40000)))]
    media = [u(C, S, 30000, 40000, struct.pack("!BBHII", 0x80, 0, 10 + i, 160 * i, 0x1234) + os.urandom(160))
             for i in range(2)]
    ended = run_engine(sig + media)
    by_port = {f.sport: v for f, v in ended}
    assert (by_port[5060].protocol, by_port[5060].confidence) == ("sip", "confirmed")
    rtp = by_port[30000]
    assert (rtp.klass, rtp.protocol, rtp.confidence) == ("voip", "rtp", "confirmed")
    assert any("announced in SDP" in e for e in rtp.evidence)
    # The same two media packets without the signalling prove nothing.
    assert all(v.klass != "voip" for _, v in run_engine(media))


def test_rtcp_port_is_announced_too() -> None:
    e = Engine(budget=24)
    ctx: Context = e.ctx
    sig = [u(C, S, 5060, 5060, request(body=sdp(C, 30000))), u(S, C, 5060, 5060, response(100))]
    for i, p in enumerate(sig):
        pkt = parse_ip(bytes(p), 1000.0 + i)
        assert pkt is not None
        e.process(pkt)
    for port, proto in ((30000, "rtp"), (30001, "rtcp")):
        probe = parse_ip(bytes(u(S, C, 40000, port, b"\x80\x00" + bytes(20))), 1001.0)
        assert probe is not None
        exp = ctx.lookup(probe)
        assert exp is not None and exp.protocol == proto


def test_near_misses_are_not_confirmed_sip() -> None:
    line_only = b"INVITE sip:bob@example.org SIP/2.0\r\n\r\n"
    http_like = b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"
    dns = bytes.fromhex("abcd01000001000000000000") + b"\x07example\x03com\x00\x00\x01\x00\x01"
    tls = bytes.fromhex("16030100c8010000c40303") + os.urandom(32)
    cases = [[u(C, S, 40000, 5070, line_only), u(S, C, 5070, 40000, b"SIP/2.0 200 OK\r\n\r\n")],
             [t(C, S, 40000, 5060, http_like)], [u(C, S, 40000, 53, dns)], [t(C, S, 40000, 5061, tls)],
             [u(C, S, 40000, 5080, os.urandom(200)) for _ in range(5)]]
    for pkts in cases:
        for _, v in run_engine(pkts):
            assert v.protocol != "sip" or v.confidence == "port", v


def test_random_and_truncated_bytes_never_raise() -> None:
    rng = random.Random(1234)
    seeds = [request(body=sdp(C, 30000)), response(200, body=sdp(S, 40000)),
             b"\x00\x01\x00\x08\x21\x12\xa4\x42", b"\x80\xc8\x00\x06", b"\x80\x00\x00\x01",
             b"\x40\x01\x00\x10", b"\x00\x68\x00\x01\x00\x54"]
    e = Engine(budget=24)
    ts = 0.0
    for i in range(3000):
        base = rng.choice(seeds)
        cut = base[:rng.randrange(len(base) + 1)]
        data = cut + bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        if rng.random() < 0.3:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(120)))
        # a few packets per flow, so that every one of them reaches the classifiers (budget 24)
        sport = 10000 + i // 4
        layer = UDP(sport=sport, dport=3478) if i % 2 else TCP(sport=sport, dport=5060, flags="PA")
        src, dst = (C, S) if rng.random() < 0.5 else (S, C)
        if src == S:
            layer.sport, layer.dport = layer.dport, layer.sport
        ts += 0.001
        pkt = parse_ip(bytes(IP(src=src, dst=dst) / layer / Raw(data)), ts)
        assert pkt is not None
        e.process(pkt)
    e.flush()
    assert e.classifier_errors == 0


CLIENT_HELLO = bytes.fromhex("16030100c8010000c40303") + os.urandom(32) + b"\x00" * 160
SERVER_HELLO = bytes.fromhex("160303005a020000560303") + os.urandom(80)


def t5061(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags="PA") / Raw(b)


def test_tls_to_port_5061_is_sip_tls_superseding_tls() -> None:
    pkts = [t5061(C, S, 40000, 5061, CLIENT_HELLO), t5061(S, C, 5061, 40000, SERVER_HELLO),
            t5061(C, S, 40000, 5061, bytes.fromhex("1703030040") + os.urandom(64)),
            t5061(S, C, 5061, 40000, bytes.fromhex("1703030040") + os.urandom(64))]
    v = one_verdict(pkts)
    assert (v.klass, v.protocol, v.confidence) == ("voip", "sip_tls", "heuristic")
    assert "port 5061" in v.evidence[0] and "ServerHello" in v.evidence[1]
    # the reverse direction (a proxy connecting out from its 5061) is the same
    assert one_verdict([t5061(S, C, 5061, 40000, CLIENT_HELLO)]).protocol == "sip_tls"


def test_tls_elsewhere_and_non_tls_on_5061_are_not_sip_tls() -> None:
    v = one_verdict([t5061(C, S, 40000, 443, CLIENT_HELLO), t5061(S, C, 443, 40000, SERVER_HELLO)])
    assert (v.klass, v.protocol) == ("benign", "tls")
    # plain SIP over TCP on 5061 is still SIP
    req = request("OPTIONS")
    resp = response(200, "OPTIONS")
    v = one_verdict([t5061(C, S, 40000, 5061, req), t5061(S, C, 5061, 40000, resp)])
    assert (v.protocol, v.confidence) == ("sip", "confirmed")
    # a server speaking first with a handshake record is not a ClientHello from the client
    vs = verdicts([t5061(S, C, 5061, 40000, os.urandom(5) + b"\x02"), t5061(C, S, 40000, 5061, b"\x16\x03")])
    assert all(v.protocol != "sip_tls" or v.confidence == "port" for v in vs)


def sip_only(pkts: list[IP]) -> Flow:
    """The one flow of these packets after the SIP classifier alone saw them."""
    e = Engine([SIP()], budget=24)
    flows = set()
    for i, p in enumerate(pkts):
        pkt = parse_ip(bytes(p), 1.0 + i / 1000)
        assert pkt is not None
        flows.add(e.process(pkt))
    assert len(flows) == 1
    return flows.pop()


def test_udp_junk_before_the_first_message_is_tolerated_twice_and_kept_as_a_count() -> None:
    junk = [bytes([0x80 + i]) + os.urandom(40) for i in range(3)]  # no start line begins with these
    exchange = [u(C, S, 40000, 5070, request("OPTIONS")), u(S, C, 5070, 40000, response(200, "OPTIONS"))]
    flow = sip_only([u(C, S, 40000, 5070, j) for j in junk[:2]])
    assert flow.state["sip"] == 2 and flow.active  # a count, not the whole state: most such flows are no SIP
    v = one_verdict([u(C, S, 40000, 5070, j) for j in junk[:2]] + exchange)
    assert (v.protocol, v.confidence) == ("sip", "confirmed")
    # the third bad datagram rejects the flow
    assert not sip_only([u(C, S, 40000, 5070, j) for j in junk]).active
    # a keepalive between them is no junk, and an upper-case start that is no SIP counts like junk
    mixed = sip_only([u(C, S, 40000, 5070, b) for b in (junk[0], b"\r\n\r\n", b"ZZZZ not sip at all, long")])
    assert mixed.active and mixed.state["sip"].bad == 2
