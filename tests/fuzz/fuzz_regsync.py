"""Harness: registry sync's document verification and application (regsync.verify_document / apply).

Byte 0 picks what the rest is: 0 a raw downloaded document (unauthenticated input: only Rejected may
escape); 1 a payload signed with the test key (reaches the checks behind the signature); 2 registry text
signed as a proper document and applied to a scratch state directory (only a SyncResult comes back).
"""

from __future__ import annotations

import base64
import contextlib
import json

from fuzz._fuzzlib import fuzz_main, instrumented, scratch_dir

with instrumented():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tunnelwatch.policy.regsync import (
        FORMAT,
        SIG_CONTEXT,
        STATE_FILE,
        RegistrySync,
        Rejected,
        sign_document,
        verify_document,
    )

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = base64.b64encode(KEY.public_key().public_bytes_raw()).decode()
_ROOT = scratch_dir("regsync")
SYNC = RegistrySync(url="https://registry.invalid/r.json", public_key=PUB, ca_file=None,
                    state_dir=str(_ROOT / "state"), registry_path=str(_ROOT / "registry.yaml"),
                    device_id="box1", accept_unscoped=True)  # scope is not what this harness explores


def envelope(raw: bytes) -> bytes:
    """A well-formed envelope around arbitrary payload bytes, signed with the test key."""
    sig = KEY.sign(SIG_CONTEXT + raw)
    return json.dumps({"format": FORMAT, "payload": base64.b64encode(raw).decode(),
                       "signature": base64.b64encode(sig).decode()}).encode()


def one_input(data: bytes) -> None:
    """Verify (and for modes 1-2 apply) one document."""
    if not data:
        return
    mode, rest = data[0] % 3, data[1:]
    if mode == 0:
        with contextlib.suppress(Rejected):
            verify_document(rest, SYNC.key)
        return
    if mode == 1:
        body = envelope(rest)
    else:
        try:
            text = rest.decode("utf-8")
        except UnicodeDecodeError:
            text = rest.decode("latin-1")
        body = sign_document(KEY, 1 + len(rest), text, issued="2026-11-23T00:00:00Z")
    (_ROOT / "state" / STATE_FILE).unlink(missing_ok=True)
    res = SYNC.apply(body)
    assert isinstance(res.message, str) and res.message


if __name__ == "__main__":
    fuzz_main(one_input)
