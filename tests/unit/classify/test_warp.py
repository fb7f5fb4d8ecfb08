"""Cloudflare WARP's modified WireGuard ("warp"): reserved-byte client ids and the 0xC1-0xC4 variant."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, run_engine

C, S = "192.0.2.10", "162.159.192.7"
I_IDX, R_IDX = 0x01020304, 0x0A0B0C0D
CID = b"\x02\x78\x00"


def le(n: int, size: int = 4) -> bytes:
    return n.to_bytes(size, "little")


def u(src: str, dst: str, b: bytes) -> IP:
    sp, dp = (40000, 2408) if src == C else (2408, 40000)
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def std(mtype: int, reserved: bytes, body: bytes) -> bytes:
    return bytes([mtype]) + reserved + body


def test_reserved_client_id_handshake_confirmed_as_warp() -> None:
    init = std(1, CID, le(I_IDX) + os.urandom(140))
    resp = std(2, CID, le(R_IDX) + le(I_IDX) + os.urandom(80))
    v = one_verdict([u(C, S, init), u(S, C, resp)])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "warp", "confirmed")
    assert any("client id" in e for e in v.evidence)


def test_server_reply_with_zero_reserved_still_warp() -> None:
    init = std(1, CID, le(I_IDX) + os.urandom(140))
    resp = std(2, bytes(3), le(R_IDX) + le(I_IDX) + os.urandom(80))
    v = one_verdict([u(C, S, init), u(S, C, resp)])
    assert (v.protocol, v.confidence) == ("warp", "confirmed")


def test_ordinary_wireguard_unchanged() -> None:
    init = std(1, bytes(3), le(I_IDX) + os.urandom(140))
    resp = std(2, bytes(3), le(R_IDX) + le(I_IDX) + os.urandom(80))
    v = one_verdict([u(C, S, init), u(S, C, resp)])
    assert (v.protocol, v.confidence) == ("wireguard", "confirmed")
    assert not any("client id" in e for e in v.evidence)


def test_changing_reserved_bytes_or_wrong_sizes_reject() -> None:
    pkts = [u(C, S, std(4, CID, le(R_IDX) + le(i, 8) + os.urandom(48))) for i in range(2)]
    pkts.append(u(C, S, std(4, b"\x09\x09\x09", le(R_IDX) + le(5, 8) + os.urandom(48))))
    v = one_verdict(pkts)
    assert v.protocol not in ("warp", "wireguard")
    v = one_verdict([u(C, S, std(1, CID, le(I_IDX) + os.urandom(150)))])
    assert v.protocol not in ("warp", "wireguard")


def c_variant(client_data_idx: bytes | None = None, cid: bytes = CID) -> list[IP]:
    s_idx = b"\x68\x84\xee\x00"
    pkts = [u(C, S, b"\xc1\x00\x00\x00" + os.urandom(190)),
            u(S, C, b"\xc2" + cid + s_idx + os.urandom(770))]
    idx = s_idx if client_data_idx is None else client_data_idx
    pkts += [u(C, S, b"\xc4" + cid + idx + le(i, 8) + os.urandom(68)) for i in range(1, 3)]
    return pkts


def test_cloudflare_client_variant_confirmed() -> None:
    v = one_verdict(c_variant())
    assert (v.protocol, v.confidence) == ("warp", "confirmed")


def test_cloudflare_client_variant_wrong_index_is_only_heuristic() -> None:
    v = one_verdict(c_variant(client_data_idx=b"\x01\x02\x03\x04"))
    assert v.protocol != "warp" or v.confidence != "confirmed"


def test_quic_initials_are_not_warp() -> None:
    client = b"\xc1\x00\x00\x00\x01\x08" + os.urandom(1194)
    server = b"\xc2\x00\x00\x00\x01\x00\x08" + os.urandom(200)
    handshake = b"\xe1\x00\x00\x00\x01" + os.urandom(300)
    for _, v in run_engine([u(C, S, client), u(S, C, server), u(S, C, handshake)]):
        assert v.protocol != "warp"


@pytest.mark.parametrize("payload", [os.urandom(150), b"\xc4\x01\x02\x03" + os.urandom(100)])
def test_random_and_midstream_c4_not_warp(payload: bytes) -> None:
    for _, v in run_engine([u(C, S, payload), u(S, C, os.urandom(100))]):
        assert v.protocol != "warp"


def test_fuzz_never_raises() -> None:
    rnd = random.Random(65)
    seeds = [b"\xc1\x00\x00\x00" + os.urandom(190), b"\xc2" + CID + os.urandom(100),
             std(1, CID, le(I_IDX) + os.urandom(140)), std(4, CID, le(R_IDX) + le(3, 8) + os.urandom(48))]

    def raws() -> Iterator[bytes]:
        for i in range(2000):
            data = mutate(rnd, seeds)
            yield bytes(u(C, S, data) if i % 3 else u(S, C, data))

    assert feed_raw(["wireguard"], raws()).classifier_errors == 0
