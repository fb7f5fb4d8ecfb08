"""QUIC Initial decryption against the RFC 9001 / RFC 9369 Appendix A client Initial, and hostile input."""

from __future__ import annotations

import random

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tunnelwatch.classify.quicname import (
    V1,
    V2,
    InitialState,
    Keys,
    client_keys,
    crypto_prefix,
    initial_hello,
    initial_version,
)

DCID = bytes.fromhex("8394c8f03e515708")
# RFC 9001 A.2 / RFC 9369 A.2: the client's CRYPTO frame (a ClientHello for example.com, ALPN "alpn"),
# padded with PADDING frames to a 1162-byte payload; packet number 2 in 4 bytes
CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff")
PAYLOAD = CRYPTO_FRAME + bytes(1162 - len(CRYPTO_FRAME))
V1_HEADER = bytes.fromhex("c300000001088394c8f03e5157080000449e00000002")
V2_HEADER = bytes.fromhex("d36b3343cf088394c8f03e5157080000449e00000002")
# what the RFCs give for the protected packets: header, first ciphertext bytes, last bytes
V1_PROTECTED_START = bytes.fromhex("c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11")
V1_PROTECTED_END = bytes.fromhex("7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
                                 "e221af44860018ab0856972e194cd934")
V2_PROTECTED_START = bytes.fromhex("d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485")
V2_PROTECTED_END = bytes.fromhex("6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
                                 "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
                                 "a18b2faa745b6fe189cf772a9f84cbfc")


def protect(keys: Keys, header: bytes, payload: bytes, pn_len: int = 4) -> bytes:
    """RFC 9001 5.3/5.4: AEAD over payload with the header as AAD, then header protection."""
    pn = header[-pn_len:]
    nonce = bytearray(keys.iv)
    for i, b in enumerate(pn):
        nonce[12 - pn_len + i] ^= b
    ct = AESGCM(keys.key).encrypt(bytes(nonce), payload, header)
    pn_off = len(header) - pn_len
    sample = ct[4 - pn_len:4 - pn_len + 16]
    mask = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor().update(sample)
    out = bytearray(header + ct)
    out[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        out[pn_off + i] ^= mask[1 + i]
    return bytes(out)


def initial(version: int, dcid: bytes, payload: bytes, pn: int = 0) -> bytes:
    """A client Initial of `version` carrying `payload` (packet number in 4 bytes)."""
    keys = client_keys(version, dcid)
    assert keys is not None
    first = 0xC3 if version != V2 else 0xD3
    length = len(payload) + 4 + 16
    header = (bytes([first]) + version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid + b"\x00\x00"
              + (0x4000 | length).to_bytes(2, "big") + pn.to_bytes(4, "big"))
    return protect(keys, header, payload)


def test_rfc9001_client_keys() -> None:
    k = client_keys(V1, DCID)
    assert k is not None
    assert (k.key.hex(), k.iv.hex(), k.hp.hex()) == (
        "1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c", "9f50449e04a0e810283a1e9933adedd2")


def test_rfc9369_client_keys() -> None:
    k = client_keys(V2, DCID)
    assert k is not None
    assert (k.key.hex(), k.iv.hex(), k.hp.hex()) == (
        "8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f", "45b95e15235d6f45a6b19cbcb0294ba9")


def test_rfc9001_client_initial_gives_example_com() -> None:
    k = client_keys(V1, DCID)
    assert k is not None
    pkt = protect(k, V1_HEADER, PAYLOAD)
    assert len(pkt) == 1200
    assert pkt.startswith(V1_PROTECTED_START) and pkt.endswith(V1_PROTECTED_END)
    st = InitialState()
    h = initial_hello(pkt, st)
    assert h is not None and h.sni == "example.com" and h.alpn == ("alpn",) and h.complete


def test_rfc9369_client_initial_gives_example_com() -> None:
    k = client_keys(V2, DCID)
    assert k is not None
    pkt = protect(k, V2_HEADER, PAYLOAD)
    assert pkt.startswith(V2_PROTECTED_START) and pkt.endswith(V2_PROTECTED_END)
    h = initial_hello(pkt, InitialState())
    assert h is not None and h.sni == "example.com"


def test_draft29_initial() -> None:
    assert initial_version(initial(0xFF00001D, DCID, PAYLOAD)) == 0xFF00001D
    h = initial_hello(initial(0xFF00001D, DCID, PAYLOAD), InitialState())
    assert h is not None and h.sni == "example.com"


def _crypto(off: int, data: bytes) -> bytes:
    return b"\x06" + (0x4000 | off).to_bytes(2, "big") + (0x4000 | len(data)).to_bytes(2, "big") + data


def test_hello_split_over_two_initials_and_out_of_order_frames() -> None:
    hello = CRYPTO_FRAME[4:]  # the handshake message inside the RFC's CRYPTO frame
    a, b, c = hello[:60], hello[60:120], hello[120:]
    # first datagram: the second fragment before the first, plus PING; second: the tail and an ACK
    p1 = initial(V1, DCID, b"\x01" + _crypto(60, b) + _crypto(0, a) + bytes(1000))
    st = InitialState()
    h = initial_hello(p1, st)
    assert h is not None and h.sni == "example.com" and not h.complete  # the SNI is early in the hello
    p2 = initial(V1, DCID, b"\x02\x00\x00\x00\x00" + _crypto(120, c) + bytes(1000), pn=1)
    h = initial_hello(p2, st)
    assert h is not None and h.complete and h.alpn == ("alpn",)
    assert crypto_prefix(st) == hello


def test_server_initial_and_other_packets_give_nothing() -> None:
    pkt = initial(V1, DCID, PAYLOAD)
    assert initial_hello(pkt[:600], InitialState()) is None  # cut: the length runs past the datagram
    tampered = bytearray(pkt)
    tampered[500] ^= 1
    assert initial_hello(bytes(tampered), InitialState()) is None  # the AEAD tag says no
    assert initial_version(b"\x40" + pkt[1:]) == 0  # short header
    assert initial_version(pkt[:1] + b"\x0a\x0a\x0a\x0a" + pkt[5:]) == 0  # grease version


def test_hostile_input_never_raises() -> None:
    rng = random.Random(9001)
    pkt = initial(V1, DCID, PAYLOAD)
    for _ in range(3000):
        n = rng.randrange(0, 1300)
        data = bytearray(rng.randbytes(n))
        if n > 5 and rng.random() < 0.7:
            data[:5] = pkt[:5]
        if rng.random() < 0.3:
            data = bytearray(pkt)
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        st = InitialState()
        initial_hello(bytes(data), st)
        assert len(st.fragments) <= 16


def test_hello_scattered_over_many_small_crypto_frames() -> None:
    """Chromium-style: dozens of CRYPTO frames, out of order, among PING and long PADDING runs; the SNI
    beyond a gap is still found (the hello's middle only comes in the next Initial)."""
    from test_tlsname import hello_msg

    hello = hello_msg(b"api.cloudflareclient.com", pad=900, sni_last=True)
    pieces = [(off, hello[off:off + 23]) for off in range(0, len(hello), 23)]
    rng = random.Random(7)
    first = [p for p in pieces if p[0] < 60 or p[0] >= 700]  # the middle goes in the second Initial
    rng.shuffle(first)
    payload = b"".join(b"\x01" + bytes(rng.randrange(0, 9)) + _crypto(o, d) for o, d in first)
    st = InitialState()
    h = initial_hello(initial(V1, DCID, payload + bytes(max(0, 1162 - len(payload)))), st)
    assert h is not None and h.sni == "api.cloudflareclient.com" and not h.complete
    rest = b"".join(_crypto(o, d) for o, d in pieces if 60 <= o < 700)
    h = initial_hello(initial(V1, DCID, rest + bytes(max(0, 1162 - len(rest))), pn=1), st)
    assert h is not None and h.complete and h.sni == "api.cloudflareclient.com"
    assert crypto_prefix(st) == hello
