"""DNS tunnels: iodine's handshake (confirmed), encoded-label floods (heuristic), ordinary DNS never."""

from __future__ import annotations

import base64
import os
import random

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, verdicts
from tunnelwatch.classify.dnstunnel import _ACK_B32, _b32_prefix, iodine_version_query, parse_question

C, S = "192.0.2.10", "198.51.100.53"
B32 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"abcdefghijklmnopqrstuvwxyz012345")


def b32(data: bytes) -> str:
    """iodine's base32 alphabet (a-z0-5), no padding."""
    return base64.b32encode(data).rstrip(b"=").translate(B32).decode()


def query(name: str | bytes, qtype: int | str = "A", qid: int = 1, sport: int = 40000) -> IP:
    dns = DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype=qtype))
    return IP(src=C, dst=S) / UDP(sport=sport, dport=53) / dns


def reply(name: str | bytes, rtype: int | str, rdata: bytes | str, qid: int = 1, sport: int = 40000) -> IP:
    return IP(src=S, dst=C) / UDP(sport=53, dport=sport) / DNS(
        id=qid, qr=1, aa=1, qd=DNSQR(qname=name, qtype=rtype), an=DNSRR(rrname=name, type=rtype, rdata=rdata))


def version_query() -> str:
    return "v" + b32(bytes([0, 0, 5, 2, 0x12, 0x34])) + ".t.example.org"


def test_base32_matches_iodine_alphabet() -> None:
    assert _b32_prefix(b"VACK", 6) == b32(b"VACK").encode()[:6]
    assert len(_ACK_B32) == 3 and all(len(x) == 6 for x in _ACK_B32)
    assert iodine_version_query(b"vaaaakardli") and not iodine_version_query(b"video123789")


def test_iodine_version_handshake_null_is_confirmed() -> None:
    name = version_query()
    v = one_verdict([query(name, 10), reply(name, 10, b"VACK" + os.urandom(4) + b"\x00")])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "iodine", "confirmed")
    assert "dns" in v.supersedes and any("VACK" in e for e in v.evidence)


def test_iodine_codec_checks_before_the_version_query_txt_forced() -> None:
    # iodine 0.7 opens with downstream codec checks ('y' + codec + variant + CMC), then 'v'
    pkts = []
    for i, first in enumerate(["yrbaaa", "ytbaab"]):
        name = f"{first}.t.example.org"
        pkts += [query(name, "TXT", qid=i), reply(name, "TXT", "t" + b32(os.urandom(20)), qid=i)]
    name = version_query()
    pkts += [query(name, "TXT", qid=9), reply(name, "TXT", "t" + b32(b"VACK" + os.urandom(5)), qid=9)]
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("iodine", "confirmed")


def test_version_query_late_in_a_flow_does_not_count() -> None:
    pkts = [query(f"host{i}.example.org", 10 if i == 0 else "A", qid=i) for i in range(5)]
    name = version_query()
    pkts += [query(name, 10, qid=9), reply(name, 10, b"VACK1234\x00", qid=9)]
    assert not one_verdict(pkts).flagged


@pytest.mark.parametrize("tag", [b"VACK", b"VNAK", b"VFUL"])
def test_iodine_version_reply_in_txt_is_confirmed(tag: bytes) -> None:
    name = version_query()
    v = one_verdict([query(name, "TXT"), reply(name, "TXT", "t" + b32(tag + os.urandom(5)))])
    assert (v.protocol, v.confidence) == ("iodine", "confirmed")


def test_version_shaped_query_without_iodine_reply_is_not_flagged() -> None:
    name = version_query()
    v = one_verdict([query(name, "A"), reply(name, "A", "192.0.2.1")])
    assert not v.flagged and v.protocol == "dns"


def test_generic_encoded_label_flood_is_heuristic() -> None:
    rnd = random.Random(1)
    pkts = []
    for i in range(8):
        name = f"{b32(rnd.randbytes(30))}.{b32(rnd.randbytes(20))}.t.example.org"
        pkts += [query(name, "TXT", qid=i), reply(name, "TXT", "t" + b32(rnd.randbytes(40)), qid=i)]
    v = one_verdict(pkts)
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "dns_tunnel", "heuristic")
    assert v.supersedes == frozenset({"dns"})


def test_raw_8bit_labels_and_null_type_flood_is_heuristic() -> None:
    rnd = random.Random(2)
    pkts = []
    for i in range(6):
        label = bytes(rnd.randrange(0xBC, 0xFE) for _ in range(50))
        pkts.append(query(label + b".t.example.org", 10, qid=i))
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("dns_tunnel", "heuristic")


def test_iodine_raw_udp_mode_mid_session_is_heuristic() -> None:
    pkts = []
    for _ in range(2):
        pkts.append(IP(src=C, dst=S) / UDP(sport=40000, dport=53) / Raw(b"\x10\xd1\x9e\x20" + os.urandom(60)))
        pkts.append(IP(src=S, dst=C) / UDP(sport=53, dport=40000) / Raw(b"\x10\xd1\x9e\x20" + os.urandom(60)))
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("iodine", "heuristic")


def test_ordinary_lookups_in_one_flow_are_not_flagged() -> None:
    names = ["www.example.com", "mail.example.com", "cdn.example.net", "api.example.org", "example.com",
             "_sip._udp.example.com", "1.2.0.192.in-addr.arpa", "static.example.com"]
    pkts = []
    for i, n in enumerate(names):
        pkts += [query(n, "A", qid=i), reply(n, "A", "192.0.2.1", qid=i)]
    v = one_verdict(pkts)
    assert not v.flagged and v.protocol == "dns"


def test_single_long_hash_lookup_is_not_flagged() -> None:
    # reputation services look up long hashes as labels: one query per flow, never a tunnel
    name = f"{os.urandom(20).hex()}.avqs.example.com"
    v = one_verdict([query(name, "TXT"), reply(name, "TXT", "ok")])
    assert not v.flagged and v.protocol == "dns"


def test_forwarder_with_one_odd_name_among_ordinary_ones_is_not_flagged() -> None:
    names = [f"{os.urandom(16).hex()}.example.com"] + [f"host{i}.example.com" for i in range(7)]
    pkts = [query(n, "A", qid=i) for i, n in enumerate(names)]
    v = one_verdict(pkts)
    assert not v.flagged


def test_mdns_and_other_ports_are_not_dns_tunnels() -> None:
    rnd = random.Random(3)
    pkts = []
    for i in range(6):
        name = f"{b32(rnd.randbytes(30))}.t.example.org"
        pkts.append(IP(src=C, dst="224.0.0.251") / UDP(sport=5353, dport=5353) /
                    DNS(id=0, qd=DNSQR(qname=name, qtype="PTR")))
        pkts.append(IP(src=C, dst=S) / UDP(sport=41000, dport=5300) /
                    DNS(id=i, qd=DNSQR(qname=name, qtype=10)))
    assert not [v for v in verdicts(pkts) if v.flagged]


def test_random_bytes_to_port_53_are_not_flagged() -> None:
    pkts = [IP(src=C, dst=S) / UDP(sport=40001, dport=53) / Raw(os.urandom(80)) for _ in range(6)]
    assert not [v for v in verdicts(pkts) if v.flagged]


def test_parse_question_rejects_truncated_and_pointer_names() -> None:
    assert parse_question(b"") is None
    base = bytes(DNS(id=1, qd=DNSQR(qname="a.example.org")))
    assert parse_question(base) is not None
    for cut in range(len(base)):
        parse_question(base[:cut])  # never raises
    assert parse_question(base[:12] + b"\xc0\x0c\x00\x01\x00\x01") is None


def test_hostile_dns_payloads_never_break_the_classifier() -> None:
    rnd = random.Random(4)
    name = version_query()
    seeds = [bytes(query(name, 10)[UDP].payload), bytes(reply(name, 10, b"VACK1234\x01")[UDP].payload),
             b"\x10\xd1\x9e\x20abc"]
    raws = []
    for i in range(400):
        src, dst, sp, dp = (C, S, 40000 + i % 7, 53) if i % 2 == 0 else (S, C, 53, 40000 + i % 7)
        raws.append(bytes(IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(mutate(rnd, seeds))))
    engine = feed_raw(["dnstunnel", "common"], raws)
    assert engine.classifier_errors == 0
