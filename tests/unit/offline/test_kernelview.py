"""The daemon's view of a capture (kernelview.py, `classify --inline`): which packets the kernel rules queue,
and what the engine decides from them, on crafted packets whose queueing is known."""

from __future__ import annotations

import random
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw

from support.wgcraft import awg_session, wg_session
from tunnelwatch.classify.engine import INLINE_BUDGET
from tunnelwatch.classify.packet import Packet, parse_ip
from tunnelwatch.inline import firewall
from tunnelwatch.offline.kernelview import inline_records

C, S = "192.0.2.10", "198.51.100.7"


def _pkts(frames: list[ScapyPacket], step: float = 0.001) -> list[Packet]:
    out = []
    for i, f in enumerate(frames):
        p = parse_ip(bytes(f), 1000.0 + i * step)
        assert p is not None
        out.append(p)
    return out


def _one(frames: list[ScapyPacket], step: float = 0.001) -> dict[str, Any]:
    [rec] = inline_records("x.pcap", _pkts(frames, step))
    return rec


def _tcp(flags: str, data: bytes = b"", up: bool = True, seq: int = 1) -> ScapyPacket:
    ip = IP(src=C, dst=S) / TCP(sport=40000, dport=4443, flags=flags, seq=seq) if up \
        else IP(src=S, dst=C) / TCP(sport=4443, dport=40000, flags=flags, seq=seq)
    return ip / Raw(data) if data else ip


def test_payloadless_tcp_skips_the_queue_and_tiny_payload_does_not() -> None:
    frames = [_tcp("S"), _tcp("SA", up=False), _tcp("A")]
    frames += [_tcp("A", up=False) for _ in range(20)]  # ACK inflation before the first data
    frames += [_tcp("PA", b"\x00"), _tcp("PA", b"\x2a\x38", up=False), _tcp("R")]
    rec = _one(frames)
    assert rec["packets"] == len(frames)
    assert rec["queued"] == 2  # the 1- and 2-byte segments; not the handshake, the ACKs or the reset


def test_data_in_a_syn_is_queued() -> None:  # TCP Fast Open
    rec = _one([_tcp("S", b"GET / HTTP/1.1\r\n\r\n"), _tcp("SA", up=False), _tcp("A")])
    assert rec["queued"] == 1


def test_an_unsettled_flow_is_queued_again_in_later_windows() -> None:
    rng = random.Random(7)
    frames = [IP(src=C, dst=S) / UDP(sport=41000, dport=42000) / Raw(rng.randbytes(90)) for _ in range(100)]
    rec = _one(frames)
    assert rec["klass"] == "unknown"
    first = firewall.window(INLINE_BUDGET)
    later = sum(hi - lo + 1 for lo, hi in firewall.LATER_WINDOWS if hi <= 100)
    assert rec["queued"] == first + later, (rec["queued"], first, later)


def test_a_settled_flow_is_left_to_the_kernel() -> None:
    rec = _one(wg_session(random.Random(1), data=30))
    assert (rec["klass"], rec["protocol"], rec["confidence"]) == ("vpn_tunnel", "wireguard", "confirmed")
    assert rec["queued"] < 6 < rec["packets"]  # decided on the handshake, not a packet more


def test_junk_past_the_first_window_still_shows_the_handshake() -> None:
    # 60 junk datagrams push the WireGuard handshake past the first window (48 packets counted): the
    # handshake-sized rule still queues the initiation and the response
    rec = _one(wg_session(random.Random(2), junk_count=60, data=4))
    assert (rec["klass"], rec["protocol"]) == ("vpn_tunnel", "wireguard"), rec
    assert rec["queued"] < rec["packets"]


def test_amneziawg_behind_junk_is_found_in_a_later_window() -> None:
    # padded handshake sizes escape the handshake-sized rule and 80 junk datagrams the first window: the
    # transport data in a later window gives the session away
    frames = awg_session(random.Random(3), jc=80, jmin=40, jmax=1200, s1=37, s2=71,
                         h=(0x1A2B3C4D, 0x5E6F7081, 0x92A3B4C5, 0xD6E7F809), data=260)
    rec = _one(frames)
    assert rec["klass"] == "vpn_tunnel" and rec["protocol"] == "amneziawg", rec
    assert rec["queued"] < rec["packets"] // 4


def test_a_lan_host_s_low_ttl_decoy_is_queued_but_not_classified_as_inline() -> None:
    """A capture of zapret-style desync from a private LAN address: the HTTP decoy (TTL 3, the real
    first segment's sequence number) does not decide the connection; the OpenVPN resets do. With an
    honest TTL the same HTTP request decides it benign, as the daemon would."""
    lan, server, sid = "192.168.1.10", "203.0.113.2", bytes.fromhex("1122334455667788")

    def frames(decoy_ttl: int) -> list[ScapyPacket]:
        up = IP(src=lan, dst=server) / TCP(sport=40000, dport=1194, flags="PA", seq=1000)
        down = IP(src=server, dst=lan) / TCP(sport=1194, dport=40000, flags="PA", seq=5000)
        reset = b"\x38" + sid + b"\x00" + b"\x00\x00\x00\x00"
        answer = b"\x40" + bytes(8) + b"\x01" + b"\x00\x00\x00\x00" + sid + b"\x00\x00\x00\x00"
        decoy = IP(src=lan, dst=server, ttl=decoy_ttl) / TCP(sport=40000, dport=1194, flags="PA", seq=1000)
        return [decoy / Raw(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n"),
                up / Raw(len(reset).to_bytes(2, "big") + reset),
                down / Raw(len(answer).to_bytes(2, "big") + answer)]

    rec = _one(frames(3))
    assert (rec["klass"], rec["protocol"], rec["queued"]) == ("vpn_tunnel", "openvpn", 3), rec
    honest = _one(frames(64))
    assert (honest["klass"], honest["protocol"]) == ("benign", "http"), honest
