"""STUN/TURN: transaction ids cross-checked both ways, classic STUN, TCP framings, TURN ChannelData."""

from __future__ import annotations

import os
import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from support import one_verdict, run_engine
from tunnelwatch.classify.stun import MAGIC_COOKIE, message_type, parse_message

C, S = "192.0.2.10", "198.51.100.7"


def attr(t: int, value: bytes) -> bytes:
    return struct.pack("!HH", t, len(value)) + value + b"\0" * (-len(value) % 4)


def stun(mtype: int, tid: bytes, attrs: bytes = b"", cookie: bool = True) -> bytes:
    head = struct.pack("!HH", mtype, len(attrs))
    return head + (struct.pack("!I", MAGIC_COOKIE) + tid[:12] if cookie else tid[:16]) + attrs


XOR_MAPPED = attr(0x0020, b"\x00\x01\x12\x34" + os.urandom(4))
SOFTWARE = attr(0x8022, b"tunnelwatch test")


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def t(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags="PA") / Raw(b)


def test_message_type_split() -> None:
    assert message_type(0x0001) == (0, 1)
    assert message_type(0x0101) == (2, 1)
    assert message_type(0x0113) == (3, 3)
    assert message_type(0x0017) == (1, 7)


def test_binding_answered_with_same_transaction_id_is_confirmed_on_any_port() -> None:
    tid = os.urandom(12)
    v = one_verdict([u(C, S, 40000, 443, stun(0x0001, tid, SOFTWARE)),
                     u(S, C, 443, 40000, stun(0x0101, tid, XOR_MAPPED))])
    assert (v.klass, v.protocol, v.confidence) == ("voip", "stun", "confirmed")
    assert any("SOFTWARE" in e for e in v.evidence)


def test_response_with_other_transaction_id_is_only_heuristic() -> None:
    v = one_verdict([u(C, S, 40000, 3478, stun(0x0001, os.urandom(12))),
                     u(S, C, 3478, 40000, stun(0x0101, os.urandom(12), XOR_MAPPED))])
    assert (v.protocol, v.confidence) == ("stun", "heuristic")


def test_lone_request_with_cookie_is_heuristic() -> None:
    v = one_verdict([u(C, S, 40000, 19302, stun(0x0001, os.urandom(12)))])
    assert (v.klass, v.protocol, v.confidence) == ("voip", "stun", "heuristic")


def test_turn_allocate_error_then_channel_data() -> None:
    tid = os.urandom(12)
    v = one_verdict([u(C, S, 40000, 3478, stun(0x0003, tid, attr(0x0019, b"\x11\0\0\0"))),
                     u(S, C, 3478, 40000, stun(0x0113, tid, attr(0x0009, b"\0\0\x04\x01")))])
    assert (v.protocol, v.confidence) == ("turn", "confirmed")


def test_channel_bind_then_channel_data_is_turn() -> None:
    bind = stun(0x0009, os.urandom(12), attr(0x000C, b"\x40\x01\0\0"))
    data = b"\x40\x01\x00\x08" + os.urandom(8)
    v = one_verdict([u(C, S, 40000, 3478, bind), u(C, S, 40000, 3478, data), u(S, C, 3478, 40000, data)])
    assert (v.protocol, v.confidence) == ("turn", "confirmed")
    assert any("ChannelData" in e for e in v.evidence)


def test_classic_rfc3489_needs_the_cross_check() -> None:
    tid = os.urandom(16)
    mapped = attr(0x0001, b"\x00\x01\x12\x34\xc0\x00\x02\x0a")
    v = one_verdict([u(C, S, 40000, 13958, stun(0x0001, tid, cookie=False)),
                     u(S, C, 13958, 40000, stun(0x0101, tid, mapped, cookie=False))])
    assert (v.protocol, v.confidence) == ("stun", "confirmed")
    lone = one_verdict([u(C, S, 40000, 13958, stun(0x0001, tid, cookie=False))])
    assert lone.klass != "voip"


def test_tcp_plain_framing_several_messages_in_one_segment() -> None:
    tid = os.urandom(12)
    req = stun(0x0003, tid, attr(0x0019, b"\x11\0\0\0"))
    v = one_verdict([t(C, S, 40000, 3479, req + req + req[:10]), t(C, S, 40000, 3479, req[10:]),
                     t(S, C, 3479, 40000, stun(0x0113, tid))])
    assert (v.protocol, v.confidence) == ("turn", "confirmed")


def test_tcp_rfc4571_length_framing() -> None:
    tid = os.urandom(12)
    req, resp = stun(0x0001, tid, SOFTWARE), stun(0x0101, tid, XOR_MAPPED)
    v = one_verdict([t(C, S, 40000, 42000, struct.pack("!H", len(req)) + req),
                     t(S, C, 42000, 40000, struct.pack("!H", len(resp)) + resp)])
    assert (v.protocol, v.confidence) == ("stun", "confirmed")


def test_webrtc_stun_then_dtls_stays_stun() -> None:
    tid = os.urandom(12)
    dtls = bytes.fromhex("16fefd0000000000000000") + struct.pack("!H", 20) + os.urandom(20)
    v = one_verdict([u(C, S, 40000, 19305, stun(0x0001, tid)), u(S, C, 19305, 40000, stun(0x0101, tid,
                                                                                          XOR_MAPPED)),
                     u(C, S, 40000, 19305, dtls), u(S, C, 19305, 40000, dtls)])
    assert (v.klass, v.protocol, v.confidence) == ("voip", "stun", "confirmed")


def test_parse_rejects_bad_lengths_and_top_bits() -> None:
    good = stun(0x0001, os.urandom(12), SOFTWARE)
    assert parse_message(good) is not None
    assert parse_message(good[:-1]) is None  # announced length runs past the data
    assert parse_message(b"\xc0" + good[1:]) is None
    broken_walk = good[:22] + b"\x00\xff" + good[24:]  # attribute length beyond the message
    assert parse_message(broken_walk) is None


def test_near_misses_are_not_stun() -> None:
    dns = bytes.fromhex("abcd01000001000000000000") + b"\x07example\x03com\x00\x00\x01\x00\x01"
    quic = b"\xc3\x00\x00\x00\x01\x08" + os.urandom(1194)
    tls = bytes.fromhex("16030100c8010000c40303") + os.urandom(32)
    no_cookie_random = b"\x00\x01\x00\x00" + os.urandom(16)
    for pkts in ([u(C, S, 40000, 53, dns)], [u(C, S, 40000, 443, quic)], [t(C, S, 40000, 3478, tls)],
                 [u(C, S, 40000, 9999, os.urandom(100)) for _ in range(6)],
                 [u(C, S, 40000, 9999, no_cookie_random)]):
        for _, v in run_engine(pkts):
            assert v.protocol not in ("stun", "turn") or v.confidence == "port", v


def _app_call(attrs_req: bytes, method: int = 0x0003) -> list[IP]:
    tid = os.urandom(12)
    return [u(C, S, 40000, 3478, stun(method, tid, attrs_req)),
            u(S, C, 3478, 40000, stun(0x0100 | method, tid, XOR_MAPPED))]


def test_whatsapp_attribute_range_and_method_name_the_app() -> None:
    v = one_verdict(_app_call(attr(0x4000, os.urandom(8)) + attr(0x4002, b"\x00\x01")))
    assert (v.klass, v.protocol, v.confidence) == ("voip", "whatsapp_call", "confirmed")
    assert any("0x4000" in e and "WhatsApp" in e for e in v.evidence)
    tid = os.urandom(12)
    v = one_verdict([u(C, S, 40000, 3478, stun(0x0800, tid, XOR_MAPPED))])  # method 0x200, request
    assert (v.protocol, v.confidence) == ("whatsapp_call", "heuristic")


def test_signal_and_telegram_realms_name_the_app() -> None:
    for realm, app in ((b"signal.org", "signal_call"), (b"turn.whispersystems.org", "signal_call"),
                       (b"telegram.org", "telegram_call")):
        tid = os.urandom(12)
        pkts = [u(C, S, 40000, 3478, stun(0x0003, tid, attr(0x0019, b"\x11\0\0\0"))),
                u(S, C, 3478, 40000, stun(0x0113, tid, attr(0x0009, b"\0\0\x04\x01") + attr(0x0014, realm)))]
        v = one_verdict(pkts)
        assert (v.protocol, v.confidence) == (app, "confirmed"), realm
        assert any("REALM is" in e for e in v.evidence)


def test_other_realms_and_assigned_attributes_stay_stun_or_turn() -> None:
    for realm in (b"example.org", b"notsignal.org", b"telegram.org.evil.example", b"turner.facebook"):
        tid = os.urandom(12)
        pkts = [u(C, S, 40000, 3478, stun(0x0003, tid)),
                u(S, C, 3478, 40000, stun(0x0113, tid, attr(0x0014, realm)))]
        assert one_verdict(pkts).protocol == "turn", realm
    # classic STUN (no cookie) never carries a fingerprint, even with a 0x4000-range type
    assert parse_message(stun(0x0001, os.urandom(16), attr(0x4000, b"1234"), cookie=False)) is None


def test_a_messenger_socket_names_its_other_flows() -> None:
    wa = _app_call(attr(0x4000, os.urandom(8)))
    tid = os.urandom(12)
    peer = [u(C, "203.0.113.9", 40000, 51000, stun(0x0001, tid)),
            u("203.0.113.9", C, 51000, 40000, stun(0x0101, tid, XOR_MAPPED))]
    other_socket = [u(C, "203.0.113.9", 40002, 51000, stun(0x0001, tid)),
                    u("203.0.113.9", C, 51000, 40002, stun(0x0101, tid, XOR_MAPPED))]
    got = {(f.sport, f.dport): v for f, v in run_engine(wa + peer + other_socket)}
    assert got[(40000, 51000)].protocol == "whatsapp_call"
    assert "same UDP socket" in got[(40000, 51000)].evidence[1]
    assert got[(40002, 51000)].protocol == "stun"


def test_microsoft_attributes_name_teams_and_ordinary_ice_does_not() -> None:
    for at, name in ((0x8054, "CANDIDATE-IDENTIFIER"), (0x8055, "MS-SERVICE-QUALITY"),
                     (0x8070, "MS-IMPLEMENTATION-VERSION"), (0x8095, "MS-MULTIPLEXED-TURN-SESSION-ID")):
        v = one_verdict(_app_call(attr(at, os.urandom(4)), method=0x0001))
        assert (v.klass, v.protocol, v.confidence) == ("voip", "teams_call", "confirmed"), hex(at)
        assert any(name in e and "Microsoft" in e for e in v.evidence)
    # ICE attributes every WebRTC client sends (ICE-CONTROLLING, PRIORITY, SOFTWARE) stay plain STUN
    ice = attr(0x802A, os.urandom(8)) + attr(0x0024, b"\x6e\x00\x1e\xff") + SOFTWARE
    assert one_verdict(_app_call(ice, method=0x0001)).protocol == "stun"


def test_a_tcp_start_judged_doomed_never_frames_stun_whatever_follows() -> None:
    """doomed() keeps only the length of a short TCP start: no continuation may make it frame STUN."""
    import random

    from tunnelwatch.classify.stun import MAGIC_COOKIE, STUN
    from tunnelwatch.classify.stun_wire import DOOMED, doomed

    rng = random.Random(13)
    cookie = MAGIC_COOKIE.to_bytes(4, "big")
    judged = 0
    for i in range(4000):
        head = bytearray(rng.randbytes(rng.randrange(DOOMED, 22)))
        if i % 4 == 1:
            head[0] &= 0x3F
            head[4:8] = cookie  # plain framing's cookie: never doomed
        elif i % 4 == 2:
            head[2] &= 0x3F
            head[0], head[1] = 0, 0x40  # RFC 4571 length 64 ...
            head[6:10] = cookie  # ... and the cookie of the framed message: never doomed
        if not doomed(bytes(head)):
            continue
        assert i % 4 not in (1, 2)  # a start with either framing's cookie in place is never doomed
        judged += 1
        for _ in range(3):
            tail = rng.randbytes(rng.randrange(0, 120))
            assert STUN._detect_framing(bytes(head) + tail, 0) == -1
    assert judged > 1000


def test_a_short_start_that_frames_no_stun_keeps_the_other_direction_and_a_later_start_open() -> None:
    """A client's 16-byte start that can frame no STUN is kept as its length only; the server's STUN
    still counts, and once the client's start passes 22 bytes the next segment is looked at afresh."""
    junk = b"\xff" * 16
    v = one_verdict([t(C, S, 40000, 3478, junk), t(S, C, 3478, 40000, stun(0x0001, os.urandom(12)))],
                    names=["stun"])
    assert (v.protocol, v.confidence) == ("stun", "heuristic")
    tid = os.urandom(12)
    v = one_verdict([t(C, S, 40001, 3478, junk), t(S, C, 3478, 40001, stun(0x0001, tid, SOFTWARE)),
                     t(C, S, 40001, 3478, junk),  # 32 bytes: dropped, the next segment starts afresh
                     t(C, S, 40001, 3478, stun(0x0101, tid, XOR_MAPPED))], names=["stun"])
    assert (v.protocol, v.confidence) == ("stun", "confirmed")
    v = one_verdict([t(C, S, 40002, 3478, junk), t(C, S, 40002, 3478, junk),
                     t(S, C, 3478, 40002, stun(0x0001, tid))], names=["stun"])
    assert v.protocol != "stun"  # 32 bytes of a start that framed nothing, none seen yet: not STUN


def test_short_starts_that_frame_no_stun_are_judged_without_the_whole_state(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual short TCP flow (16 bytes each way, then a retransmission): its starts can frame no STUN,
    so STUN keeps their lengths in a 4-tuple, never builds its full state, and rejects at 22 bytes."""
    from tunnelwatch.classify import stun as stun_mod
    from tunnelwatch.classify.engine import Engine
    from tunnelwatch.classify.packet import parse_ip

    made: list[object] = []
    real = stun_mod._State
    monkeypatch.setattr(stun_mod, "_State", lambda *a, **k: made.append(1) or real(*a, **k))
    e = Engine([stun_mod.STUN()], budget=24)
    junk = b"\xff" * 16
    steps = [(t(C, S, 40000, 5555, junk), (2 + 16, -1)), (t(S, C, 5555, 40000, junk), (2 + 16, 2 + 16)),
             (t(S, C, 5555, 40000, junk), None)]  # the server's stream reaches 32 bytes: rejected
    for i, (p, framing) in enumerate(steps):
        pkt = parse_ip(bytes(p), 1.0 + i)
        assert pkt is not None
        flow = e.process(pkt)
        if framing is None:
            assert not flow.active and "stun" not in flow.state
        else:
            assert flow.state["stun"] == (b"", b"", *framing)
    assert not made
