"""ISP side of box provisioning: the key that images trust and the detached signatures they check.

A box accepts tunnelwatch-provision.yaml only with tunnelwatch-provision.yaml.sig beside it: one line,
base64 of the Ed25519 signature over SIG_CONTEXT + the exact file bytes, by a key listed in the image's
/usr/lib/tunnelwatch/provisioning.pub (image/README.md "Provisioning file"). The box-side check lives in
image/overlay/common/usr/lib/tunnelwatch/provision.py, which runs before tunnelwatch is configured and
so does not import this module; tests/image/test_provision.py holds the two to the same format.
`tunnelwatch provision keygen|sign|verify` (also `tunnelwatch-provision`).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import sys
from pathlib import Path

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tunnelwatch.policy.regdoc import load_private_key, new_private_key, public_b64

#: must equal provision.py's SIG_CONTEXT: a registry signature (another context) cannot pass as this
SIG_CONTEXT = b"tunnelwatch provision v1\x00"
SUFFIX = ".sig"


def sign_bytes(key: Ed25519PrivateKey, raw: bytes) -> bytes:
    """The .sig file content for these exact provisioning-file bytes."""
    return base64.b64encode(key.sign(SIG_CONTEXT + raw)) + b"\n"


def verify_bytes(raw: bytes, sig_text: bytes, key: Ed25519PublicKey) -> bool:
    """Whether sig_text (a .sig file's content) signs raw under key; never raises on bad input."""
    try:
        key.verify(base64.b64decode(sig_text.strip(), validate=True), SIG_CONTEXT + raw)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _precheck(raw: bytes) -> str | None:
    """A reason not to sign (the box would refuse the file anyway), or None."""
    try:
        doc = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
        return f"not UTF-8 YAML: {str(exc)[:200]}"
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("device_id"), str):
        return "not a provisioning file (needs version: 1 and device_id)"
    return None


def main(argv: list[str] | None = None) -> int:
    """`tunnelwatch provision keygen|sign|verify` (also `tunnelwatch-provision`)."""
    ap = argparse.ArgumentParser(prog="tunnelwatch provision",
                                 description="Sign and check tunnelwatch provisioning files.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    kg = sub.add_parser("keygen", help="write a private key (PEM, 0600); print the public key for the image")
    kg.add_argument("--out", required=True)
    sg = sub.add_parser("sign", help="write FILE.sig beside a provisioning file")
    sg.add_argument("--key", required=True)
    sg.add_argument("file")
    vf = sub.add_parser("verify", help="check FILE against FILE.sig and a public key")
    vf.add_argument("--public-key", required=True, help="base64, as in provisioning.pub")
    vf.add_argument("file")
    a = ap.parse_args(argv)
    if a.cmd == "keygen":
        print(public_b64(new_private_key(a.out)))
        return 0
    raw = Path(a.file).read_bytes()
    if a.cmd == "sign":
        why = _precheck(raw)
        if why:
            print(f"{a.file}: {why}", file=sys.stderr)
            return 78
        Path(a.file + SUFFIX).write_bytes(sign_bytes(load_private_key(a.key), raw))
        print(f"wrote {a.file}{SUFFIX}")
        return 0
    try:
        pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(a.public_key.strip(), validate=True))
    except (binascii.Error, ValueError):
        print("error: --public-key must be base64 of 32 raw Ed25519 bytes", file=sys.stderr)
        return 2
    try:
        sig = Path(a.file + SUFFIX).read_bytes()
    except OSError as exc:
        print(f"rejected: {exc}", file=sys.stderr)
        return 1
    if not verify_bytes(raw, sig, pub):
        print("rejected: bad signature", file=sys.stderr)
        return 1
    print(f"ok: {a.file} signed by {a.public_key.strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
