"""Registry sync: only authentic, newer, valid documents replace the registry; everything else keeps it."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tunnelwatch.policy.regdoc import FORMAT, SIG_CONTEXT, Rejected, parse_time, rfc3339, staleness
from tunnelwatch.policy.registry import Registry
from tunnelwatch.policy.regsync import (
    STATE_FILE,
    RegistrySync,
    SyncResult,
    main,
    public_key_from_b64,
    sign_document,
    verify_document,
)

REG_V1 = "registrations:\n  - id: PTA-1\n    servers: [203.0.113.10]\n"
REG_V2 = REG_V1 + "  - id: PTA-2\n    servers: [192.0.2.0/28]\n"
BAD_REG = "registrations:\n  - id: PTA-9\n    servers: [not-an-address]\n"


def pub_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


@pytest.fixture
def isp() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def box(tmp_path: Path, isp: Ed25519PrivateKey) -> RegistrySync:
    (tmp_path / "registry.yaml").write_text(REG_V1)
    return RegistrySync(url="https://isp.example/reg.json", public_key=pub_b64(isp), ca_file=None,
                        state_dir=str(tmp_path / "state"), registry_path=str(tmp_path / "registry.yaml"),
                        device_id="box-1")


def reg_text(box: RegistrySync) -> str:
    return box.registry_path.read_text()


def test_good_update_applies_and_keeps_last_good(box: RegistrySync, isp: Ed25519PrivateKey) -> None:
    res = box.apply(sign_document(isp, 2, REG_V2, device="box-1"))
    assert res.ok and res.changed and res.version == 2, res.message
    assert reg_text(box) == REG_V2 and box.current_version() == 2
    assert box.registry_path.with_name("registry.yaml.last-good").read_text() == REG_V1
    assert [e.id for e in Registry.load(box.registry_path).entries] == ["PTA-1", "PTA-2"]
    assert not [p for p in box.registry_path.parent.iterdir() if p.name.startswith(".registry.yaml.")]
    again = box.apply(sign_document(isp, 2, REG_V2, device="box-1"))
    assert again.ok and not again.changed and "current" in again.message


def test_tampered_document_is_rejected(box: RegistrySync, isp: Ed25519PrivateKey) -> None:
    doc = json.loads(sign_document(isp, 5, REG_V2, device="box-1"))
    payload = json.loads(base64.b64decode(doc["payload"]))
    payload["registry"] = REG_V2.replace("192.0.2.0/28", "0.0.0.0/0")
    doc["payload"] = base64.b64encode(json.dumps(payload, sort_keys=True).encode()).decode()
    res = box.apply(json.dumps(doc).encode())
    assert not res.ok and "bad signature" in res.message
    assert reg_text(box) == REG_V1 and box.current_version() == 0


def test_signed_by_another_key_is_rejected(box: RegistrySync) -> None:
    res = box.apply(sign_document(Ed25519PrivateKey.generate(), 9, REG_V2, device="box-1"))
    assert not res.ok and "bad signature" in res.message and reg_text(box) == REG_V1


def test_replayed_older_and_reused_version_are_rejected(box: RegistrySync, isp: Ed25519PrivateKey) -> None:
    old = sign_document(isp, 3, REG_V1 + "  - id: PTA-OLD\n    servers: [198.51.100.1]\n", device="box-1")
    assert box.apply(sign_document(isp, 4, REG_V2, device="box-1")).ok
    res = box.apply(old)
    assert not res.ok and "not newer" in res.message and res.version == 3
    reused = box.apply(sign_document(isp, 4, REG_V1, device="box-1"))
    assert not reused.ok and "not newer" in reused.message
    assert reg_text(box) == REG_V2 and box.current_version() == 4


@pytest.mark.parametrize("cut", [1, 40, 0.5, -2])
def test_truncated_document_is_rejected(box: RegistrySync, isp: Ed25519PrivateKey, cut: float) -> None:
    doc = sign_document(isp, 2, REG_V2, device="box-1")
    body = doc[:int(len(doc) * cut)] if isinstance(cut, float) else doc[:cut]
    res = box.apply(body)
    assert not res.ok and reg_text(box) == REG_V1
    assert "truncated" in res.message or "signature" in res.message or "envelope" in res.message


def test_signed_but_invalid_registry_is_not_applied(box: RegistrySync, isp: Ed25519PrivateKey) -> None:
    res = box.apply(sign_document(isp, 7, BAD_REG, device="box-1"))
    assert not res.ok and "invalid" in res.message and "not-an-address" in res.message
    assert reg_text(box) == REG_V1 and box.current_version() == 0


def test_document_for_another_device_is_rejected(box: RegistrySync, isp: Ed25519PrivateKey) -> None:
    res = box.apply(sign_document(isp, 2, REG_V2, device="box-2"))
    assert not res.ok and "box-2" in res.message
    assert box.apply(sign_document(isp, 2, REG_V2, device="box-1")).ok


@pytest.mark.parametrize("payload", [
    {"version": 0, "registry": REG_V1}, {"version": True, "registry": REG_V1}, {"version": 2},
    {"version": "2", "registry": REG_V1}, [1, 2]])
def test_signed_payload_shape_is_checked(box: RegistrySync, isp: Ed25519PrivateKey, payload: object) -> None:
    raw = json.dumps(payload).encode()
    sig = isp.sign(b"tunnelwatch registry v1\x00" + raw)
    doc = {"format": "tunnelwatch-registry/1", "payload": base64.b64encode(raw).decode(),
           "signature": base64.b64encode(sig).decode()}
    res = box.apply(json.dumps(doc).encode())
    assert not res.ok and reg_text(box) == REG_V1


def test_signature_without_context_prefix_does_not_verify(isp: Ed25519PrivateKey, box: RegistrySync) -> None:
    raw = json.dumps({"version": 2, "registry": REG_V2}).encode()
    doc = {"format": "tunnelwatch-registry/1", "payload": base64.b64encode(raw).decode(),
           "signature": base64.b64encode(isp.sign(raw)).decode()}
    assert "bad signature" in box.apply(json.dumps(doc).encode()).message


def test_broken_current_file_does_not_overwrite_last_good(box: RegistrySync, isp: Ed25519PrivateKey) -> None:
    assert box.apply(sign_document(isp, 2, REG_V2, device="box-1")).ok
    box.registry_path.write_text("registrations: [oops\n")
    assert box.apply(sign_document(isp, 3, REG_V1, device="box-1")).ok
    assert box.registry_path.with_name("registry.yaml.last-good").read_text() == REG_V1
    assert json.loads((box.state_dir / STATE_FILE).read_text())["version"] == 3


def test_bad_configuration_is_refused(tmp_path: Path, isp: Ed25519PrivateKey) -> None:
    kw = {"ca_file": None, "state_dir": str(tmp_path), "registry_path": str(tmp_path / "r.yaml")}
    with pytest.raises(ValueError, match="https"):
        RegistrySync(url="http://isp.example/r.json", public_key=pub_b64(isp), **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="public key"):
        RegistrySync(url="https://isp.example/r.json", public_key="c2hvcnQ=", **kw)  # type: ignore[arg-type]


def test_cli_keygen_sign_verify_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    priv = tmp_path / "isp.pem"
    assert main(["keygen", "--out", str(priv)]) == 0
    pub = capsys.readouterr().out.strip()
    assert os.stat(priv).st_mode & 0o077 == 0
    reg = tmp_path / "registry.yaml"
    reg.write_text(REG_V2)
    assert main(["sign", "--key", str(priv), "--version", "12", str(reg)]) == 0
    doc = capsys.readouterr().out
    assert verify_document(doc.encode(), public_key_from_b64(pub))["version"] == 12
    (tmp_path / "doc.json").write_text(doc)
    assert main(["verify", "--public-key", pub, str(tmp_path / "doc.json")]) == 0
    assert "version 12" in capsys.readouterr().out
    (tmp_path / "doc.json").write_text(doc.replace('"payload": "', '"payload": "AA'))
    assert main(["verify", "--public-key", pub, str(tmp_path / "doc.json")]) == 1
    reg.write_text(BAD_REG)
    assert main(["sign", "--key", str(priv), "--version", "13", str(reg)]) == 78
    assert "not-an-address" in capsys.readouterr().err


def _sync_from(tmp_path: Path, isp: Ed25519PrivateKey, reply: bytes) -> SyncResult:
    """One sync against a local TLS server that answers `reply` verbatim and closes."""
    import socket
    import ssl
    import threading

    from support.pki import make_pki

    pki = make_pki(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve_one() -> None:
        conn, _ = srv.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(4096)
            tls.sendall(reply)

    t = threading.Thread(target=serve_one, daemon=True)
    t.start()
    (tmp_path / "registry.yaml").write_text(REG_V1)
    box = RegistrySync(url=f"https://127.0.0.1:{port}/reg.json", public_key=pub_b64(isp), ca_file=str(pki.ca),
                       state_dir=str(tmp_path / "state"), registry_path=str(tmp_path / "registry.yaml"),
                       device_id="box-1", timeout=10)
    try:
        return box.sync_once()
    finally:
        t.join(10)
        srv.close()


def test_control_characters_from_the_server_never_reach_log_or_event(tmp_path: Path,
                                                                     isp: Ed25519PrivateKey) -> None:
    from tunnelwatch.report.events import make_event

    reply = b"HTTP/1.1 503 Down\x1b[2J\x07 forged\x0bline\r\nContent-Length: 0\r\n\r\n"
    res = _sync_from(tmp_path, isp, reply)
    assert not res.ok and "HTTP 503" in res.message
    assert res.message.isprintable() and "\\x1b[2J" in res.message  # escaped, still readable
    ev = make_event("registry_rejected", device_id="box-1", source="sync", reason=res.message[:256])
    assert ev["reason"] == res.message[:256]


def test_a_content_length_of_non_ascii_digits_is_no_length(tmp_path: Path, isp: Ed25519PrivateKey) -> None:
    """b'\xb9' reads as '¹' (latin-1): str.isdigit() accepts it, int() refuses it. It counts as no length."""
    doc = sign_document(isp, 2, REG_V2, device="box-1")
    head = b"HTTP/1.1 200 OK\r\nContent-Length: \xb9\r\nConnection: close\r\n\r\n"
    res = _sync_from(tmp_path, isp, head + doc)
    assert res.ok and res.changed and res.version == 2, res.message


# -- whom a document is for, and how long it is valid ----------------------------------------------

DAY = 86_400.0


def _box(tmp_path: Path, isp: Ed25519PrivateKey, **kw: Any) -> RegistrySync:
    (tmp_path / "registry.yaml").write_text(REG_V1)
    return RegistrySync(url="https://isp.example/reg.json", public_key=pub_b64(isp), ca_file=None,
                        state_dir=str(tmp_path / "state"), registry_path=str(tmp_path / "registry.yaml"),
                        device_id="box-1", **kw)


def test_document_for_a_group_needs_that_group(tmp_path: Path, isp: Ed25519PrivateKey) -> None:
    (tmp_path / "a").mkdir()
    plain = _box(tmp_path / "a", isp)
    res = plain.apply(sign_document(isp, 2, REG_V2, group="north"))
    assert not res.ok and "for group 'north'" in res.message and reg_text(plain) == REG_V1
    (tmp_path / "b").mkdir()
    south = _box(tmp_path / "b", isp, group="south")
    assert not south.apply(sign_document(isp, 2, REG_V2, group="north")).ok
    assert reg_text(south) == REG_V1
    assert south.apply(sign_document(isp, 2, REG_V2, group="south")).ok and reg_text(south) == REG_V2


def test_unscoped_document_is_refused_unless_allowed(tmp_path: Path, isp: Ed25519PrivateKey) -> None:
    (tmp_path / "a").mkdir()
    strict = _box(tmp_path / "a", isp)
    res = strict.apply(sign_document(isp, 2, REG_V2))
    assert not res.ok and "names no device and no group" in res.message and reg_text(strict) == REG_V1
    (tmp_path / "b").mkdir()
    assert _box(tmp_path / "b", isp, accept_unscoped=True).apply(sign_document(isp, 2, REG_V2)).ok


def test_box_without_device_id_refuses_a_device_document(tmp_path: Path, isp: Ed25519PrivateKey) -> None:
    box = _box(tmp_path, isp)
    box.device_id = None
    assert not box.apply(sign_document(isp, 2, REG_V2, device="box-1")).ok


def test_expired_document_is_refused_and_changes_nothing(box: RegistrySync, isp: Ed25519PrivateKey) -> None:
    doc = sign_document(isp, 2, REG_V2, device="box-1", issued=rfc3339(time.time() - 10 * DAY),
                        expires=rfc3339(time.time() - 60))
    res = box.apply(doc)
    assert not res.ok and "expired at" in res.message and "re-sign" in res.message
    assert reg_text(box) == REG_V1 and box.current_version() == 0
    with pytest.raises(Rejected, match="expired"):
        verify_document(doc, box.key)
    assert verify_document(doc, box.key, now=time.time() - DAY)["version"] == 2  # valid back then


@pytest.mark.parametrize(("issued", "expires", "why"), [
    ("2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z", "expires before it was issued"),
    ("2026-01-01T00:00:00Z", "next tuesday", "expires is not an RFC 3339 time"),
    ("2026-01-01T00:00:00Z", "2099-01-01T00:00:00", "expires is not an RFC 3339 time"),  # no zone
    ("yesterday", "2099-01-01T00:00:00Z", "issued is not an RFC 3339 time"),
])
def test_bad_validity_window_is_refused(isp: Ed25519PrivateKey, issued: str, expires: str, why: str) -> None:
    doc = sign_document(isp, 2, REG_V2, device="box-1", issued=issued, expires=expires)
    with pytest.raises(Rejected, match=why):
        verify_document(doc, isp.public_key())


def test_device_and_group_together_are_refused(isp: Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError):
        sign_document(isp, 2, REG_V2, device="box-1", group="north")
    raw = json.dumps({"version": 2, "registry": REG_V2, "device": "box-1", "group": "north"}).encode()
    env = json.dumps({"format": FORMAT, "payload": base64.b64encode(raw).decode(),
                      "signature": base64.b64encode(isp.sign(SIG_CONTEXT + raw)).decode()}).encode()
    with pytest.raises(Rejected, match="both a device and a group"):
        verify_document(env, isp.public_key())


def test_staleness_of_the_registry_in_force(box: RegistrySync, isp: Ed25519PrivateKey) -> None:
    now = time.time()
    issued, expires = now - 29 * DAY, now + 2 * 3600
    assert box.stale(now) is None  # nothing synced yet
    assert box.apply(sign_document(isp, 2, REG_V2, device="box-1", issued=rfc3339(issued),
                                   expires=rfc3339(expires))).ok
    assert box.expires() == pytest.approx(expires, abs=1)
    near = box.stale(now)
    assert near is not None and near.startswith("registry expires at") and "h left" in near
    assert box.stale(now - 5 * DAY) is None  # a day's margin: fresh five days earlier
    gone = box.stale(expires + 1)
    assert gone is not None and gone.startswith("registry expired at")
    # a short-lived document is near expiry only in its last quarter, not all the time
    assert staleness(now + 6 * 3600, now - 3600, now) is None
    assert staleness(now + 3600, now - 6 * 3600, now) is not None


def test_resigned_same_version_extends_the_validity(box: RegistrySync, isp: Ed25519PrivateKey) -> None:
    now = time.time()
    assert box.apply(sign_document(isp, 2, REG_V2, device="box-1", expires=rfc3339(now + 3600))).ok
    later = rfc3339(now + 30 * DAY)
    res = box.apply(sign_document(isp, 2, REG_V2, device="box-1", expires=later))
    assert res.ok and not res.changed and later in res.message
    assert box.expires() == pytest.approx(now + 30 * DAY, abs=1) and box.stale(now) is None


def test_cli_signs_for_a_group_with_an_expiry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pem = tmp_path / "isp.pem"
    assert main(["keygen", "--out", str(pem)]) == 0
    pub = capsys.readouterr().out.strip()
    reg = tmp_path / "registry.yaml"
    reg.write_text(REG_V1)
    assert main(["sign", "--key", str(pem), "--version", "3", "--group", "north", "--valid-days", "7",
                 str(reg)]) == 0
    doc = capsys.readouterr().out
    payload = verify_document(doc.encode(), public_key_from_b64(pub))
    assert payload["group"] == "north" and "device" not in payload
    assert 6.9 * DAY < (parse_time(payload["expires"]) or 0) - time.time() <= 7 * DAY
    (tmp_path / "doc.json").write_text(doc)
    assert main(["verify", "--public-key", pub, str(tmp_path / "doc.json")]) == 0
    assert "group north" in capsys.readouterr().out
