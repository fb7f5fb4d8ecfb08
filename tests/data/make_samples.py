"""Write the classifier samples of tests/data/captures/ (annotated in samples.toml there).

    .venv/bin/python tests/data/make_samples.py crafted           # rewrite every crafted-*.pcap
    .venv/bin/python tests/data/make_samples.py real RAW_DIR      # cut the real-*.pcap from lab captures

`crafted`: packets built with scapy from the protocols' specifications (the message builders are the unit
tests' own, tests/unit/classify/test_*.py), whole TCP conversations (handshake, sequence numbers, FIN)
and both directions, between documentation addresses. The random bytes come from one seeded generator,
so the files come out the same each time.

`real`: RAW_DIR holds the captures the integration tests record of real software in network namespaces,
kept by the tests/data/keep_captures.py plugin (see the README beside the samples); this cuts the flows
that matter, and only their first packets, out of them.
"""

from __future__ import annotations

import os
import random
import struct
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "captures"
CLIENT, SERVER = "198.51.100.2", "203.0.113.2"  # the lab's addresses (documentation ranges)
GW2 = "203.0.113.5"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z

_rng = random.Random(17)


def _seed(n: int) -> None:
    """Same bytes every run: the builders draw from os.urandom and random, both seeded here per file."""
    _rng.seed(n)
    random.seed(n)


os.urandom = lambda n: _rng.randbytes(n)  # before the builders are imported (some draw at import)
random.seed(17)
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "unit" / "classify")]

# the unit tests' message builders (each written from the protocol's specification or description)
import test_anyconnect as t_anyconnect  # noqa: E402
import test_discord as t_discord  # noqa: E402
import test_dnsname as t_dnsname  # noqa: E402
import test_dnstunnel as t_dns  # noqa: E402
import test_fastd as t_fastd  # noqa: E402
import test_h323 as t_h323  # noqa: E402
import test_iax2 as t_iax2  # noqa: E402
import test_icmptunnel as t_icmp  # noqa: E402
import test_ikevendor as t_vid  # noqa: E402
import test_imo as t_imo  # noqa: E402
import test_ipsec as t_ipsec  # noqa: E402
import test_l2tp as t_l2tp  # noqa: E402
import test_linecall as t_line  # noqa: E402
import test_megaco as t_megaco  # noqa: E402
import test_mgcp as t_mgcp  # noqa: E402
import test_mumble as t_mumble  # noqa: E402
import test_n2n as t_n2n  # noqa: E402
import test_openvpn as t_openvpn  # noqa: E402
import test_openvpn_obfs as t_obfs  # noqa: E402
import test_pptp as t_pptp  # noqa: E402
import test_quicname as t_quic  # noqa: E402
import test_rtp as t_rtp  # noqa: E402
import test_sccp as t_sccp  # noqa: E402
import test_sip as t_sip  # noqa: E402
import test_softether as t_softether  # noqa: E402
import test_sstp as t_sstp  # noqa: E402
import test_stun as t_stun  # noqa: E402
import test_tailscale as t_tailscale  # noqa: E402
import test_teamspeak as t_ts  # noqa: E402
import test_telegram as t_tg  # noqa: E402
import test_teredo as t_teredo  # noqa: E402
import test_tinc as t_tinc  # noqa: E402
import test_tlscert as t_cert  # noqa: E402
import test_tlsname as t_tls  # noqa: E402
import test_tor as t_tor  # noqa: E402
import test_trojan as t_trojan  # noqa: E402
import test_viber as t_viber  # noqa: E402
import test_warp as t_warp  # noqa: E402
import test_wireguard as t_wg  # noqa: E402
import test_zerotier as t_zt  # noqa: E402
import test_zoom as t_zoom  # noqa: E402
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Packet, Raw  # noqa: E402
from scapy.utils import PcapReader, wrpcap  # noqa: E402

Msgs = Iterable[tuple[int, bytes]]  # (direction: 0 client -> server, 1 server -> client, payload)


class Capture:
    """Packets of one sample file, stamped 10 ms apart in the order they are added."""

    def __init__(self) -> None:
        self.pkts: list[Packet] = []

    def add(self, p: Packet) -> None:
        e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / p
        e.time = T0 + len(self.pkts) * 0.01
        self.pkts.append(e)

    def udp(self, sport: int, dport: int, msgs: Msgs, c: str = CLIENT, s: str = SERVER) -> None:
        for d, b in msgs:
            self.add(IP(src=c, dst=s) / UDP(sport=sport, dport=dport) / Raw(b) if d == 0 else
                     IP(src=s, dst=c) / UDP(sport=dport, dport=sport) / Raw(b))

    def tcp(self, sport: int, dport: int, msgs: Msgs, c: str = CLIENT, s: str = SERVER) -> None:
        """A whole connection: handshake, each payload in one segment (ACKed), FIN both ways."""
        seq = [1000, 50000]
        ends = [(c, s, sport, dport), (s, c, dport, sport)]

        def seg(d: int, flags: str, data: bytes = b"") -> None:
            src, dst, sp, dp = ends[d]
            p = IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags=flags, seq=seq[d],
                                           ack=0 if flags == "S" else seq[1 - d], window=64240)
            self.add(p / Raw(data) if data else p)
            seq[d] += len(data) + (1 if "S" in flags or "F" in flags else 0)

        seg(0, "S")
        seg(1, "SA")
        seg(0, "A")
        for d, b in msgs:
            seg(d, "PA", b)
            seg(1 - d, "A")
        seg(0, "FA")
        seg(1, "FA")
        seg(0, "A")

    def ip(self, proto: int, msgs: Msgs, c: str = CLIENT, s: str = SERVER) -> None:
        for d, b in msgs:
            self.add(IP(src=c if d == 0 else s, dst=s if d == 0 else c, proto=proto) / Raw(b))

    def echo(self, msgs: Msgs, ident: int = 0x4d2, c: str = CLIENT, s: str = SERVER) -> None:
        for i, (d, b) in enumerate(msgs):
            self.add(IP(src=c if d == 0 else s, dst=s if d == 0 else c)
                     / ICMP(type=8 if d == 0 else 0, id=ident, seq=1 + i // 2) / Raw(b))


def payloads(pkts: Iterable[Any]) -> list[tuple[int, bytes]]:
    """(direction, payload) of a unit test's packet list; the first packet's sender is the client."""
    out: list[tuple[int, bytes]] = []
    first = None
    for p in pkts:
        src = p[IP].src if IP in p else p.src
        first = first or src
        raw = bytes(p[TCP].payload) if TCP in p else bytes(p[UDP].payload) if UDP in p else \
            bytes(p[Raw].load) if Raw in p else b""
        out.append((0 if src == first else 1, raw))
    return out


# ---------------------------------------------------------------------------------------- the samples
SAMPLES: dict[str, Callable[[Capture], None]] = {}


def sample(name: str) -> Callable[[Callable[[Capture], None]], Callable[[Capture], None]]:
    def reg(f: Callable[[Capture], None]) -> Callable[[Capture], None]:
        SAMPLES[name] = f
        return f
    return reg


def rnd(n: int) -> bytes:
    return _rng.randbytes(n)


DNS_Q = bytes.fromhex("abcd01000001000000000000076578616d706c6503636f6d0000010001")
DNS_R = bytes.fromhex("abcd81800001000100000000076578616d706c6503636f6d0000010001"
                      "c00c000100010000012c00045db8d822")


@sample("openvpn")
def openvpn(cap: Capture) -> None:
    o = t_openvpn
    cap.udp(40000, 1194, [(0, o.hard_reset_client()), (1, o.hard_reset_server()), (0, o.control(o.CSID))])

    def rec(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b
    cap.tcp(40001, 443, [(0, rec(o.hard_reset_client(hmac=32))),
                         (1, rec(o.hard_reset_server(hmac=32, ack=False)) + rec(o.control(o.SSID, hmac=32)))])


@sample("openvpn-near-miss")
def openvpn_nm(cap: Capture) -> None:
    o = t_openvpn
    cap.udp(5353, 1194, [(0, DNS_Q), (1, DNS_R)])  # an mDNS responder's message to the OpenVPN port
    # starts like a client reset, answered with garbage
    cap.udp(40001, 9999, [(0, o.hard_reset_client()), (1, b"\x01" * 40), (1, b"\x02" * 40)])
    # a game's random datagrams on 1194
    cap.udp(40002, 1194, [(i % 2, rnd(40 + 23 * i)) for i in range(8)])


@sample("openvpn-obfs")
def openvpn_obfs(cap: Capture) -> None:
    key = b"\x5a\xa5"
    cap.udp(40000, 1214, [(d, t_obfs.xor(key)(r)) for d, r in t_obfs.handshake()])
    # TCP: a clear 2-byte length before each scrambled record (as the obfuscated client on 465 does)
    cap.tcp(40001, 465, [(d, len(r).to_bytes(2, "big") + t_obfs.xor(key)(r)) for d, r in t_obfs.handshake()])


@sample("openvpn-obfs-near-miss")
def openvpn_obfs_nm(cap: Capture) -> None:
    r = random.Random(7)
    call = [(0, b"\x00\x01" + rnd(70)), (1, b"\x01\x01" + rnd(90))]
    call += [(r.randint(0, 1), bytes([0x81]) + rnd(r.choice((27, 43, 59, 83)))) for _ in range(6)]
    call += [(r.randint(0, 1), bytes([r.choice((0x80, 0x90))]) + rnd(r.randint(60, 200))) for _ in range(14)]
    cap.udp(40000, 3478, call)  # a WhatsApp-like call: STUN, then RTP and RTCP
    utp = [(0, b"\x41\x01" + rnd(18)), (1, b"\x21\x01" + rnd(18))]
    utp += [(0, b"\x01\x01" + rnd(r.randint(100, 1000))) if i % 2 else (1, b"\x21\x01" + rnd(18))
            for i in range(20)]
    cap.udp(40001, 6881, utp)  # BitTorrent uTP


@sample("wireguard")
def wireguard(cap: Capture) -> None:
    w = t_wg
    msgs = [(0, w.initiation()), (1, w.response())]
    for i in range(3):
        msgs += [(0, w.data(w.R_IDX, i)), (1, w.data(w.I_IDX, i, 96))]
    cap.udp(40000, 51820, msgs)
    # Cloudflare WARP: WireGuard with a client id in the reserved bytes
    wp = t_warp
    cap.udp(40001, 2408, [(0, wp.std(1, wp.CID, wp.le(wp.I_IDX) + rnd(140))),
                          (1, wp.std(2, wp.CID, wp.le(wp.R_IDX) + wp.le(wp.I_IDX) + rnd(80)))])


@sample("wireguard-near-miss")
def wireguard_nm(cap: Capture) -> None:
    w = t_wg
    # a response naming another initiator: a WireGuard-sized exchange that is not a handshake
    cap.udp(40000, 51820, [(0, w.initiation()), (1, w.response(receiver=0x999))])
    # QUIC Initial to 443 (long header; sizes unlike WireGuard's)
    cap.udp(40001, 443, [(0, b"\xc3\x00\x00\x00\x01\x08" + rnd(8) + b"\x00" + rnd(1180)),
                         (1, b"\xc1\x00\x00\x00\x01\x00\x08" + rnd(8) + rnd(200))])
    # a game's fixed-size packets that start with 0x01 0x00 0x00 0x00 but change size and index
    cap.udp(40002, 27015, [(0, b"\x01\x00\x00\x00" + rnd(150)), (1, rnd(90)), (0, rnd(148))])


@sample("ipsec")
def ipsec(cap: Capture) -> None:
    i = t_ipsec
    cap.udp(500, 500, [(0, i.ike()), (1, i.ike(rspi=i.RSPI, flags=0x20))])
    cap.udp(500, 500, [(0, i.ike(version=0x10, exch=2, flags=0, np=1)),
                       (1, i.ike(rspi=i.RSPI, version=0x10, exch=2, flags=0, np=1))], c="198.51.100.4")
    cap.ip(50, [(0, i.esp(0x2360B0E3, 1)), (1, i.esp(0xF0092CB5, 1)), (0, i.esp(0x2360B0E3, 2))])
    cap.ip(51, [(0, i.ah(0x604816F6, 1)), (1, i.ah(0xAF8683EF, 1))], c="198.51.100.3")


@sample("ipsec-near-miss")
def ipsec_nm(cap: Capture) -> None:
    r = random.Random(7)
    cap.udp(40000, 500, [(0, r.randbytes(r.randint(1, 300))) for _ in range(6)])
    cap.udp(40001, 4500, [(0, r.randbytes(r.randint(1, 300))) for _ in range(6)])
    cap.udp(4500, 53, [(0, DNS_Q)])
    cap.ip(50, [(0, t_ipsec.esp(7, 1))])  # reserved SPI


@sample("l2tp-near-miss")
def l2tp_nm(cap: Capture) -> None:
    lt = t_l2tp
    r = random.Random(3)
    cases = [lt.control(None, avps=lt.avp(7, b"host") + lt.avp(0, b"\x00\x01")), lt.sccrq()[:-1],
             lt.sccrq() + b"\x80", r.randbytes(120)]
    for n, p in enumerate(cases):
        cap.udp(1701, 1701, [(0, p), (1, p)], c=f"198.51.100.{10 + n}")


@sample("pptp-gre")
def pptp_gre(cap: Capture) -> None:
    inner = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5060, dport=5060) / Raw(b"x" * 20))
    cap.ip(47, [(0, t_pptp.pptp_gre(0x2DEB, b"\xff\x03\x00\x21" + inner)),
                (1, t_pptp.pptp_gre(0x4001, b"\xff\x03\x00\x21" + inner, 2))])


@sample("pptp-near-miss")
def pptp_nm(cap: Capture) -> None:
    cap.tcp(41366, 1723, [(0, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), (1, rnd(40))])
    cap.tcp(41367, 1723, [(0, t_pptp.msg(1, b"\x01\x00", cookie=0x1A2B3C4E)), (1, rnd(40))])  # bad cookie
    cap.ip(47, [(0, struct.pack("!HH", 0, 0x883E) + rnd(40))], s="203.0.113.7")  # WCCP redirect
    cap.ip(47, [(0, struct.pack("!HH", 0x0040, 0x0800) + rnd(40))], s="203.0.113.8")  # reserved bits


@sample("anyconnect")
def anyconnect(cap: Capture) -> None:
    a = t_anyconnect
    cap.udp(54107, 443, payloads(a.legacy_handshake()))
    app_id = rnd(32)
    cap.udp(40000, 443, [(0, a.client_hello(a.DTLS12, app_id, (0x00A8, 0x00A9))),
                         (1, a.server_hello(a.DTLS12, b"", 0x00A8))], s=GW2)


@sample("anyconnect-near-miss")
def anyconnect_nm(cap: Capture) -> None:
    a = t_anyconnect
    # WebRTC-style DTLS 1.2: full handshake, no session id, ECDHE suites
    cap.udp(40000, 3478, [(0, a.client_hello(a.DTLS12, b"", (0xC02B, 0xC02F))), (1, a.hello_verify(a.DTLS12)),
                          (0, a.client_hello(a.DTLS12, b"", (0xC02B, 0xC02F), cookie=rnd(20))),
                          (1, a.server_hello(a.DTLS12, rnd(32), 0xC02B))])
    cap.udp(40001, 443, [(0, rnd(200)), (1, rnd(120)), (0, rnd(300))])  # random UDP to 443


@sample("tinc")
def tinc(cap: Capture) -> None:
    cap.tcp(40000, 655, payloads(t_tinc.meta()))
    cap.udp(655, 655, [(0, rnd(80)), (1, rnd(80)), (0, rnd(120))])


@sample("tinc-near-miss")
def tinc_nm(cap: Capture) -> None:
    for n, first in enumerate([b"0 alice 18\n", b"0 al ice 17\n", b"SSH-2.0-OpenSSH_9.2\r\n"]):
        cap.tcp(40000 + n, 655, [(0, first), (1, b"0 bob 17\n")])
    cap.udp(40010, 655, [(0, rnd(80)), (1, rnd(80))])  # UDP to 655 with no meta connection


@sample("n2n")
def n2n(cap: Capture) -> None:
    n = t_n2n
    cap.udp(50000, 7654, [(0, n.v1(1, n.MAC_E, bytes(6))),
                          (1, n.v1(4, bytes(6), n.MAC_E, b"tw\0other", from_sn=1))])
    cap.udp(50001, 7777, [(0, n.v23(3, 5, body=rnd(40))), (1, n.v23(3, 6, flags=0x20, body=rnd(30)))])


@sample("n2n-near-miss")
def n2n_nm(cap: Capture) -> None:
    n = t_n2n
    cap.udp(50000, 7777, [(0, b"\x02\xff\x00\x05community\0\0\0\0\0\0\0" + rnd(20)), (1, rnd(40))])
    cap.udp(50001, 7777, [(0, b"\x03\x02\x10\x05" + rnd(40)), (1, rnd(44))])
    cap.udp(50002, 7777, [(0, n.v23(2, 5)), (1, n.v23(2, 6, comm=b"other"))])  # another community answers


@sample("fastd")
def fastd(cap: Capture) -> None:
    f = t_fastd
    cap.udp(50000, 10000, [(0, f.handshake(1, f.KEY_C)), (1, f.handshake(2, f.KEY_S, f.KEY_C))])


@sample("fastd-near-miss")
def fastd_nm(cap: Capture) -> None:
    cap.udp(50000, 10000, [(0, b"\x01\x00" + rnd(80)), (1, rnd(70))])  # right first bytes, random after
    cap.udp(50001, 10000, [(0, b"\xc8\x03\x00\x0c" + rnd(60)), (1, rnd(70))])  # L2TPv3, no fastd inside
    cap.udp(50002, 10000, [(0, b"\x17\xfe\xfd" + rnd(60)), (1, rnd(70))])  # DTLS application data


@sample("zerotier")
def zerotier(cap: Capture) -> None:
    cap.udp(40000, 9993, [(0, t_zt.hello()), (1, t_zt.header(t_zt.A, t_zt.B, 0x08) + rnd(60))])


@sample("zerotier-near-miss")
def zerotier_nm(cap: Capture) -> None:
    cap.udp(40000, 9993, [(i % 2, rnd(80)) for i in range(6)])  # random UDP on ZeroTier's port
    cap.udp(40001, 40001, [(0, t_zt.hello(ident=t_zt.B)), (1, rnd(90))])  # HELLO with a foreign identity


@sample("tailscale")
def tailscale(cap: Capture) -> None:
    ts = t_tailscale
    cap.udp(41641, 41642, [(0, ts.disco(ts.KEY_C)), (1, ts.disco(ts.KEY_S)), (0, ts.disco(ts.KEY_C, 32))])


@sample("tailscale-near-miss")
def tailscale_nm(cap: Capture) -> None:
    ts = t_tailscale
    cap.udp(41641, 41642, [(0, b"TS" + rnd(100)), (1, rnd(70))])
    cap.udp(41643, 41644, [(0, ts.disco(ts.KEY_C)), (0, ts.disco(ts.KEY_S))])  # key changes one way
    cap.udp(41645, 41646, [(0, ts.MAGIC + ts.KEY_C + rnd(20))])  # disco magic, too short


@sample("softether")
def softether(cap: Capture) -> None:
    s = t_softether
    cap.udp(51381, 5004, [(0, b"A"), (1, b"IP=198.51.100.2,PORT=51381")])
    req = s.pack(opcode="nat_t_register", tran_id=1, product_str="SoftEther OSS")
    rep = s.pack(isret=1, my_ip="198.51.100.2", ok=1)
    cap.udp(40000, 5004, [(0, req), (1, rep)], s=GW2)
    inner = s.pack(build=9674, ddns_protocol_version=1, key=b"k" * 20)
    import base64
    body = b"PACK%010X" % len(inner) + base64.b64encode(inner)
    cap.tcp(37504, 80, [(0, s.http_post("/ddns/ddns.aspx?v=1", "application/x-www-form-urlencoded", body))])
    req2 = s.http_post("/vpnsvc/connect.cgi", "image/jpeg", b"VPNCONNECT")
    hello = s.pack(hello="SoftEther VPN Server", version=5, build=9674, random=rnd(20))
    resp = (f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(hello)}\r\n\r\n").encode() + hello
    cap.tcp(50000, 5555, [(0, req2), (1, resp)])


@sample("softether-near-miss")
def softether_nm(cap: Capture) -> None:
    s = t_softether
    cap.tcp(50010, 80, [(0, s.http_post("/upload/connect.cgi", "image/jpeg", b"\xff\xd8\xff" + rnd(64))),
                        (1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")])
    cap.tcp(50011, 80, [(0, s.http_post("/vpnsvc/connect.cgi", "text/plain", b"VPNCONNECT"))])
    cap.udp(40010, 5004, [(0, b"A"), (1, b"hello")])
    cap.udp(40011, 9999, [(0, b"IP=1.2.3.4,PORT=5")])


@sample("sstp")
def sstp(cap: Capture) -> None:
    cap.tcp(50000, 80, [(0, t_sstp.REQUEST), (1, t_sstp.OK), (0, t_sstp.CALL_CONNECT)])


@sample("sstp-near-miss")
def sstp_nm(cap: Capture) -> None:
    cap.tcp(50005, 80, [(0, b"POST " + t_sstp.URI + b" HTTP/1.1\r\nHost: x\r\n\r\n"), (1, t_sstp.OK)])
    cap.tcp(50006, 80, [(0, t_sstp.REQUEST), (1, b"HTTP/1.1 404 Not Found\r\n\r\n")])  # refused


@sample("dnstunnel")
def dnstunnel(cap: Capture) -> None:
    d = t_dns
    name = d.version_query()
    cap.udp(40000, 53, payloads([d.query(name, 10), d.reply(name, 10, b"VACK" + rnd(4) + b"\x00")]))
    r = random.Random(1)
    msgs: list[Any] = []
    for i in range(8):
        n = f"{d.b32(r.randbytes(30))}.{d.b32(r.randbytes(20))}.t.example.org"
        msgs += [d.query(n, "TXT", qid=i, sport=40001), d.reply(n, "TXT", "t" + d.b32(r.randbytes(40)), qid=i,
                                                                 sport=40001)]
    cap.udp(40001, 53, payloads(msgs))


@sample("dnstunnel-near-miss")
def dnstunnel_nm(cap: Capture) -> None:
    d = t_dns
    names = ["www.example.org", "mail.example.org", "cdn.example.net", "api.example.com", "img.example.com",
             "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9.example.com",  # one hash lookup
             "time.example.org", "www.example.org"]
    msgs: list[Any] = []
    for i, n in enumerate(names):
        msgs += [d.query(n, "A", qid=i), d.reply(n, "A", "192.0.2.1", qid=i)]
    cap.udp(40000, 53, payloads(msgs))
    name = d.version_query()  # shaped like iodine's version query, answered with an ordinary address
    cap.udp(40001, 53, payloads([d.query(name, "A", sport=40001), d.reply(name, "A", "192.0.2.1",
                                                                          sport=40001)]))


@sample("icmptunnel")
def icmptunnel(cap: Capture) -> None:
    i = t_icmp
    cap.echo([(0, i.pt(i.USER, 0)), (1, i.pt(i.PROXY, 1)), (0, i.pt(i.USER, 2, b"GET / HTTP/1.0\r\n\r\n"))])
    cap.echo([(0, i.inner_ipv4()), (1, i.inner_ipv4(120))], ident=0x77, c="198.51.100.3")


@sample("icmptunnel-near-miss")
def icmptunnel_nm(cap: Capture) -> None:
    ping = struct.pack("<QQ", int(T0), 12345) + bytes(i & 0xFF for i in range(16, 56))
    cap.echo([(k % 2, ping) for k in range(10)])  # iputils ping
    data = rnd(100)
    cap.echo([(k % 2, data) for k in range(10)], ident=0x78, c="198.51.100.3")  # random payload, echoed


@sample("sip")
def sip(cap: Capture) -> None:
    s = t_sip
    cap.udp(5060, 5060, [(0, s.request(body=s.sdp(CLIENT, 30000))), (1, s.response(100)),
                         (1, s.response(200, body=s.sdp(SERVER, 40000))), (0, s.request("ACK"))])
    req = s.request("REGISTER")
    cap.tcp(40000, 5060, [(0, req[:60]), (0, req[60:]), (1, s.response(200, "REGISTER"))])


@sample("sip-near-miss")
def sip_nm(cap: Capture) -> None:
    cap.udp(40000, 5070, [(0, b"INVITE sip:bob@example.org SIP/2.0\r\n\r\n"), (1, b"SIP/2.0 200 OK\r\n\r\n")])
    cap.tcp(40001, 5060, [(0, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")])
    cap.udp(40002, 5080, [(0, rnd(200)) for _ in range(5)])


@sample("stun")
def stun(cap: Capture) -> None:
    s = t_stun
    tid = rnd(12)
    cap.udp(40000, 3478, [(0, s.stun(0x0001, tid, s.SOFTWARE)), (1, s.stun(0x0101, tid, s.XOR_MAPPED))])
    tid = rnd(12)
    cap.udp(40001, 3478, [(0, s.stun(0x0003, tid, s.attr(0x0019, b"\x11\0\0\0"))),
                          (1, s.stun(0x0113, tid, s.attr(0x0009, b"\0\0\x04\x01")))])


@sample("stun-near-miss")
def stun_nm(cap: Capture) -> None:
    cap.udp(40000, 9999, [(0, b"\x00\x01\x00\x00" + rnd(16))])  # RFC 5389 shape without the cookie
    cap.udp(40001, 3478, [(0, rnd(100)) for _ in range(6)])  # random UDP on the STUN port
    cap.tcp(40002, 3478, [(0, bytes.fromhex("16030100c8010000c40303") + rnd(32))])  # TLS on 3478


@sample("rtp")
def rtp(cap: Capture) -> None:
    r = t_rtp
    a, b = r.stream(0x11111111, 6), r.stream(0x22222222, 6, seq0=60000, ts0=0xFFFFFF00)
    cap.udp(30000, 40000, [m for x, y in zip(a, b, strict=True) for m in ((0, x), (1, y))])
    cap.udp(30001, 40001, [(0, r.sr(0xA) + r.sdes(0xA)), (1, r.sr(0xB) + r.sdes(0xB))])


@sample("rtp-near-miss")
def rtp_nm(cap: Capture) -> None:
    r = random.Random(5)
    cap.udp(50000, 443, [(0, bytes([0x40 | r.randrange(64)]) + rnd(80)) for _ in range(8)])  # QUIC short
    cap.udp(50001, 4433, [(0, bytes.fromhex("17fefd0001000000000001") + b"\x00\x20" + rnd(32))
                          for _ in range(8)])  # DTLS records
    cap.udp(50002, 40000, [(0, b"\x80" + rnd(171)) for _ in range(8)])  # 0x80 then random


@sample("iax2")
def iax2(cap: Capture) -> None:
    cap.udp(4570, 4569, payloads(t_iax2.call()))


@sample("iax2-near-miss")
def iax2_nm(cap: Capture) -> None:
    i = t_iax2
    cap.udp(40000, 27015, [(0, i.frame(3, 0, 1, 0, 0, 6, 0x01, i.CALLED)), (1, rnd(60))])  # NEW, no VERSION
    cap.udp(40001, 27015, [(0, i.frame(3, 0, 1, 0, 0, 2, 0x04, rnd(20))), (1, rnd(60))])  # voice full frame
    cap.udp(40002, 27015, [(0, i.frame(3, 0, 1, 0, 0, 6, 0x50)), (1, rnd(60))])  # unknown subclass


@sample("h323")
def h323(cap: Capture) -> None:
    h = t_h323
    cap.tcp(40000, 1720, [(0, h.SETUP), (1, h.PROCEEDING), (1, h.CONNECT)])
    cap.tcp(40002, 1232, [(1, h.H245_TCS), (0, h.H245_REPLY)])
    cap.udp(1719, 1719, [(0, h.ras_msg(3, 0x4692)), (1, h.ras_msg(4, 0x4692))])


@sample("h323-near-miss")
def h323_nm(cap: Capture) -> None:
    h = t_h323
    rdp = h.tpkt(b"\x0e\xe0\x00\x00\x00\x00\x00Cookie: mstshash=x\r\n\x01\x00\x08\x00\x0b\x00\x00\x00")
    cap.tcp(40000, 3389, [(0, rdp), (1, rdp)])  # RDP: TPKT + X.224
    s7 = h.tpkt(b"\x02\xf0\x80\x32\x01\x00\x00\x00\x01\x00\x08\x00\x00")
    cap.tcp(40001, 102, [(0, s7), (1, s7)])  # S7comm over ISO-TSAP


@sample("mgcp")
def mgcp(cap: Capture) -> None:
    m = t_mgcp
    cap.udp(2727, 2427, [(0, m.CRCX), (1, m.OK)])
    cap.udp(2728, 2427, [(0, b"RQNT 1205 aaln/1@rgw-2567.whatever.net MGCP 1.0\r\nX: 0123456789AC\r\n"
                              b"R: l/hd(N)\r\n")], c="198.51.100.3")


@sample("mgcp-near-miss")
def mgcp_nm(cap: Capture) -> None:
    cap.udp(40000, 1900, [(0, b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n\r\n"),
                          (1, b"200 1 OK\r\n")])
    cap.udp(40001, 2427, [(1, b"200 %d OK\r\n" % i) for i in range(6)])  # responses alone
    cap.udp(40002, 41000, [(0, b"RQNT 1 gateway44 MGCP 1.0\r\n"), (1, b"200 1 OK\r\n")])  # no @ endpoint


@sample("sccp")
def sccp(cap: Capture) -> None:
    s = t_sccp
    cap.tcp(50000, 2000, [(0, s.REGISTER), (1, s.REGISTER_ACK), (0, s.KEEPALIVE), (1, s.KEEPALIVE_ACK)])


@sample("sccp-near-miss")
def sccp_nm(cap: Capture) -> None:
    cap.tcp(50000, 2000, [(0, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), (1, rnd(40))])
    cap.tcp(50001, 2000, [(0, t_sccp.msg(0x5000)), (1, rnd(40))])  # message id outside the known range


@sample("tor")
def tor(cap: Capture) -> None:
    t = t_tor
    cap.tcp(40000, 443, payloads(t.conv(b"www.q4cyamnc6mtokj.com", b"www.fcsyvnlemwxv5p.net", [543, 543])))
    cap.tcp(40001, 9001, payloads(t.conv(b"www.t3i3ru.com", b"www.example.org", [543, 536, 586])))


@sample("tor-near-miss")
def tor_nm(cap: Capture) -> None:
    t = t_tor
    cap.tcp(40000, 443, payloads(t.conv(b"www.facebook.com", b"www.facebook.com", [300, 1400, 517, 1200])))
    cap.tcp(40001, 443, payloads(t.conv(b"mail.q4cyamnc6mtokj.com", b"www.fcsyvnlemwxv5p.net",
                                        [543, 543, 543])))


@sample("trojan")
def trojan(cap: Capture) -> None:
    t = t_trojan
    cap.tcp(40000, 443, payloads([*t.tls13_handshake(), *t.inner_handshake()]))


@sample("trojan-near-miss")
def trojan_nm(cap: Capture) -> None:
    t = t_trojan
    cap.tcp(40000, 443, payloads([*t.tls12_handshake(), t.c(t.rec(23, 164)), t.c(t.rec(23, 241)),
                                  t.c(t.rec(23, 25)), *[t.s(t.rec(23, 1316)) for _ in range(4)],
                                  t.c(t.rec(23, 143))]))  # an HTTP/2 browser's first flight
    cap.tcp(40001, 443, payloads([*t.tls13_handshake(), *t.inner_handshake(a=120)]))  # a small request


SSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
SSH_HANDSHAKE = "C1560 S1088 C1208 S1564 C16 C44 S44 C60 S52 C140 S100 C308 S28"


def ssh_msgs(after: str) -> list[tuple[int, bytes]]:
    return [(0, SSH_BANNER), (1, SSH_BANNER)] + [(0 if w[0] == "C" else 1, rnd(int(w[1:])))
                                                 for w in f"{SSH_HANDSHAKE} {after}".split()]


@sample("ssh-forwarding")
def ssh_forwarding(cap: Capture) -> None:
    forward = "C60 S288 S172 " + " ".join(["C92 S44 C124 S228 S4344 S708 C36 S72 C36"] * 4)
    cap.tcp(40000, 22, ssh_msgs(forward))


@sample("ssh-forwarding-near-miss")
def ssh_forwarding_nm(cap: Capture) -> None:
    cap.tcp(40000, 22, ssh_msgs("C112 S288 S216 C460 S108 " + " ".join(["C36 S36"] * 30)))  # typing


@sample("fully-encrypted")
def fully_encrypted(cap: Capture) -> None:
    cap.tcp(40000, 8388, [(0, random.Random(1).randbytes(300)), (1, random.Random(2).randbytes(1200))])


@sample("fully-encrypted-near-miss")
def fully_encrypted_nm(cap: Capture) -> None:
    cap.tcp(40000, 443, [(0, bytes.fromhex("16030100c8010000c40303") + rnd(200)), (1, rnd(1200))])
    cap.tcp(40001, 8080, [(0, b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"), (1, rnd(900))])
    r = random.Random(3)
    printable = bytes(r.randrange(0x20, 0x7F) for _ in range(300))
    cap.tcp(40002, 8388, [(0, printable), (1, rnd(600))])


@sample("common")
def common(cap: Capture) -> None:
    cap.udp(40000, 53, [(0, DNS_Q), (1, DNS_R)])
    hello = t_tor.client_hello(b"www.example.org")
    cap.tcp(40001, 443, [(0, hello), (1, t_tor.server_flight(b"www.example.org"))])
    cap.tcp(40002, 80, [(0, b"GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n"),
                        (1, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")])
    ntp = b"\x23" + bytes(47)
    cap.udp(40003, 123, [(0, ntp), (1, b"\x24\x02" + bytes(46))])


@sample("common-near-miss")
def common_nm(cap: Capture) -> None:
    cap.udp(40000, 53, [(i % 2, rnd(60)) for i in range(4)])  # random bytes to the DNS port
    cap.udp(40001, 123, [(0, rnd(48)), (1, rnd(48))])  # 48 random bytes to the NTP port



# ------------------------------------------------------------------- voice apps and Teredo (issue 14)
@sample("teamspeak")
def teamspeak(cap: Capture) -> None:
    t = t_ts
    cap.udp(53187, 9987, [(0, t.INIT0), (1, t.INIT1)])
    done = bytes.fromhex("0181840200")
    cap.udp(2011, 2010, [(0, t.LIST_REQ), (1, t.LIST_ANS), (0, t.LIST_STEP2), (1, done)])


@sample("teamspeak-near-miss")
def teamspeak_nm(cap: Capture) -> None:
    t = t_ts
    cap.udp(40000, 9987, [(0, rnd(34)), (1, rnd(40))])  # random datagrams to the voice port
    cap.udp(40001, 41000, [(0, t.INIT0[:17] + b"\x01" + t.INIT0[18:]), (1, t.INIT1)])  # client sends step 1
    cap.udp(2011, 2010, [(0, t.LIST_REQ)], c="198.51.100.3")  # a list request nobody answers


@sample("mumble")
def mumble(cap: Capture) -> None:
    cap.udp(50085, 64738, [(0, t_mumble.PING), (1, t_mumble.PONG)])


@sample("mumble-near-miss")
def mumble_nm(cap: Capture) -> None:
    m = t_mumble
    cap.udp(50085, 41000, [(0, m.PING), (1, m.PONG[:4] + rnd(8) + m.PONG[12:])])  # identifier not echoed
    cap.udp(50086, 41000, [(0, bytes(12)), (1, bytes(24))])  # all zeros


@sample("discord")
def discord(cap: Capture) -> None:
    d = t_discord
    cap.udp(56271, 50004, [(0, d.KEEPALIVE), (1, d.KEEPALIVE)])
    cap.udp(56272, 50001, [(0, d.DISCOVERY), (1, d.ANSWER)])


@sample("discord-near-miss")
def discord_nm(cap: Capture) -> None:
    d = t_discord
    cap.udp(56271, 50004, [(0, d.KEEPALIVE + b"\x00"), (1, d.KEEPALIVE + b"\x00")])  # 9 bytes
    cap.udp(56272, 50001, [(0, b"\x00\x01\x00\x45" + d.DISCOVERY[4:]), (1, d.ANSWER)])  # length 69


@sample("zoom")
def zoom(cap: Capture) -> None:
    z = t_zoom
    cap.udp(58327, 8801, [(0, z.JOIN), (1, z.JOINED)])
    cap.udp(23903, 3479, [(0, z.PROBE), (1, z.PROBE_ANS)])
    cap.udp(49579, 49586, [(0, z.hello(GW2)), (1, z.hello("192.168.1.128"))], s=GW2)


@sample("zoom-near-miss")
def zoom_nm(cap: Capture) -> None:
    z = t_zoom
    cap.udp(58327, 8801, [(0, z.JOIN), (1, b"\x02\x00\x01" + rnd(32))])  # token not echoed
    cap.udp(23903, 41000, [(0, z.PROBE[:20] + b"\x00\x06\x00\x14" + z.PROBE[24:]), (1, z.PROBE_ANS)])
    cap.udp(49579, 49586, [(0, z.hello("10.9.9.9"))], s=GW2)  # a hello naming another address


@sample("telegram")
def telegram(cap: Capture) -> None:
    cap.udp(23174, 521, [(0, t_tg.PING), (1, t_tg.PONG), (1, t_tg.MEDIA)])


@sample("telegram-near-miss")
def telegram_nm(cap: Capture) -> None:
    cap.udp(23174, 521, [(0, t_tg.TAG + b"\xff" * 11 + b"\x00" + rnd(12)), (1, rnd(64))])
    cap.udp(23175, 521, [(0, b"\xff" * 40), (1, b"\xff" * 40)])


@sample("viber")
def viber(cap: Capture) -> None:
    v = t_viber
    cap.udp(47171, 7985, [(0, v.JOIN), (1, v.JOINED)])
    cap.udp(47171, 7987, [(0, v.PROBE), (1, v.PROBED)])


@sample("viber-near-miss")
def viber_nm(cap: Capture) -> None:
    v = t_viber
    cap.udp(47171, 7985, [(0, v.JOIN), (1, v.JOINED[:6] + rnd(8) + v.JOINED[14:])])  # other session id
    cap.udp(47171, 7987, [(0, v.PROBE), (1, b"\x05\xb8" + v.PROBED[2:])])  # other prefix


@sample("linecall")
def linecall(cap: Capture) -> None:
    cap.udp(50835, 20610, [(0, t_line.UP), (1, t_line.DOWN)])


@sample("linecall-near-miss")
def linecall_nm(cap: Capture) -> None:
    up = t_line.UP
    cap.udp(50835, 20610, [(0, up[:4] + b"\x06\x03" + up[6:]), (1, t_line.DOWN)])
    cap.udp(50836, 20610, [(0, up[:120])])  # the framing, but too short


@sample("imo")
def imo(cap: Capture) -> None:
    cap.udp(49207, 57604, [(0, b"\x07"), (1, b"\x76"), (1, rnd(107)), (0, t_imo.KA10)])


@sample("imo-near-miss")
def imo_nm(cap: Capture) -> None:
    cap.udp(49207, 57604, [(0, b"\x07"), (1, b"\x07"), (0, b"\x07")])  # single bytes only
    cap.udp(49208, 57604, [(0, rnd(200)), (1, t_imo.KA11)])  # the first datagram is long


@sample("megaco")
def megaco(cap: Capture) -> None:
    m = t_megaco
    cap.udp(2944, 2944, [(0, m.REQ), (1, m.REPLY)])
    cap.udp(40000, 40000, [(0, m.SHORT_REQ), (1, m.SHORT_REPLY)])


@sample("megaco-near-miss")
def megaco_nm(cap: Capture) -> None:
    m = t_megaco
    cap.udp(40001, 40002, [(1, m.REPLY)])  # a reply alone
    cap.udp(40003, 40004, [(0, b"MEGA/1 [192.0.2.1] T=1{C=-{}}"), (1, m.SHORT_REPLY)])


@sample("teredo")
def teredo(cap: Capture) -> None:
    t = t_teredo
    cap.udp(52513, 3544, [(0, t.SOLICIT), (1, t.ADVERT)])
    cap.udp(40000, 41000, [(0, t.BUBBLE), (1, t.BUBBLE)], s=GW2)


@sample("teredo-near-miss")
def teredo_nm(cap: Capture) -> None:
    t = t_teredo
    bad_len = t.RS[:4] + b"\x00\x63" + t.RS[6:]
    cap.udp(40000, 3544, [(0, bad_len), (1, rnd(60))])  # IPv6 header whose length disagrees
    cap.udp(40001, 41000, [(0, t.BUBBLE)], s=GW2)  # bare IPv6-in-UDP, unanswered, no Teredo port



@sample("stun-teams")
def stun_teams(cap: Capture) -> None:
    s = t_stun
    tid = rnd(12)
    ms = s.attr(0x8055, b"\x00\x01\x00\x02") + s.attr(0x8070, b"\x00\x00\x00\x03")
    cap.udp(50020, 3478, [(0, s.stun(0x0001, tid, ms)), (1, s.stun(0x0101, tid, s.XOR_MAPPED))])
    tid = rnd(12)  # ordinary ICE: ICE-CONTROLLING + PRIORITY, no Microsoft attribute
    ice = s.attr(0x802A, rnd(8)) + s.attr(0x0024, b"\x6e\x00\x1e\xff")
    cap.udp(50021, 3478, [(0, s.stun(0x0001, tid, ice)), (1, s.stun(0x0101, tid, s.XOR_MAPPED))])



@sample("ip-protocol-one-packet")
def ip_protocol_one_packet(cap: Capture) -> None:
    i = t_ipsec
    cap.ip(50, [(0, i.esp(0x4A3B2C1D, 1))])  # a lone ESP packet (a probe, a capture cut short)
    cap.ip(51, [(0, i.ah(0x51525354, 7))], c="198.51.100.3")
    cap.ip(47, [(0, b"\x00\x00\x00\x00")], c="198.51.100.4")  # a GRE keepalive: payload type 0


def _quic_initial(sni: bytes, dcid: bytes) -> bytes:
    """A QUIC v1 client Initial (RFC 9001 keys from dcid) carrying a ClientHello for sni, padded to 1200."""
    hello = t_tls.hello_msg(sni, alpn=(b"h3",))
    frame = b"\x06\x00" + (0x4000 | len(hello)).to_bytes(2, "big") + hello
    return t_quic.initial(t_quic.V1, dcid, frame + bytes(1162 - len(frame)))


@sample("names")
def names(cap: Capture) -> None:
    cap.tcp(40000, 443, [(0, t_tls.client_hello(b"eu0.sec-tunnel.com")), (1, rnd(1200))])
    cap.udp(40001, 443, [(0, _quic_initial(b"api.cloudflareclient.com", bytes.fromhex("8394c8f03e515708"))),
                         (1, b"\xc0\x00\x00\x00\x01" + rnd(1195))])
    answer = t_dnsname.response("api.polargrizzly.com", [(1, bytes([203, 0, 113, 7]), 300)])
    question = t_dnsname.qname("api.polargrizzly.com") + b"\x00\x01\x00\x01"
    query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + question
    cap.udp(40002, 53, [(0, query), (1, answer)])
    cap.tcp(40003, 443, [(0, t_tls.client_hello(None)), (1, rnd(1200))], s="203.0.113.7")
    # TLS 1.2 without SNI: the server's certificate names its organisation (PIA's servers do)
    cap.tcp(40004, 443, [(0, t_tls.client_hello(None)), (1, t_cert.flight("Private Internet Access"))])


@sample("names-near-miss")
def names_nm(cap: Capture) -> None:
    for i, sni in enumerate((b"www.example.org", b"sec-tunnel.com.example.net", b"notsec-tunnel.com")):
        cap.tcp(40000 + i, 443, [(0, t_tls.client_hello(sni)), (1, rnd(1200))])
    good = bytearray(_quic_initial(b"api.cloudflareclient.com", bytes.fromhex("0011223344556677")))
    good[600] ^= 0xFF  # the AEAD tag no longer fits: a datagram shaped as an Initial, not one
    cap.udp(40010, 443, [(0, bytes(good)), (1, rnd(1200))])
    cap.udp(40011, 443, [(0, b"\xc3\x0a\x0a\x0a\x0a" + rnd(1195)), (1, rnd(80))])  # unknown (grease) version
    cap.tcp(40012, 443, [(0, t_tls.client_hello(None)), (1, t_cert.flight("Example Hosting Ltd"))])


@sample("voice-names")
def voice_names(cap: Capture) -> None:
    # a Webex client's TLS to its media/signalling host (the SNI nDPI's webex.pcap shows)
    cap.tcp(40000, 443, [(0, t_tls.client_hello(b"radcom.webex.com")), (1, rnd(1200))])
    # Webex media to an address of Cisco's published Webex subnet 62.109.192.0/18, no name on the wire
    cap.udp(40001, 9000, [(0, rnd(160)), (1, rnd(160)), (0, rnd(160))], s="62.109.229.158")
    # near misses: the catalogue's suffix inside another domain, and Signal's chat (only its calls are listed)
    cap.tcp(40002, 443, [(0, t_tls.client_hello(b"webex.com.example.net")), (1, rnd(1200))])
    cap.tcp(40003, 443, [(0, t_tls.client_hello(b"chat.signal.org")), (1, rnd(1200))])



@sample("corp-vpn")
def corp_vpn(cap: Capture) -> None:
    v = t_vid
    fc = [bytes.fromhex(h) for h in ("4c53427b6d465d1b337bb755a37a7fef", "b4f01ca951e9da8d0bafbbd34ad3044e",
                                      "c1dc4350476b98a429b91781914ca43e")]
    # FortiClient's IKEv2 IKE_SA_INIT with its three Vendor IDs, answered by a gateway that sends none
    cap.udp(500, 500, [(0, v.ike_with(fc)), (1, v.ike_with([], rspi=v.RSPI, flags=0x20))])
    # IKEv1 Main Mode answered by a Check Point gateway (its VID: 20 fixed bytes, then version bytes)
    cap.udp(500, 500, [(0, v.ike_with([], version=1, flags=0, exch=2)),
                       (1, v.ike_with([v.CHECKPOINT, v.DPD], version=1, rspi=v.RSPI, flags=0, exch=2))],
            c="198.51.100.4")
    # GlobalProtect's IPsec mode: ESP-in-UDP to the gateway's 4501, an own SPI each way
    gp: list[tuple[int, bytes]] = []
    for i in range(1, 4):
        gp += [(0, t_ipsec.esp(0x5A1B2C3D, i, 96)), (1, t_ipsec.esp(0x0BADF00D, i, 96))]
    cap.udp(51000, 4501, gp)
    # near misses: IKE whose VIDs name only features (DPD) or nobody, opaque datagrams on 4501,
    # and ESP-shaped datagrams echoing one SPI both ways
    plain = v.ike_with([v.DPD, rnd(16)])
    cap.udp(500, 500, [(0, plain), (1, v.ike_with([rnd(16)], rspi=v.RSPI, flags=0x20))], c="198.51.100.5")
    cap.udp(51001, 4501, [(0, rnd(120)), (1, rnd(120)), (0, rnd(120)), (1, rnd(120))])
    echo: list[tuple[int, bytes]] = []
    for i in range(1, 4):
        echo += [(0, t_ipsec.esp(0x0A0B0C0D, i, 64)), (1, t_ipsec.esp(0x0A0B0C0D, i, 64))]
    cap.udp(51002, 4501, echo)


def write_crafted() -> None:
    for n, (name, build) in enumerate(SAMPLES.items()):
        _seed(1000 + n)
        cap = Capture()
        build(cap)
        path = OUT / f"crafted-{name}.pcap"
        wrpcap(str(path), cap.pkts)
        print(f"{path.name}: {len(cap.pkts)} packets, {path.stat().st_size} bytes")


# ------------------------------------------------------------------------------- real-software captures
#: output name -> (raw capture kept by keep_captures.py, flows to keep as (transport, port), first N packets
#: per flow[, only the first K such flows]); port is either end's port, 0 for any
REAL: dict[str, tuple[Any, ...]] = {
    "openvpn-udp": ("test_openvpn_tls_mode_udp_--wan0.pcap", [("udp", 1194)], 12),
    "openvpn-tcp": ("test_openvpn_tls_mode_tcp_--wan0.pcap", [("tcp", 1194)], 16),
    "openvpn-tls-auth": ("test_openvpn_tls_wrapped_control_channel_tls-auth_--wan0.pcap",
                         [("udp", 1194)], 8),
    "openvpn-tls-crypt": ("test_openvpn_tls_wrapped_control_channel_tls-crypt_--wan0.pcap",
                          [("udp", 1194)], 8),
    "wireguard-go-ipv4": ("test_wireguard_go_4_--wan0.pcap", [("udp", 51820)], 8),
    "wireguard-go-ipv6": ("test_wireguard_go_6_--wan0.pcap", [("udp", 51820)], 8),
    "fastd": ("test_fastd_handshake--wan0.pcap", [("udp", 10000)], 8),
    "n2n": ("test_n2n_edges_and_supernode--wan0.pcap", [("udp", 0)], 8),
    "tinc-ipv4": ("test_tinc_meta_and_udp_ipv4_--wan0.pcap", [("tcp", 655), ("udp", 655)], 12),
    "iodine": ("test_iodine_dns_tunnel--wan0.pcap", [("udp", 53)], 12),
    # the same tunnel without its handshake, as if first seen mid-session
    "iodine-mid-session": ("test_iodine_dns_tunnel--wan0.pcap", [("udp", 53)], 16, 1, 40),
    "iputils-ping": ("test_wireguard_go_4_--wan0.pcap", [("icmp", 0)], 10),
    "ptunnel": ("test_ptunnel_icmp_tunnel--wan0.pcap", [("icmp", 0)], 10),
    "openconnect-dtls": ("test_ocserv_openconnect_1_--wan0.pcap", [("udp", 443)], 11),
    "openssl-dtls": ("dtls--wan0.pcap", [("udp", 443)], 16),
    "openssl-tls-names": ("tls-names--wan0.pcap", [("tcp", 443), ("tcp", 4443), ("tcp", 8443)], 12),
    "chromium-quic-names": ("quic-names--wan0.pcap", [("udp", 443), ("udp", 8443)], 4),
    "coturn-stun-binding": ("stun--wan0.pcap", [("udp", 3478)], 4),
    "coturn-turn": ("test_coturn_relay_is_turn_and_a_signal_realm_names_the_app_"
                    "tunnelwatch.test-turn_--turn.pcap", [("udp", 3478)], 4),
    "coturn-signal-realm": ("test_coturn_relay_is_turn_and_a_signal_realm_names_the_app_"
                            "signal.org-signal_call_--turn.pcap", [("udp", 3478)], 4),
    "kamailio-sip-tls": ("test_kamailio_call_over_udp_and_registration_over_tls--kamailio.pcap",
                         [("tcp", 5061), ("udp", 5060)], 10),
    "https-and-dns": ("test_plain_https_and_dns_are_not_flagged--wan0.pcap",
                      [("tcp", 8443), ("udp", 53)], 12),
    "tor-bridge": ("tor--wan0.pcap", [("tcp", 9001)], 20, 1),
    "shadowsocks": ("test_shadowsocks_libev--wan0.pcap", [("tcp", 8388)], 6),
    "obfs4": ("test_obfs4proxy_standalone--wan0.pcap", [("tcp", 9443)], 6),
    "v2ray-vmess": ("test_v2ray_vmess--wan0.pcap", [("tcp", 10086)], 8),
    "v2ray-trojan": ("test_v2ray_trojan_is_tls_in_tls--wan0.pcap", [("tcp", 10443)], 24),
    "openssh-forwarding": ("test_ssh_dynamic_and_local_forwarding_are_flagged--wan0.pcap",
                           [("tcp", 2222)], 60, 1),
    "openssh-interactive": ("test_interactive_ssh_and_scp_are_not_flagged--wan0.pcap",
                            [("tcp", 2222)], 128, 1),
}


def _flow_key(p: Packet) -> tuple[str, tuple[Any, ...]] | None:
    ipl = p.getlayer(IP) or p.getlayer("IPv6")
    if ipl is None:
        return None
    src, dst = ipl.src, ipl.dst
    if TCP in p or UDP in p:
        l4 = p[TCP] if TCP in p else p[UDP]
        tr = "tcp" if TCP in p else "udp"
        a, b = (src, l4.sport), (dst, l4.dport)
        return tr, (tr, *sorted([a, b]))
    if ICMP in p:
        return "icmp", ("icmp", *sorted([src, dst]))
    if GRE in p:
        return "gre", ("gre", *sorted([src, dst]))
    return None


def _lab_address(a: str) -> bool:
    return a.startswith(("198.51.100.", "203.0.113.", "2001:db8:"))


def cut(raw: Path, out: Path, keep: list[tuple[str, int]], first: int, flows: int = 0, skip: int = 0) -> int:
    """The first `first` packets of each flow kept (of the first `flows` such flows, if given), after
    dropping the capture's first `skip` IP packets."""
    counts: dict[tuple[Any, ...], int] = {}
    pkts: list[Packet] = []
    for k, p in enumerate(q for q in PcapReader(str(raw)) if IP in q or "IPv6" in q):
        if k < skip:
            continue
        fk = _flow_key(p)
        if fk is None:
            continue
        tr, key = fk
        ipl = p.getlayer(IP) or p.getlayer("IPv6")
        if not (_lab_address(ipl.src) and _lab_address(ipl.dst)):
            continue  # e.g. a relay's attempts to reach the public Tor authorities
        ports = {key[1][1], key[2][1]} if tr in ("tcp", "udp") else {0}
        if not any(tr == t and (port == 0 or port in ports) for t, port in keep):
            continue
        if tr == "icmp" and bytes(p[ICMP].payload)[:8] == b"":
            continue
        n = counts.get(key, 0)
        if n >= first or (n == 0 and flows and len(counts) >= flows):
            continue
        counts[key] = n + 1
        pkts.append(p)
    wrpcap(str(out), pkts)
    return len(pkts)


def write_real(raw_dir: Path) -> None:
    for name, (src, keep, first, *flows) in REAL.items():
        raw = raw_dir / src
        if not raw.exists():
            print(f"{name}: {raw} missing, skipped")
            continue
        out = OUT / f"real-{name}.pcap"
        n = cut(raw, out, keep, first, *flows)
        print(f"{out.name}: {n} packets, {out.stat().st_size} bytes")


def record_tor(raw_dir: Path) -> None:
    """Tor 0.4.x in the lab (root): a bridge relay in the server namespace, a client using it as its only
    bridge. With no directory authorities the client never finishes bootstrapping, but its link handshake
    with the bridge (TLS with Tor's made-up names) and the bridge descriptor fetch are real. Records
    RAW_DIR/tor--wan0.pcap for `real`."""
    import tempfile

    from tunnelwatch.lab.netlab import SERVER_IP, lab

    raw_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rc = {
            "relay": f"ORPort {SERVER_IP}:9001\nSocksPort 0\nBridgeRelay 1\nAssumeReachable 1\n"
                     "PublishServerDescriptor 0\nExitRelay 0\n",
            "client": f"SocksPort 127.0.0.1:9050\nUseBridges 1\nBridge {SERVER_IP}:9001\n",
        }
        for name, text in rc.items():
            (work / name).mkdir(mode=0o700)
            (work / f"{name}.torrc").write_text(f"DataDirectory {work / name}\nLog notice stdout\n{text}")
        with lab(work, ipv6=False) as lb:
            lb.spawn(lb.server, ["tor", "-f", str(work / "relay.torrc")], "tor-relay")
            lb.wait_for_log("tor-relay", "Opening OR listener", timeout=60)
            lb.wait_until(lb.server, ["ss", "-ltnH", "sport = :9001"], timeout=60)
            with lb.capture(lb.router, "wan0", raw_dir / "tor--wan0.pcap"):
                lb.spawn(lb.client, ["tor", "-f", str(work / "client.torrc")], "tor-client")
                lb.wait_for_log("tor-client", "new bridge descriptor", timeout=90)
            print(lb.log("tor-client")[-1500:])


def record_stun(raw_dir: Path) -> None:
    """coturn's turnserver in the server namespace answering turnutils_stunclient's Binding request
    (RFC 5389, UDP). Records RAW_DIR/stun--wan0.pcap for `real`."""
    import tempfile

    from tunnelwatch.lab.netlab import SERVER_IP, lab

    raw_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, lab(Path(tmp), ipv6=False) as lb:
        lb.spawn(lb.server, ["turnserver", "-n", "--listening-ip", SERVER_IP, "--listening-port", "3478",
                             "--no-tls", "--no-dtls", "--no-tcp", "--no-cli", "--no-auth",
                             "--log-file", "stdout", "--simple-log"], "turnserver")
        lb.wait_until(lb.server, ["sh", "-c", f"ss -lun | grep -q '{SERVER_IP}:3478 '"])
        with lb.capture(lb.router, "wan0", raw_dir / "stun--wan0.pcap"):
            r = lb.run(lb.client, "turnutils_stunclient", SERVER_IP, check=False, timeout=30)
        print(r.stdout[-1500:], r.stderr[-500:])
        assert r.returncode == 0


def record_dtls(raw_dir: Path) -> None:
    """OpenSSL's s_server and s_client, DTLS 1.2 on UDP 443 with a throw-away certificate: a full DTLS
    handshake and a line of data each way, the near miss of Cisco/OpenConnect DTLS. Records
    RAW_DIR/dtls--wan0.pcap for `real`."""
    import subprocess
    import tempfile

    from tunnelwatch.lab.netlab import SERVER_IP, lab

    raw_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "2", "-subj", "/CN=dtls.lab.example",
                        "-keyout", str(work / "k.pem"), "-out", str(work / "c.pem")],
                       check=True, capture_output=True, timeout=30)
        with lab(work, ipv6=False) as lb:
            lb.spawn(lb.server, ["openssl", "s_server", "-dtls1_2", "-accept", f"{SERVER_IP}:443",
                                 "-cert", str(work / "c.pem"), "-key", str(work / "k.pem")], "s_server",
                     stdin=subprocess.PIPE)
            lb.wait_until(lb.server, ["sh", "-c", f"ss -lun | grep -q '{SERVER_IP}:443 '"])
            with lb.capture(lb.router, "wan0", raw_dir / "dtls--wan0.pcap"):
                r = lb.run(lb.client, "openssl", "s_client", "-dtls1_2", "-connect", f"{SERVER_IP}:443",
                           input="hello from the client\n", check=False, timeout=30)
                lb.wait_for_log("s_server", "hello from the client", timeout=20)
        print(r.stdout[-800:])



def record_tls_names(raw_dir: Path) -> None:
    """OpenSSL's s_client against three s_server instances with throw-away certificates: TLS 1.3 with SNI
    eu0.sec-tunnel.com (a catalogue name) on 443, with SNI www.example.org (the near miss) on 4443, and
    TLS 1.2 without SNI on 8443 to a server whose certificate says O=Windscribe (the certificate-organisation
    path). Records RAW_DIR/tls-names--wan0.pcap for `real`."""
    import subprocess
    import tempfile

    from tunnelwatch.lab.netlab import SERVER_IP, lab

    raw_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, subj in (("plain", "/CN=tls.lab.example"), ("org", "/O=Windscribe/CN=198.51.100.80")):
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                            "-nodes", "-days", "2", "-subj", subj, "-keyout", str(work / f"{name}.key"),
                            "-out", str(work / f"{name}.pem")], check=True, capture_output=True, timeout=30)
        with lab(work, ipv6=False) as lb:
            for port, cert in ((443, "plain"), (4443, "plain"), (8443, "org")):
                lb.spawn(lb.server, ["openssl", "s_server", "-accept", f"{SERVER_IP}:{port}", "-www",
                                     "-cert", str(work / f"{cert}.pem"), "-key", str(work / f"{cert}.key")],
                         f"s_server-{port}", stdin=subprocess.PIPE)
                lb.wait_until(lb.server, ["sh", "-c", f"ss -ltn | grep -q '{SERVER_IP}:{port} '"])
            with lb.capture(lb.router, "wan0", raw_dir / "tls-names--wan0.pcap"):
                for port, extra in ((443, ["-servername", "eu0.sec-tunnel.com"]),
                                    (4443, ["-servername", "www.example.org"]),
                                    (8443, ["-tls1_2", "-noservername"])):
                    r = lb.run(lb.client, "openssl", "s_client", "-connect", f"{SERVER_IP}:{port}", *extra,
                               "-ign_eof", input="GET / HTTP/1.0\r\n\r\n", check=False, timeout=30)
                    print(port, r.returncode, r.stdout[-300:])



def record_quic_names(raw_dir: Path) -> None:
    """Debian's chromium forced onto QUIC (HTTP/3) for api.cloudflareclient.com:443 (a catalogue name) and
    www.example.org:8443 (the near miss), both names mapped to the lab server, where a socket swallows the
    datagrams without answering (an ICMP port unreachable would stop chromium after its first Initial):
    the client's Initial packets (v1, the ClientHello with its post-quantum key share spread over two of
    them) are what matters. Records RAW_DIR/quic-names--wan0.pcap for `real`."""
    import tempfile

    from tunnelwatch.lab.netlab import SERVER_IP, lab

    raw_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sink = ("import socket, time\n"
                f"socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]\n"
                f"[s.bind(('{SERVER_IP}', p)) for s, p in zip(socks, (443, 8443))]\n"
                "print('bound', flush=True)\n"
                "time.sleep(300)\n")
        with lab(work, ipv6=False) as lb:
            lb.spawn(lb.server, [sys.executable, "-c", sink], "udp-sink")
            lb.wait_for_log("udp-sink", "bound", timeout=20)
            with lb.capture(lb.router, "wan0", raw_dir / "quic-names--wan0.pcap"):
                _chromium_quic(lb, SERVER_IP, work)


def _chromium_quic(lb: Any, server_ip: str, work: Path) -> None:
    for host, port in (("api.cloudflareclient.com", 443), ("www.example.org", 8443)):
        profile = work / f"profile-{port}"
        r = lb.run(lb.client, "chromium", "--headless", "--no-sandbox", "--disable-gpu",
                   "--no-first-run", "--disable-background-networking", "--disable-component-update",
                   "--disable-sync", "--no-proxy-server", "--enable-quic",
                   f"--origin-to-force-quic-on={host}:{port}",
                   f"--host-resolver-rules=MAP {host} {server_ip}, MAP * ~NOTFOUND",
                   f"--user-data-dir={profile}", "--timeout=4000", "--dump-dom",
                   f"https://{host}:{port}/", check=False, timeout=60)
        print(host, r.returncode, r.stderr[-200:])


if __name__ == "__main__":
    if sys.argv[1:2] == ["crafted"]:
        write_crafted()
    elif sys.argv[1:2] == ["record-tor"] and len(sys.argv) == 3:
        record_tor(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["record-stun"] and len(sys.argv) == 3:
        record_stun(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["record-dtls"] and len(sys.argv) == 3:
        record_dtls(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["record-tls-names"] and len(sys.argv) == 3:
        record_tls_names(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["record-quic-names"] and len(sys.argv) == 3:
        record_quic_names(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["real"] and len(sys.argv) == 3:
        write_real(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
