"""OpenVPN against cheap evasions: junk before the UDP reset, data channel only, split TCP writes."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw
from test_openvpn import CSID, SSID, control, hard_reset_client, hard_reset_server

from support import one_verdict, run_engine
from support.wgcraft import junk, rnd

C, S = "192.0.2.10", "198.51.100.7"
PEER = b"\x00\x00\x03"  # server-assigned peer id


def udp(b: bytes, up: bool = True, port: int = 1194) -> IP:
    if up:
        return IP(src=C, dst=S) / UDP(sport=40000, dport=port) / Raw(b)
    return IP(src=S, dst=C) / UDP(sport=port, dport=40000) / Raw(b)


def data_v2(rng: random.Random, pid: int, peer: bytes = PEER, key: int = 0, n: int = 100) -> bytes:
    """P_DATA_V2 with an AEAD cipher: opcode/key id, peer id, packet id in clear, tag, ciphertext."""
    return bytes([9 << 3 | key]) + peer + pid.to_bytes(4, "big") + rnd(rng, 16 + n)


def data_v1(rng: random.Random, pid: int, key: int = 1, n: int = 100) -> bytes:
    return bytes([6 << 3 | key]) + pid.to_bytes(4, "big") + rnd(rng, 16 + n)


@pytest.mark.parametrize("count", [1, 5, 16])
@pytest.mark.parametrize("hmac", [0, 32])
def test_junk_before_the_client_reset_still_confirms(count: int, hmac: int) -> None:
    rng = random.Random(count + hmac)
    pkts = [udp(j) for j in junk(rng, count)]
    pkts += [udp(hard_reset_client(hmac)), udp(hard_reset_server(hmac), up=False),
             udp(control(CSID, hmac))]
    v = one_verdict(pkts)
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "openvpn", "confirmed"), v


def test_junk_between_reset_and_answer_is_skipped() -> None:
    rng = random.Random(3)
    pkts = [udp(hard_reset_client())] + [udp(j) for j in junk(rng, 4)] + [udp(hard_reset_server(), up=False)]
    assert one_verdict(pkts).confidence == "confirmed"


def test_data_channel_v2_mid_session_is_confirmed_from_either_side() -> None:
    rng = random.Random(4)
    pkts = []
    for i in range(3):  # the server's packet first: the window opened mid-session
        pkts += [udp(data_v2(rng, 500 + i), up=False, port=8443), udp(data_v2(rng, 900 + i), port=8443)]
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("openvpn", "confirmed"), v
    assert "one peer id both ways" in v.evidence[0]
    assert one_verdict(pkts[:4]).protocol != "openvpn"  # two each way: not yet


def test_data_channel_v1_or_text_peer_id_is_only_heuristic() -> None:
    rng = random.Random(5)
    v1 = [udp(data_v1(rng, i + 10, n=rng.randrange(40, 200)), up=bool(i % 2), port=8443) for i in range(8)]
    assert (one_verdict(v1).protocol, one_verdict(v1).confidence) == ("openvpn", "heuristic")
    text = [udp(data_v2(rng, i + 10, peer=b"TTP"), up=bool(i % 2), port=8443) for i in range(8)]
    assert (one_verdict(text).protocol, one_verdict(text).confidence) == ("openvpn", "heuristic")


def test_server_answering_p_data_v2_with_v1_is_heuristic() -> None:
    """Server mode as in nDPI's openvpn_nohmac capture: the client sends P_DATA_V2, the server P_DATA_V1."""
    rng = random.Random(15)
    aead = []
    for i in range(4):
        aead += [udp(data_v2(rng, 40 + i), port=8443), udp(data_v1(rng, 70 + i, key=0), up=False, port=8443)]
    v = one_verdict(aead)
    assert (v.protocol, v.confidence) == ("openvpn", "heuristic") and "P_DATA_V1/P_DATA_V2" in v.evidence[0]
    # CBC (packet ids encrypted): V2 = 4 + HMAC-SHA1 + IV + 16n, V1 = 1 + HMAC + IV(8) + 8n (BF-CBC)
    cbc = []
    for _ in range(5):
        cbc += [udp(b"\x48" + PEER + rnd(rng, 36 + 16 * rng.randint(1, 6)), port=8443),
                udp(b"\x30" + rnd(rng, 28 + 8 * rng.randint(1, 12)), up=False, port=8443)]
    v = one_verdict(cbc)
    assert (v.protocol, v.confidence) == ("openvpn", "heuristic") and "HMAC+IV" in v.evidence[0]
    # different key ids both ways: not one channel
    mixed = [udp(data_v2(rng, 40 + i), port=8443) if i % 2 else
             udp(data_v1(rng, 70 + i, key=3), up=False, port=8443) for i in range(10)]
    assert one_verdict(mixed).protocol != "openvpn"


def test_data_channel_cbc_v2_by_framing_is_heuristic() -> None:
    rng = random.Random(6)
    pkts = [udp(bytes([0x48]) + PEER + rnd(rng, 20 + 16 + 16 * rng.randint(2, 8)), up=bool(i % 2), port=8443)
            for i in range(10)]
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("openvpn", "heuristic") and "HMAC+IV" in v.evidence[0]


def test_data_channel_near_misses() -> None:
    rng = random.Random(7)
    quic = [udp(bytes([0x48 | rng.randrange(8)]) + b"CIDCIDCI" + rnd(rng, 60), up=bool(i % 2), port=443)
            for i in range(12)]
    steady = [udp(bytes([0x48]) + PEER + (77).to_bytes(4, "big") + rnd(rng, 50), up=bool(i % 2), port=8443)
              for i in range(12)]  # constant header but the "packet id" never rises, odd lengths
    random_ = [udp(rnd(rng, rng.randrange(30, 300)), up=bool(i % 2), port=8443) for i in range(24)]
    for pkts in (quic, steady, random_):
        for _, v in run_engine(pkts):
            assert v.protocol != "openvpn", v


def _rec(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def _tcp(payload: bytes, up: bool = True, flags: str = "PA") -> IP:
    if up:
        return IP(src=C, dst=S) / TCP(sport=40000, dport=443, flags=flags) / Raw(payload)
    return IP(src=S, dst=C) / TCP(sport=443, dport=40000, flags=flags) / Raw(payload)


def _cuts(data: bytes, sizes: list[int]) -> list[bytes]:
    out, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        out.append(data[i:i + n])
        i, k = i + n, k + 1
    return out


@pytest.mark.parametrize("sizes", [[2, 1000], [1], [2], [1, 2], [2, 1, 1, 2, 7]])
def test_tcp_first_write_split_into_tiny_segments_confirms(sizes: list[int]) -> None:
    reset = _rec(hard_reset_client(hmac=32))
    pkts = [IP(src=C, dst=S) / TCP(sport=40000, dport=443, flags="S"),
            IP(src=S, dst=C) / TCP(sport=443, dport=40000, flags="SA")]
    pkts += [_tcp(seg) for seg in _cuts(reset, sizes)]
    pkts += [_tcp(seg, up=False) for seg in _cuts(_rec(hard_reset_server(hmac=32)), sizes)]
    v = one_verdict(pkts, budget=len(pkts) + 1)
    assert (v.protocol, v.confidence) == ("openvpn", "confirmed"), v


def test_tcp_split_non_openvpn_streams_are_rejected_early() -> None:
    for stream in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01" + bytes(100),
                   b"SSH-2.0-OpenSSH_9.2\r\n"):
        pkts = [_tcp(seg) for seg in _cuts(stream, [1, 2])]
        for _, v in run_engine(pkts):
            assert v.protocol != "openvpn", v


@pytest.mark.parametrize("count", [16, 40])
def test_reset_beyond_the_first_window_is_confirmed_when_the_flow_is_reopened(count: int) -> None:
    from test_wireguard_junk import _reopening_engine

    rng = random.Random(count)
    pkts = [udp(j) for j in junk(rng, count)]
    pkts += [udp(hard_reset_client(32)), udp(hard_reset_server(32), up=False), udp(control(CSID, 32)),
             udp(control(SSID, 32), up=False)]
    [(_, v)] = _reopening_engine(pkts)
    assert (v.protocol, v.confidence) == ("openvpn", "confirmed"), v


def test_reopened_window_sees_only_the_data_channel_and_confirms() -> None:
    from test_wireguard_junk import _reopening_engine

    rng = random.Random(22)
    pkts = [udp(j, port=8443) for j in junk(rng, 20, 1, 60)]
    for i in range(12):  # enough for one whole re-opened window (8 packets) of data both ways
        pkts += [udp(data_v2(rng, 300 + i), port=8443), udp(data_v2(rng, 200 + i), up=False, port=8443)]
    [(_, v)] = _reopening_engine(pkts)
    assert (v.protocol, v.confidence) == ("openvpn", "confirmed"), v


def test_junk_keeps_only_the_junk_gate_until_something_openvpn_shaped_comes() -> None:
    """Datagrams that are no reset, no P_DATA and no static-key framing leave OpenVPN without state of its
    own (the flow's shared junk gate counts them); the client reset after them still opens a session that
    the server confirms."""
    from tunnelwatch.classify.engine import Engine
    from tunnelwatch.classify.junk import SHARED, SharedGate
    from tunnelwatch.classify.openvpn import OpenVPN
    from tunnelwatch.classify.packet import parse_ip

    rng = random.Random(17)
    # first bytes: key id 1 (no reset of key 0), a P_CONTROL_V1 opcode, an opcode no packet has (0x1f)
    shaped = [bytes([0x39]) + rnd(rng, 15), bytes([4 << 3]) + rnd(rng, 40), bytes([0xF8]) + rnd(rng, 60)]
    e = Engine([OpenVPN()], budget=64)
    for i, p in enumerate(shaped):
        pkt = parse_ip(bytes(udp(p)), 1.0 + i)
        assert pkt is not None
        flow = e.process(pkt)
        assert "openvpn" not in flow.state
        sg = flow.state[SHARED]
        assert type(sg) is SharedGate and sg.seen(flow) == i + 1
    pkt = parse_ip(bytes(udp(hard_reset_client())), 9.0)
    assert pkt is not None
    st = e.process(pkt).state["openvpn"]  # the reset: OpenVPN's own state, its gate counting the junk
    assert st.gate is not None and st.gate.junk == 3 and st.static_bad and st.tcp_buf is None
    pkts = [udp(p) for p in shaped]
    pkts += [udp(hard_reset_client()), udp(hard_reset_server(), up=False), udp(control(CSID))]
    v = one_verdict(pkts, names=["openvpn"])
    assert (v.protocol, v.confidence) == ("openvpn", "confirmed"), v
