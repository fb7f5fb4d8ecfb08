"""WireGuard behind junk datagrams and seen mid-session; real exchanges of other protocols rejected."""

from __future__ import annotations

import random

import pytest

from support import one_verdict, run_engine
from support.wgcraft import C, S, awg_session, junk, le, rnd, u, wg_data, wg_session
from tunnelwatch.classify import load_classifiers
from tunnelwatch.classify.base import REJECT, Context, Verdict
from tunnelwatch.classify.flow import Flow, flow_key
from tunnelwatch.classify.packet import parse_ip


@pytest.mark.parametrize("count", [1, 5, 16])
def test_handshake_after_junk_of_any_size_is_confirmed(count: int) -> None:
    rng = random.Random(count)
    v = one_verdict(wg_session(rng, junk_count=count), names=["wireguard"])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "wireguard", "confirmed"), v


@pytest.mark.parametrize("count", [1, 5, 16])
def test_junk_then_handshake_through_the_whole_registry(count: int) -> None:
    rng = random.Random(100 + count)
    v = one_verdict(wg_session(rng, junk_count=count))
    assert (v.protocol, v.confidence) == ("wireguard", "confirmed"), v


def test_fake_initiations_among_the_junk_do_not_hide_the_real_one() -> None:
    rng = random.Random(7)
    real = wg_session(rng, data=1)
    fakes = [u(b"\x01\x00\x00\x00" + le(rng.getrandbits(32)) + rnd(rng, 140)) for _ in range(5)]
    # real initiation, then five fakes before the response arrives
    v = one_verdict([real[0], *fakes, *real[1:]], names=["wireguard"])
    assert v.confidence == "confirmed", v


def test_junk_only_is_not_wireguard() -> None:
    rng = random.Random(3)
    pkts = [u(j, sp=40001) for j in junk(rng, 20)] + [u(j, up=False, sp=40001) for j in junk(rng, 4)]
    for _, v in run_engine(pkts):
        assert v.klass != "vpn_tunnel", v


def test_transport_data_mid_session_from_either_side() -> None:
    rng = random.Random(5)
    i_idx, r_idx = rng.getrandbits(32), rng.getrandbits(32)
    pkts = []
    for i in range(1000, 1003):  # the server speaks first: the window opened mid-session
        pkts.append(u(wg_data(rng, 4, i_idx, i), up=False))
        pkts.append(u(wg_data(rng, 4, r_idx, i + 7)))
    v = one_verdict(pkts)
    assert (v.protocol, v.confidence) == ("wireguard", "confirmed"), v
    assert any("handshake not seen" in e for e in v.evidence)


def test_full_size_packets_cut_at_a_non_aligned_mtu_count_as_data() -> None:
    rng = random.Random(6)
    pkts = []
    for i in range(3):  # 1420-byte inner packets at MTU 1420: 16 + 1420 + 16 = 1452 bytes, not 16-aligned
        big = le(4) + le(0xAABBCCDD) + le(i, 8) + rnd(rng, 1436)
        pkts += [u(big, up=False), u(wg_data(rng, 4, 0x11223344, i, plain=40))]
    v = one_verdict(pkts, names=["wireguard"])
    assert v.protocol == "wireguard" and v.confidence == "confirmed", v


def test_junk_between_data_messages_is_skipped() -> None:
    rng = random.Random(8)
    pkts = []
    for i in range(4):
        pkts += [u(wg_data(rng, 4, 77, i)), u(rnd(rng, rng.randint(1, 300))),
                 u(wg_data(rng, 4, 99, i), up=False)]
    v = one_verdict(pkts, names=["wireguard"])
    assert v.confidence == "confirmed", v


def _inspect_all(payloads: list[tuple[bytes, bool]], name: str) -> list[object]:
    """Call one classifier directly (no engine): returns each result."""
    c = next(x for x in load_classifiers([name]))
    ctx = Context()
    out: list[object] = []
    flow: Flow | None = None
    for i, (b, up) in enumerate(payloads):
        pkt = parse_ip(bytes(u(b, up)), 1000.0 + i)
        assert pkt is not None
        if flow is None:
            flow = Flow(flow_key(pkt), pkt)
        d = flow.direction(pkt)
        if d:
            flow.pay1 += 1
        else:
            flow.pay0 += 1
        out.append(c.inspect(flow, pkt, d, ctx))
        if out[-1] is REJECT:
            break
    return out


DNS_Q = bytes.fromhex("abcd01000001000000000000076578616d706c6503636f6d0000010001")
DNS_R = bytes.fromhex("abcd81800001000100000000076578616d706c6503636f6d0000010001"
                      "c00c000100010000012c00045db8d822")
QUIC_I = b"\xc3\x00\x00\x00\x01\x08" + bytes(8) + b"\x00" + bytes(1200)
QUIC_S = b"\xc1\x00\x00\x00\x01\x00\x08" + bytes(8) + bytes(200)


@pytest.mark.parametrize("name", ["wireguard", "amneziawg", "openvpn"])
@pytest.mark.parametrize(("first_up", "first_down"), [(DNS_Q, DNS_R), (QUIC_I, QUIC_S)], ids=["dns", "quic"])
def test_a_real_exchange_of_another_protocol_is_rejected_on_the_first_reply(
        name: str, first_up: bytes, first_down: bytes) -> None:
    out = _inspect_all([(first_up, True), (first_down, False)], name)
    assert out == [None, REJECT]


@pytest.mark.parametrize("name", ["wireguard", "amneziawg", "openvpn"])
def test_one_mimicking_junk_datagram_does_not_switch_the_classifier_off(name: str) -> None:
    # AmneziaWG 1.5's I1 imitates a DNS query or a QUIC Initial; the server never answers it in kind
    rng = random.Random(4)
    out = _inspect_all([(DNS_Q, True), (QUIC_I, True), (rnd(rng, 92), False)], name)
    assert REJECT not in out


def test_rejects_after_too_much_junk() -> None:
    rng = random.Random(2)
    out = _inspect_all([(rnd(rng, rng.randint(1, 60)), True) for _ in range(400)], "wireguard")
    assert out[-1] is REJECT and 150 < len(out) < 400


def test_standard_handshake_is_not_amneziawg() -> None:
    rng = random.Random(9)
    for _, v in run_engine(wg_session(rng, junk_count=5)):
        assert v.protocol == "wireguard"
    assert isinstance(v, Verdict)
    rng2 = random.Random(10)
    awg = awg_session(rng2, jc=0, jmin=1, jmax=1, s1=0, s2=0, h=(1, 2, 3, 4))
    assert one_verdict(awg, names=["amneziawg"]).protocol == "unknown"
    assert C != S


def _reopening_engine(pkts: list[object], budget: int = 16) -> list[tuple[object, Verdict]]:
    """The inline engine: a 16-packet first look, then re-opened (fresh classifier state) while unsettled."""
    from tunnelwatch.classify.engine import Engine

    ended: list[tuple[object, Verdict]] = []
    engine = Engine(load_classifiers(), budget=budget, reopens=8,
                    on_end=lambda f, v: ended.append((f, v)))
    for i, p in enumerate(pkts):
        pkt = parse_ip(bytes(p), 1000.0 + i * 0.01)  # type: ignore[call-overload]
        assert pkt is not None
        engine.process(pkt)
    engine.flush()
    return ended


@pytest.mark.parametrize("count", [16, 40])
def test_handshake_beyond_the_first_window_is_confirmed_when_the_flow_is_reopened(count: int) -> None:
    rng = random.Random(count)
    [(_, v)] = _reopening_engine(wg_session(rng, junk_count=count, data=2))
    assert (v.protocol, v.confidence) == ("wireguard", "confirmed"), v


def test_reopened_window_mid_session_sees_only_data_and_still_confirms() -> None:
    rng = random.Random(21)
    i_idx, r_idx = rng.getrandbits(32), rng.getrandbits(32)
    pkts = [u(j) for j in junk(rng, 20, 1, 60)]  # a first window with nothing to see
    for i in range(6):
        pkts += [u(wg_data(rng, 4, r_idx, 50 + i)), u(wg_data(rng, 4, i_idx, 40 + i), up=False)]
    [(_, v)] = _reopening_engine(pkts)
    assert (v.protocol, v.confidence) == ("wireguard", "confirmed"), v


def test_fixed_size_game_packets_starting_with_1_or_2_are_not_a_hunch() -> None:
    # 148- and 92-byte datagrams whose first byte happens to be 1 or 2 (1 in 256 of random ones): with
    # junk tolerated, a lone one must not be taken for a WARP initiation/response (random reserved bytes)
    rng = random.Random(31)
    pkts = []
    for _ in range(12):
        pkts += [u(b"\x01" + rnd(rng, 147), sp=27015), u(b"\x02" + rnd(rng, 91), up=False, sp=27015)]
    for _, v in run_engine(pkts):
        assert v.klass != "vpn_tunnel", v


@pytest.mark.parametrize("name", ["wireguard", "amneziawg"])
def test_short_junk_keeps_only_the_junk_gate_and_a_handshake_after_it_still_counts(name: str) -> None:
    """Datagrams too short (or, for WireGuard, of no WireGuard type) for any message are junk: the flow
    keeps no state of the classifier's own: the flow's shared junk gate counts them and remembers the
    first one's protocol."""
    from tunnelwatch.classify.engine import Engine
    from tunnelwatch.classify.junk import SHARED, SharedGate

    rng = random.Random(21)
    short = [rnd(rng, n) for n in (1, 16, 31)]
    e = Engine([c for c in load_classifiers() if c.name == name], budget=64)
    flow = None
    for i, p in enumerate(short):
        pkt = parse_ip(bytes(u(p)), 1.0 + i)
        assert pkt is not None
        flow = e.process(pkt)
    assert flow is not None and flow.active
    assert name not in flow.state
    gate = flow.state[SHARED]
    assert type(gate) is SharedGate and gate.seen(flow) == 3 and gate.at0 == 1 and gate.first0 == ""
    if name == "amneziawg":
        session = awg_session(rng, jc=0, jmin=1, jmax=1, s1=24, s2=40, h=(0x7A1B2C3D, 0x5E6F7081, 0x92A3B4C5,
                                                                          0x11223344))
    else:
        session = wg_session(rng)
    v = one_verdict([u(p) for p in short] + session, names=[name])
    assert (v.protocol, v.confidence) == (name, "confirmed"), v
