"""Subscriber address privacy: clear, keyed-hash pseudonyms, omission; only subscriber addresses touched."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from pathlib import Path

import pytest

from tunnelwatch.report.privacy import Pseudonymizer, load_or_create_key

KEY = bytes(range(32))
FLOW: dict[str, object] = {"src": "192.168.1.10", "sport": 40000, "dst": "203.0.113.10", "dport": 1194}


def test_hash_is_keyed_stable_and_canonical() -> None:
    p = Pseudonymizer("hash", KEY)
    h = p.addr("192.168.1.10")
    assert h is not None and re.fullmatch(r"h:[0-9a-f]{16}", h)
    assert p.addr("192.168.1.10") == h
    assert p.addr("2001:db8::1") == p.addr("2001:0db8:0:0::0001"), "one address, one pseudonym"
    assert p.addr("192.168.1.11") != h
    assert Pseudonymizer("hash", KEY[::-1]).addr("192.168.1.10") != h, "another key, another pseudonym"
    want = hmac.new(KEY, b"192.168.1.10", hashlib.sha256).hexdigest()[:16]
    assert h == "h:" + want


def test_hash_does_not_leak_the_address_without_the_key() -> None:
    p = Pseudonymizer("hash", KEY)
    h = p.addr("10.0.0.7")
    assert h is not None and "10.0.0.7" not in h
    # the obvious dictionary attack (unkeyed hashes of every candidate) finds nothing
    unkeyed = {hashlib.sha256(str(ipaddress.IPv4Address(0x0A000000 + i)).encode()).hexdigest()[:16]
               for i in range(256)}
    assert h[2:] not in unkeyed
    assert "KEY" not in repr(p) and KEY.hex() not in repr(p) and str(KEY) not in repr(p)


def test_modes_clear_and_omit() -> None:
    assert Pseudonymizer("clear", None).addr("192.168.1.10") == "192.168.1.10"
    assert Pseudonymizer("omit", None).addr("192.168.1.10") is None


def test_only_subscriber_networks_are_touched() -> None:
    p = Pseudonymizer("hash", KEY, subscriber_nets=["192.168.0.0/16", "fd00::/8"])
    out = p.apply(FLOW)
    assert out["dst"] == "203.0.113.10" and out["sport"] == 40000
    assert out["src"] != "192.168.1.10" and str(out["src"]).startswith("h:")
    assert FLOW["src"] == "192.168.1.10", "apply returns a copy"
    assert p.addr("fd00::5") != "fd00::5" and p.addr("2001:db8::5") == "2001:db8::5"
    assert p.addr("garbage") != "garbage", "unparsable values are treated as sensitive"
    omit = Pseudonymizer("omit", None, subscriber_nets=["192.168.0.0/16"]).apply(FLOW)
    assert omit["src"] is None and omit["dst"] == "203.0.113.10"


@pytest.mark.parametrize(("mode", "key"), [("hash", None), ("hash", b"short"), ("scramble", KEY)])
def test_bad_settings_are_refused(mode: str, key: bytes | None) -> None:
    with pytest.raises(ValueError):
        Pseudonymizer(mode, key)


def test_key_file_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "privacy.key"
    k1 = load_or_create_key(path)
    assert len(k1) == 32 and os.stat(path).st_mode & 0o077 == 0
    assert load_or_create_key(path) == k1
    path.write_bytes(b"tiny")
    with pytest.raises(ValueError, match="shorter"):
        load_or_create_key(path)
