"""OpenVPN: TLS mode (plain, tls-auth, tls-crypt), TCP framing, static key; near-misses rejected."""

from __future__ import annotations

import os
import random

from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from support import one_verdict, run_engine

C, S = "192.0.2.10", "198.51.100.7"
CSID = bytes.fromhex("1122334455667788")
SSID = bytes.fromhex("99aabbccddeeff00")
NOW = (1_763_000_000).to_bytes(4, "big")  # replay timestamp (Unix time) in tls-auth/tls-crypt


def hard_reset_client(hmac: int = 0) -> bytes:
    # opcode 7 (P_CONTROL_HARD_RESET_CLIENT_V2), key id 0; [hmac+pid+time]; ack len 0; packet id 0
    auth = os.urandom(hmac) + b"\x00\x00\x00\x01" + NOW if hmac else b""
    return bytes([7 << 3]) + CSID + auth + b"\x00" + b"\x00\x00\x00\x00"


def hard_reset_server(hmac: int = 0, ack: bool = True) -> bytes:
    auth = os.urandom(hmac) + b"\x00\x00\x00\x01" + NOW if hmac else b""
    acks = b"\x01" + b"\x00\x00\x00\x00" + CSID if ack else b"\x00"
    return bytes([8 << 3]) + SSID + auth + acks + b"\x00\x00\x00\x00"


def control(sid: bytes, hmac: int = 0) -> bytes:
    auth = os.urandom(hmac) + b"\x00\x00\x00\x02" + NOW if hmac else b""
    return bytes([4 << 3]) + sid + auth + b"\x00" + b"\x00\x00\x00\x01" + b"\x16\x03\x01" + os.urandom(60)


def udp(src: str, dst: str, sp: int, dp: int, data: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(data)


def test_udp_plain_confirmed_by_ack_of_client_session_id() -> None:
    v = one_verdict([udp(C, S, 40000, 1194, hard_reset_client()),
                     udp(S, C, 1194, 40000, hard_reset_server())])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "openvpn", "confirmed")
    assert "server acks client session id" in v.evidence


def test_tls_auth_on_a_non_standard_port_confirmed() -> None:
    pkts = [udp(C, S, 40000, 8443, hard_reset_client(hmac=32)),
            udp(S, C, 8443, 40000, hard_reset_server(hmac=32)),
            udp(C, S, 40000, 8443, control(CSID, hmac=32))]
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("openvpn", "confirmed")


def test_tls_crypt_confirmed_by_consistent_session_ids() -> None:
    # tls-crypt: everything after opcode+session id+packet id+time+tag is encrypted, acks invisible
    def wrap(op: int, sid: bytes, pid: int = 1) -> bytes:
        return bytes([op << 3]) + sid + pid.to_bytes(4, "big") + NOW + os.urandom(32 + 40)
    pkts = [udp(C, S, 40000, 1194, wrap(7, CSID)), udp(S, C, 1194, 40000, wrap(8, SSID)),
            udp(C, S, 40000, 1194, wrap(5, CSID, 2)), udp(C, S, 40000, 1194, wrap(4, CSID, 3))]
    v = one_verdict(pkts)
    assert v.confidence == "confirmed" and any("consistent" in e for e in v.evidence)


def test_tcp_framing_with_two_records_in_one_segment() -> None:
    def rec(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b
    pkts = [IP(src=C, dst=S) / TCP(sport=40000, dport=443, flags="S"),
            IP(src=S, dst=C) / TCP(sport=443, dport=40000, flags="SA"),
            IP(src=C, dst=S) / TCP(sport=40000, dport=443, flags="PA") / Raw(rec(hard_reset_client())),
            IP(src=S, dst=C) / TCP(sport=443, dport=40000, flags="PA") / Raw(rec(hard_reset_server(ack=False))
                                                                            + rec(control(SSID)))]
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("openvpn", "confirmed")
    assert v.evidence[0].startswith("tcp client")


def test_lone_client_reset_is_only_heuristic() -> None:
    v = one_verdict([udp(C, S, 40000, 1194, hard_reset_client())])
    assert (v.klass, v.confidence) == ("vpn_tunnel", "heuristic")


def test_server_echoing_client_session_id_is_not_openvpn() -> None:
    echo = bytes([8 << 3]) + CSID + b"\x00\x00\x00\x00\x00"
    v = one_verdict([udp(C, S, 40000, 5000, hard_reset_client()), udp(S, C, 5000, 40000, echo)])
    assert v.confidence != "confirmed"


def test_static_key_framing_is_heuristic() -> None:
    rng = random.Random(3)
    pkts = []
    for _i in range(6):
        for src, dst, sp, dp in ((C, S, 40000, 1194), (S, C, 1194, 40000)):
            n = 36 + 16 * rng.choice((4, 5, 7))
            pkts.append(udp(src, dst, sp, dp, bytes(rng.randrange(256) for _ in range(n))))
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("openvpn", "heuristic")
    assert "static-key" in v.evidence[0]


def test_near_misses_are_not_openvpn() -> None:
    rng = random.Random(11)
    dns = bytes.fromhex("abcd01000001000000000000076578616d706c6503636f6d0000010001")
    tls = bytes.fromhex("160301002f0100002b0303") + bytes(32)
    cases = [
        [udp(C, S, 40000, 53, dns), udp(S, C, 53, 40000, dns)],
        [IP(src=C, dst=S) / TCP(sport=40000, dport=1194, flags="PA") / Raw(tls)],
        [udp(C, S, 40000, 27015, bytes(rng.randrange(256) for _ in range(rng.randrange(20, 300))))
         for _ in range(10)],
        # random bytes that start like a client reset but the "server" answers with garbage
        [udp(C, S, 40000, 9999, hard_reset_client()), udp(S, C, 9999, 40000, b"\x01" * 40),
         udp(S, C, 9999, 40000, b"\x02" * 40)],
    ]
    for pkts in cases:
        for v in (v for _, v in run_engine(pkts)):
            assert not (v.protocol == "openvpn" and v.confidence == "confirmed"), v


def test_reset_lookalike_byte_later_in_a_static_key_flow_does_not_derail_it() -> None:
    # Ciphertext whose first byte reads as a client/server hard reset (0x38 / 0x40), after the first
    # packet: seen with real static-key OpenVPN in the lab.
    rng = random.Random(5)
    pkts = []
    for i in range(6):
        for src, dst, sp, dp in ((C, S, 40000, 1194), (S, C, 1194, 40000)):
            body = bytearray(rng.randrange(256) for _ in range(36 + 16 * rng.choice((4, 6))))
            if i == 2:
                body[0] = 0x38 if src == C else 0x40
            pkts.append(udp(src, dst, sp, dp, bytes(body)))
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("openvpn", "heuristic") and "static-key" in v.evidence[0]


def test_random_udp_is_not_openvpn_even_when_it_starts_like_a_reset() -> None:
    rng = random.Random(9)
    flagged = 0
    for i in range(300):
        body = bytearray(rng.randrange(256) for _ in range(rng.randrange(14, 200)))
        body[0] = rng.choice((0x08, 0x38, 0x50))  # hard reset opcodes, key id 0
        pkts = [udp(C, S, 20000 + i, 7777, bytes(body)),
                udp(S, C, 7777, 20000 + i, bytes(rng.randrange(256) for _ in range(60)))]
        flagged += sum(v.protocol == "openvpn" for _, v in run_engine(pkts))
    assert flagged == 0


def test_tcp_reset_split_into_segments_seen_from_the_middle_of_the_handshake() -> None:
    """A capture (or a queue) that starts at the SYN-ACK: the responder is seen first, the client's reset
    arrives in 9-byte segments (seen in NordVPN traffic). The client is whoever sends the first payload."""
    def rec(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b
    reset = rec(hard_reset_client(hmac=64))
    pkts = [IP(src=S, dst=C) / TCP(sport=443, dport=40000, flags="SA")]
    pkts += [IP(src=C, dst=S) / TCP(sport=40000, dport=443, flags="PA") / Raw(reset[i:i + 9])
             for i in range(0, len(reset), 9)]
    reply = rec(hard_reset_server(hmac=64))
    pkts.append(IP(src=S, dst=C) / TCP(sport=443, dport=40000, flags="PA") / Raw(reply))
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("openvpn", "confirmed")


def test_tls_crypt_v2_client_reset_v3_with_wrapped_key_confirmed_in_both_views() -> None:
    # tls-crypt-v2 (OpenVPN 2.5+): the client opens with P_CONTROL_HARD_RESET_CLIENT_V3 (opcode 10), its
    # tls-crypt header (packet id: 2.6 sets high bits, seen 0x0a010001; then Unix time; 32-byte tag) and
    # the wrapped client key WKc (a few hundred bytes, ending in its 2-byte length) after the payload
    from tunnelwatch.classify.packet import parse_ip
    from tunnelwatch.offline.kernelview import inline_records

    def wrap(op: int, sid: bytes, pid: bytes, extra: int = 0) -> bytes:
        return bytes([op << 3]) + sid + pid + NOW + os.urandom(32 + 40) + os.urandom(extra)

    wkc = 290
    reset = wrap(10, CSID, bytes.fromhex("0a010001"), wkc) + (wkc + 2).to_bytes(2, "big")
    pkts = [udp(C, S, 40000, 1194, reset),
            udp(S, C, 1194, 40000, wrap(8, SSID, bytes.fromhex("00000001"))),
            udp(C, S, 40000, 1194, wrap(4, CSID, bytes.fromhex("0a010002"))),
            udp(S, C, 1194, 40000, wrap(4, SSID, bytes.fromhex("00000002")))]
    v = one_verdict(pkts)
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "openvpn", "confirmed"), v
    [rec] = inline_records("v2.pcap", [parse_ip(bytes(p), 1000.0 + i) for i, p in enumerate(pkts)])
    assert (rec["protocol"], rec["confidence"]) == ("openvpn", "confirmed"), rec
