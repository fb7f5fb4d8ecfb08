"""IKE Vendor IDs: the vendor table, the clear-payload walk, and the vendor in ipsec's evidence."""

from __future__ import annotations

import hashlib
import os
import random
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import one_verdict
from tunnelwatch.classify.ikevendor import vendor_ids, vendor_of, vendors

C, S = "192.0.2.10", "198.51.100.7"
ISPI, RSPI = bytes.fromhex("b64ef32131a48952"), bytes.fromhex("86babd3904886955")
# Check Point's fixed 20 bytes, then version bytes
CHECKPOINT = bytes.fromhex("f4ed19e0c114eb516faaac0ee37daf2807b4381f" "00000001000000010000000a")
FORTICLIENT = hashlib.md5(b"Fortinet Endpoint Control").digest()  # the VID is an MD5 by definition
DPD = bytes.fromhex("afcad71368a1f1c96b8696fc77570100")  # RFC 3706 DPD: a feature, not a vendor


def ike_with(vids: list[bytes], *, version: int = 2, rspi: bytes = bytes(8), flags: int = 0x08,
             exch: int = 34, lead: bool = True) -> bytes:
    """An IKE message: (an SA-like payload when `lead`), then one Vendor ID payload per value."""
    vid_type = 43 if version == 2 else 13
    parts: list[tuple[int, bytes]] = []
    if lead:
        # fixed bytes: the parametrized cases build messages at import, and make_samples.py needs
        # imports to draw nothing from its seeded generator
        parts.append((33 if version == 2 else 1, bytes(range(40))))
    parts += [(vid_type, v) for v in vids]
    body = b""
    for i, (_, data) in enumerate(parts):
        nxt = parts[i + 1][0] if i + 1 < len(parts) else 0
        body += struct.pack("!BBH", nxt, 0, 4 + len(data)) + data
    first = parts[0][0] if parts else 0
    return ISPI + rspi + struct.pack("!BBBBII", first, version << 4, exch, flags, 0, 28 + len(body)) + body


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_table_values_are_the_published_hashes() -> None:
    assert vendor_of(hashlib.md5(b"forticlient connect license").digest()) == "Fortinet FortiClient"
    assert vendor_of(hashlib.md5(b"strongSwan").digest()) == "strongSwan"
    assert vendor_of(CHECKPOINT) == "Check Point"
    assert vendor_of(b"FLEXVPN-SUPPORTED") == "Cisco FlexVPN"
    assert vendor_of(b"CISCO(COPYRIGHT)&Copyright (c) 2009 Cisco Systems, Inc.") == "Cisco"
    assert vendor_of(bytes.fromhex("1e2b516905991c7d7c96fcbfb587e46100000009")) == "Microsoft"
    # the truncated Check Point prefix alone, the generic DPD id and a near value name nobody
    assert vendor_of(CHECKPOINT[:19]) is None
    assert vendor_of(DPD) is None
    assert vendor_of(b"FLEXVPN-SUPPORTED!") is None


def test_walk_finds_vendor_ids_after_other_payloads() -> None:
    msg = ike_with([DPD, CHECKPOINT, FORTICLIENT, CHECKPOINT])
    assert vendor_ids(msg) == [DPD, CHECKPOINT, FORTICLIENT, CHECKPOINT]
    assert vendors(msg) == ["Check Point", "Fortinet FortiClient"]
    assert vendors(ike_with([CHECKPOINT], version=1, flags=0, exch=2)) == ["Check Point"]


@pytest.mark.parametrize("msg", [
    ike_with([CHECKPOINT], version=1, flags=1, exch=2),  # IKEv1 encrypted: the chain is ciphertext
    ike_with([CHECKPOINT], exch=35, rspi=RSPI),  # IKEv2 IKE_AUTH: inside SK
    ike_with([CHECKPOINT], version=3),
    ike_with([CHECKPOINT])[:-3],  # cut short: the VID runs past the end
    b"",
])
def test_vendor_ids_not_read_where_not_in_clear_or_broken(msg: bytes) -> None:
    assert vendors(msg) == []


def test_zero_length_payload_loop_ends() -> None:
    hdr = ISPI + bytes(8) + struct.pack("!BBBBII", 43, 0x20, 34, 8, 0, 36)
    msg = hdr + struct.pack("!BBH", 43, 0, 0) + bytes(4)
    assert vendor_ids(msg) == []


def test_fuzz_never_raises() -> None:
    rnd = random.Random(4)
    seed = ike_with([CHECKPOINT, FORTICLIENT])
    for _ in range(3000):
        b = bytearray(seed)
        for _ in range(rnd.randrange(1, 6)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        vendors(bytes(b[: rnd.randrange(len(b) + 1)]))


def test_ipsec_evidence_names_both_sides_vendors() -> None:
    v = one_verdict([u(C, S, 500, 500, ike_with([FORTICLIENT])),
                     u(S, C, 500, 500, ike_with([CHECKPOINT, DPD], rspi=RSPI, flags=0x20))])
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "ike", "confirmed")
    assert "vendor ID: Fortinet FortiClient (initiator)" in v.evidence
    assert "vendor ID: Check Point (responder)" in v.evidence


def test_unknown_vendor_ids_add_nothing() -> None:
    v = one_verdict([u(C, S, 500, 500, ike_with([DPD, os.urandom(16)])),
                     u(S, C, 500, 500, ike_with([os.urandom(16)], rspi=RSPI, flags=0x20))])
    assert (v.protocol, v.confidence) == ("ike", "confirmed")
    assert not [e for e in v.evidence if e.startswith("vendor ID")]
