"""The signed registry document: its format, signing, verification, scope and validity window.

Document (docs/registry-sync.md): JSON {"format": FORMAT, "payload": base64(payload JSON), "signature":
base64(Ed25519 over SIG_CONTEXT + payload bytes)}; the payload is {"version": int, "issued": RFC 3339,
"registry": registry YAML text, and optionally "device" (one box) or "group" (the boxes configured with
that group), "expires": RFC 3339}. Nothing inside the payload is trusted before the signature checks.
regsync.py fetches and applies documents; it re-exports these names, its historical home.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = "tunnelwatch-registry/1"
#: Domain separation: a signature made for anything else the ISP signs cannot pass as a registry.
SIG_CONTEXT = b"tunnelwatch registry v1\x00"
#: a registry is "stale" (reported, health degraded) this close to its expiry, or a quarter of its
#: validity when that is shorter, so a document re-signed every few hours is not always "near expiry"
STALE_MARGIN = 86_400.0


class Rejected(Exception):
    """A document or download that must not be applied."""


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """The ISP public key from its config form: base64 of the 32 raw bytes."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("registry public key must be base64 of 32 raw Ed25519 bytes") from exc


def new_private_key(path: str) -> Ed25519PrivateKey:
    """A fresh Ed25519 signing key written to `path` (PKCS#8 PEM, 0600, never over an existing file)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def load_private_key(path: str) -> Ed25519PrivateKey:
    """The ISP's Ed25519 signing key from a PEM file (exits with a message if it is another kind)."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SystemExit(f"{path}: not an Ed25519 private key")
    return key


def public_b64(key: Ed25519PrivateKey) -> str:
    """The public key in its config form: base64 of the 32 raw bytes."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def rfc3339(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC to the second (the document's time form)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: object) -> float | None:
    """Unix seconds from an RFC 3339 time with a zone (None when it is not one)."""
    if not isinstance(text, str) or len(text) > 40:
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


def sign_document(key: Ed25519PrivateKey, version: int, registry_text: str, *, issued: str | None = None,
                  device: str | None = None, group: str | None = None, expires: str | None = None) -> bytes:
    """The signed JSON document for this registry text and version, for one device or one group."""
    if device and group:
        raise ValueError("a registry document names a device or a group, not both")
    payload: dict[str, object] = {"version": version, "registry": registry_text,
                                  "issued": issued or rfc3339(time.time())}
    for name, value in (("device", device), ("group", group), ("expires", expires)):
        if value:
            payload[name] = value
    raw = json.dumps(payload, sort_keys=True).encode()
    sig = key.sign(SIG_CONTEXT + raw)
    return json.dumps({"format": FORMAT, "payload": base64.b64encode(raw).decode(),
                       "signature": base64.b64encode(sig).decode()}, indent=1).encode() + b"\n"


def verify_document(body: bytes, key: Ed25519PublicKey, *, now: float | None = None) -> dict[str, object]:
    """The verified payload; raise Rejected on malformed, truncated, badly signed or expired documents.

    Whom the document is for is check_scope's business: verify, then check_scope (RegistrySync.apply does).
    """
    try:
        env = json.loads(body)
    # ValueError also covers numbers past the int-digits limit; RecursionError, absurdly deep nesting:
    # this runs before the signature check, so anyone on the path can send either
    except (ValueError, RecursionError) as exc:
        raise Rejected(f"document is not complete JSON (truncated?): {str(exc)[:200]}") from exc
    if not isinstance(env, dict) or env.get("format") != FORMAT:
        raise Rejected(f"document is not a {FORMAT} envelope")
    try:
        raw = base64.b64decode(str(env.get("payload", "")), validate=True)
        sig = base64.b64decode(str(env.get("signature", "")), validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII text
        raise Rejected("payload or signature is not valid base64") from exc
    try:
        key.verify(sig, SIG_CONTEXT + raw)
    except InvalidSignature:
        raise Rejected("bad signature: not signed by the configured ISP key (tampered?)") from None
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise Rejected(f"signed payload is not JSON: {str(exc)[:200]}") from exc
    if not isinstance(payload, dict):
        raise Rejected("signed payload is not an object")
    v, reg = payload.get("version"), payload.get("registry")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1 or not isinstance(reg, str):
        raise Rejected("signed payload needs version (integer >= 1) and registry (text)")
    try:
        reg.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate from a "\ud800" escape cannot be written out
        raise Rejected("signed registry text is not valid Unicode") from exc
    _check_window(payload, time.time() if now is None else now)
    return payload


def _check_window(payload: dict[str, object], now: float) -> None:
    for name in ("device", "group"):
        value = payload.get(name)
        if value is not None and not (isinstance(value, str) and 0 < len(value) <= 128):
            raise Rejected(f"signed payload: {name} must be a name (text)")
    if payload.get("device") is not None and payload.get("group") is not None:
        raise Rejected("signed payload names both a device and a group")
    issued, expires = parse_time(payload.get("issued")), parse_time(payload.get("expires"))
    if "issued" in payload and issued is None:
        raise Rejected("signed payload: issued is not an RFC 3339 time")
    if "expires" in payload:
        if expires is None:
            raise Rejected("signed payload: expires is not an RFC 3339 time")
        if issued is not None and expires <= issued:
            raise Rejected("signed payload expires before it was issued")
        if now >= expires:
            raise Rejected(f"document expired at {payload['expires']} (the box's clock: {rfc3339(now)}): "
                           "the ISP must re-sign it")


def check_scope(payload: dict[str, object], *, device_id: str | None, group: str | None,
                accept_unscoped: bool) -> None:
    """Rejected unless the document names this device, or this box's group, or (when allowed) neither."""
    device, grp = payload.get("device"), payload.get("group")
    if device is not None:
        if device_id is None or device != device_id:
            raise Rejected(f"document is for device {str(device)[:64]!r}, not this one ({device_id!r})")
    elif grp is not None:
        if group is None or grp != group:
            raise Rejected(f"document is for group {str(grp)[:64]!r}, not this box's "
                           f"({group!r}, report.registry_sync.group)")
    elif not accept_unscoped:
        raise Rejected("document names no device and no group (signed for any box); refused unless "
                       "report.registry_sync.accept_unscoped is true")


def staleness(expires: float | None, issued: float | None, now: float) -> str | None:
    """Why the registry in force is stale (expired, or near its expiry), or None while it is fresh."""
    if expires is None:
        return None
    if now >= expires:
        return f"registry expired at {rfc3339(expires)}: the ISP has not sent a newer one"
    margin = STALE_MARGIN if issued is None else min(STALE_MARGIN, max(0.0, expires - issued) / 4)
    if expires - now <= margin:
        return f"registry expires at {rfc3339(expires)} ({(expires - now) / 3600:.1f} h left)"
    return None
