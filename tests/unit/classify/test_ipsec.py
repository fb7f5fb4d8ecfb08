"""IPsec: IKE SPIs cross-checked both ways (plain and NAT-T), ESP/AH SPI+sequence, near-misses, fuzzing."""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, run_engine

C, S = "192.0.2.10", "198.51.100.7"
ISPI, RSPI = bytes.fromhex("b64ef32131a48952"), bytes.fromhex("86babd3904886955")
ZERO = bytes(8)


def ike(ispi: bytes = ISPI, rspi: bytes = ZERO, *, version: int = 0x20, exch: int = 34, flags: int = 0x08,
        msgid: int = 0, np: int = 33, body: int = 40) -> bytes:
    """An IKE message: header + one generic payload of `body` bytes (next payload none)."""
    payload = struct.pack("!BBH", 0, 0, body + 4) + os.urandom(body)
    hdr = ispi + rspi + struct.pack("!BBBBII", np, version, exch, flags, msgid, 28 + len(payload))
    return hdr + payload


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def esp(spi: int, seq: int, n: int = 64) -> bytes:
    return struct.pack("!II", spi, seq) + os.urandom(n)


def ipproto(src: str, dst: str, proto: int, b: bytes) -> IP:
    return IP(src=src, dst=dst, proto=proto) / Raw(b)


def test_ikev2_sa_init_answered_is_confirmed() -> None:
    v = one_verdict([u(C, S, 500, 500, ike()), u(S, C, 500, 500, ike(rspi=RSPI, flags=0x20))])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "ike", "confirmed")
    assert "IKEv2 IKE_SA_INIT request" in v.evidence


def test_cookie_reply_without_responder_spi_is_not_yet_confirmed() -> None:
    first = [u(C, S, 500, 500, ike()), u(S, C, 500, 500, ike(np=41, flags=0x20))]
    assert one_verdict(first).confidence == "heuristic"
    v = one_verdict([*first, u(C, S, 500, 500, ike()), u(S, C, 500, 500, ike(rspi=RSPI, flags=0x20))])
    assert v.confidence == "confirmed"


def test_nat_t_marker_on_4500_and_keepalive() -> None:
    m = b"\x00\x00\x00\x00"
    v = one_verdict([
        u(C, S, 4500, 4500, b"\xff"),
        u(C, S, 4500, 4500, m + ike(rspi=RSPI, exch=35, msgid=1, np=46)),
        u(S, C, 4500, 4500, m + ike(rspi=RSPI, exch=35, msgid=1, np=46, flags=0x20)),
    ])
    assert (v.protocol, v.confidence) == ("ike", "confirmed")
    assert "NAT-T non-ESP marker" in v.evidence


def test_ikev1_main_mode_confirmed() -> None:
    v = one_verdict([u(C, S, 500, 500, ike(version=0x10, exch=2, flags=0, np=1)),
                     u(S, C, 500, 500, ike(rspi=RSPI, version=0x10, exch=2, flags=0, np=1))])
    assert (v.protocol, v.confidence) == ("ike", "confirmed")
    assert "IKEv1 Main Mode" in v.evidence


def test_lone_request_on_any_port_is_heuristic() -> None:
    v = one_verdict([u(C, S, 40000, 7000, ike())])
    assert (v.protocol, v.confidence) == ("ike", "heuristic")


def test_reply_with_other_responder_spi_is_not_confirmed() -> None:
    other = bytes.fromhex("0102030405060708")
    v = one_verdict([u(C, S, 500, 500, ike(rspi=RSPI, exch=35, msgid=1, np=46)),
                     u(S, C, 500, 500, ike(rspi=other, exch=35, msgid=1, np=46, flags=0x20))])
    assert v.confidence != "confirmed"


@pytest.mark.parametrize("payload", [
    ike()[:-1],                                    # length field disagrees with the datagram
    ike(version=0x30),                             # no IKEv3
    ike(exch=99),                                  # unknown exchange type
    ike(flags=0xC8),                               # reserved flag bits
    ike(ispi=ZERO),                                # initiator SPI must be non-zero
    ike(np=200 - 80),                              # next payload out of range for IKEv2
    ike(msgid=5),                                  # IKE_SA_INIT always has message id 0
])
def test_malformed_ike_is_only_a_port_hint(payload: bytes) -> None:
    v = one_verdict([u(C, S, 500, 500, payload), u(S, C, 500, 500, payload)])
    assert v.confidence == "port"


def test_random_udp_and_dns_on_ike_ports_are_not_matched() -> None:
    rnd = random.Random(7)
    for port in (500, 4500):
        pkts = [u(C, S, 40000, port, rnd.randbytes(rnd.randint(1, 300))) for _ in range(6)]
        assert one_verdict(pkts).confidence == "port"
    dns = bytes.fromhex("12340100000100000000000003777777076578616d706c6503636f6d0000010001")
    v = one_verdict([u(C, S, 4500, 53, dns)])
    assert v.protocol == "dns"


def test_esp_in_udp_both_ways_confirmed_one_way_heuristic() -> None:
    both = []
    for i in range(1, 4):
        both += [u(C, S, 4500, 4500, esp(0x04888FE4, i)), u(S, C, 4500, 4500, esp(0xCBB7A0C6, i))]
    assert (one_verdict(both).protocol, one_verdict(both).confidence) == ("esp", "confirmed")
    one = [u(C, S, 4500, 4500, esp(0x04888FE4, i)) for i in range(1, 4)]
    assert (one_verdict(one).protocol, one_verdict(one).confidence) == ("esp", "heuristic")


def test_esp_in_udp_with_jumping_spi_or_falling_seq_is_rejected() -> None:
    jumping = [u(C, S, 4500, 4500, esp(0x10000 + i, 1)) for i in range(4)]
    falling = [u(C, S, 4500, 4500, esp(0x04888FE4, 9 - i)) for i in range(4)]
    for pkts in (jumping, falling):
        assert one_verdict(pkts).confidence == "port"


def test_esp_ip_protocol_50() -> None:
    pair = [ipproto(C, S, 50, esp(0x2360B0E3, 1)), ipproto(S, C, 50, esp(0xF0092CB5, 1))]
    v = one_verdict(pair)
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "esp", "confirmed")
    # one packet: IP protocol 50 is ESP by assignment, a valid header is enough
    v = one_verdict(pair[:1])
    assert (v.protocol, v.confidence) == ("esp", "confirmed")
    # reserved SPI, sequence 0, too short: still ESP by protocol number, but only heuristic
    for bad in (esp(7, 1), esp(0x2360B0E3, 0), b"\x00\x01"):
        v = one_verdict([ipproto(C, S, 50, bad)])
        assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "esp", "heuristic")
        assert "header not valid" in v.evidence[1]


def ah(spi: int, seq: int, nh: int = 1, icv: int = 12, reserved: int = 0) -> bytes:
    plen = (12 + icv) // 4 - 2
    return struct.pack("!BBHII", nh, plen, reserved, spi, seq) + os.urandom(icv) + os.urandom(40)


def test_ah_ip_protocol_51() -> None:
    v = one_verdict([ipproto(C, S, 51, ah(0x604816F6, 1)), ipproto(S, C, 51, ah(0xAF8683EF, 1))])
    assert (v.protocol, v.confidence) == ("ah", "confirmed")
    assert one_verdict([ipproto(C, S, 51, ah(0x604816F6, 1))]).confidence == "confirmed"  # one packet
    too_long = struct.pack("!BBHII", 1, 200, 0, 0x604816F6, 1) + os.urandom(40)  # header beyond the packet
    for bad in (ah(0x604816F6, 1, reserved=1), too_long):
        v = one_verdict([ipproto(C, S, 51, bad)])
        assert (v.protocol, v.confidence) == ("ah", "heuristic") and "malformed AH" in v.evidence[1]


def test_fuzz_never_raises() -> None:
    rnd = random.Random(1234)
    seeds = [ike(), b"\x00\x00\x00\x00" + ike(rspi=RSPI, exch=35, msgid=1, np=46), esp(0x1234, 1),
             ah(0x1234, 1)]

    def raws() -> Iterator[bytes]:
        for i in range(3000):
            data = mutate(rnd, seeds)
            proto = rnd.choice((17, 50, 51))
            sport = rnd.choice((500, 4500, 1000 + i))
            yield bytes(IP(src=C, dst=S, proto=proto) / Raw(data)) if proto != 17 else \
                bytes(u(C, S, sport, rnd.choice((500, 4500)), data))

    assert feed_raw(["ipsec"], raws()).classifier_errors == 0


def test_engine_records_both_flows_separately() -> None:
    flows = run_engine([u(C, S, 500, 500, ike()), ipproto(C, S, 50, esp(0x2360B0E3, 1))])
    assert sorted(v.protocol for _, v in flows) == ["esp", "ike"]


# ---------------------------------------------------------------- GlobalProtect: ESP-in-UDP on UDP 4501
def test_globalprotect_esp_both_ways_confirmed_one_way_heuristic() -> None:
    both = []
    for i in range(1, 4):
        both += [u(C, S, 51000, 4501, esp(0x5A1B2C3D, i)), u(S, C, 4501, 51000, esp(0x0BADF00D, i))]
    v = one_verdict(both)
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "globalprotect", "confirmed")
    assert "ESP in UDP 4501 (GlobalProtect)" in v.evidence
    one = [u(C, S, 51000, 4501, esp(0x5A1B2C3D, i)) for i in range(1, 4)]
    assert (one_verdict(one).protocol, one_verdict(one).confidence) == ("globalprotect", "heuristic")


def test_globalprotect_near_misses_are_only_a_port_hint() -> None:
    # the same SPI both ways (an echo), a jumping SPI, and random datagrams on 4501
    echo = []
    for i in range(1, 4):
        echo += [u(C, S, 51000, 4501, esp(0x5A1B2C3D, i)), u(S, C, 4501, 51000, esp(0x5A1B2C3D, i))]
    jumping = [u(C, S, 51000, 4501, esp(0x10000 + i, 1)) for i in range(4)]
    noise = [u(C, S, 51000, 4501, os.urandom(80)) for _ in range(4)]
    assert one_verdict(echo).confidence == "heuristic"
    for pkts in (jumping, noise):
        assert one_verdict(pkts).confidence == "port"


def test_ike_from_ephemeral_port_4501_is_still_ike() -> None:
    v = one_verdict([u(C, S, 4501, 500, ike()), u(S, C, 500, 4501, ike(rspi=RSPI, flags=0x20))])
    assert (v.protocol, v.confidence) == ("ike", "confirmed")


def test_a_fresh_flow_of_no_ike_off_the_ipsec_ports_is_rejected_without_state(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Most UDP flows: no IKE header, no NAT-T marker, not on 500/4500/4501: rejected on their first
    datagram before any state is made. IKE elsewhere, and anything on 4500, still gets the state."""
    from tunnelwatch.classify import ipsec as ipsec_mod
    from tunnelwatch.classify.engine import Engine
    from tunnelwatch.classify.packet import parse_ip

    made: list[int] = []
    real = ipsec_mod._State
    monkeypatch.setattr(ipsec_mod, "_State", lambda *a, **k: made.append(1) or real(*a, **k))

    def first(sp: int, dp: int, payload: bytes) -> bool:
        """Whether the classifier is still active after this flow's first datagram."""
        e = Engine([ipsec_mod.IPsec()], budget=16)
        pkt = parse_ip(bytes(u(C, S, sp, dp, payload)), 1.0)
        assert pkt is not None
        return bool(e.process(pkt).active)

    rng = random.Random(5)
    for _ in range(50):
        assert not first(40000, 40001, b"\x01" + rng.randbytes(40))
    assert not made
    assert first(40000, 40001, ike())  # IKE on any port is looked at (heuristic)
    assert first(40000, 4500, b"\x01" + rng.randbytes(40))  # ESP-in-UDP shaped, on the NAT-T port
    assert len(made) == 2
