"""Provisioning-file signatures, ISP side: what `sign` writes verifies, anything else does not, and the
tool refuses to sign what no box would accept. (The box side: tests/image/test_provision.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tunnelwatch.isp.provsign import main, public_b64, sign_bytes, verify_bytes

DOC = b"version: 1\ndevice_id: cpe-1\n"


def test_signature_verifies_only_for_the_same_bytes_and_key() -> None:
    key = Ed25519PrivateKey.generate()
    sig = sign_bytes(key, DOC)
    assert verify_bytes(DOC, sig, key.public_key())
    assert not verify_bytes(DOC + b"\n", sig, key.public_key())
    assert not verify_bytes(DOC, sig, Ed25519PrivateKey.generate().public_key())


@pytest.mark.parametrize("sig", [b"", b"!!", b"AAAA", "é".encode(), b"A" * 100_000])
def test_garbage_signature_is_false_not_an_exception(sig: bytes) -> None:
    assert not verify_bytes(DOC, sig, Ed25519PrivateKey.generate().public_key())


def test_cli_keygen_sign_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pem = tmp_path / "k.pem"
    assert main(["keygen", "--out", str(pem)]) == 0
    pub = capsys.readouterr().out.strip()
    f = tmp_path / "tunnelwatch-provision.yaml"
    f.write_bytes(DOC)
    assert main(["sign", "--key", str(pem), str(f)]) == 0
    assert main(["verify", "--public-key", pub, str(f)]) == 0
    f.write_bytes(DOC.replace(b"cpe-1", b"cpe-2"))
    assert main(["verify", "--public-key", pub, str(f)]) == 1
    assert main(["verify", "--public-key", "not-a-key", str(f)]) == 2
    f.write_bytes(b"- not: a provisioning file\n")
    assert main(["sign", "--key", str(pem), str(f)]) == 78
    assert len(public_b64(Ed25519PrivateKey.generate())) == 44
