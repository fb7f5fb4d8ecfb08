"""Registry sync: only authentic, newer, valid documents replace the registry; everything else keeps it."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tunnelwatch.policy.registry import Registry
from tunnelwatch.policy.regsync import (
    STATE_FILE,
    RegistrySync,
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
    res = box.apply(sign_document(isp, 2, REG_V2))
    assert res.ok and res.changed and res.version == 2, res.message
    assert reg_text(box) == REG_V2 and box.current_version() == 2
    assert box.registry_path.with_name("registry.yaml.last-good").read_text() == REG_V1
    assert [e.id for e in Registry.load(box.registry_path).entries] == ["PTA-1", "PTA-2"]
    assert not [p for p in box.registry_path.parent.iterdir() if p.name.startswith(".registry.yaml.")]
    again = box.apply(sign_document(isp, 2, REG_V2))
    assert again.ok and not again.changed and "current" in again.message


def test_tampered_document_is_rejected(box: RegistrySync, isp: Ed25519PrivateKey) -> None:
    doc = json.loads(sign_document(isp, 5, REG_V2))
    payload = json.loads(base64.b64decode(doc["payload"]))
    payload["registry"] = REG_V2.replace("192.0.2.0/28", "0.0.0.0/0")
    doc["payload"] = base64.b64encode(json.dumps(payload, sort_keys=True).encode()).decode()
    res = box.apply(json.dumps(doc).encode())
    assert not res.ok and "bad signature" in res.message
    assert reg_text(box) == REG_V1 and box.current_version() == 0


def test_signed_by_another_key_is_rejected(box: RegistrySync) -> None:
    res = box.apply(sign_document(Ed25519PrivateKey.generate(), 9, REG_V2))
    assert not res.ok and "bad signature" in res.message and reg_text(box) == REG_V1


def test_replayed_older_and_reused_version_are_rejected(box: RegistrySync, isp: Ed25519PrivateKey) -> None:
    old = sign_document(isp, 3, REG_V1 + "  - id: PTA-OLD\n    servers: [198.51.100.1]\n")
    assert box.apply(sign_document(isp, 4, REG_V2)).ok
    res = box.apply(old)
    assert not res.ok and "not newer" in res.message and res.version == 3
    reused = box.apply(sign_document(isp, 4, REG_V1))
    assert not reused.ok and "not newer" in reused.message
    assert reg_text(box) == REG_V2 and box.current_version() == 4


@pytest.mark.parametrize("cut", [1, 40, 0.5, -2])
def test_truncated_document_is_rejected(box: RegistrySync, isp: Ed25519PrivateKey, cut: float) -> None:
    doc = sign_document(isp, 2, REG_V2)
    body = doc[:int(len(doc) * cut)] if isinstance(cut, float) else doc[:cut]
    res = box.apply(body)
    assert not res.ok and reg_text(box) == REG_V1
    assert "truncated" in res.message or "signature" in res.message or "envelope" in res.message


def test_signed_but_invalid_registry_is_not_applied(box: RegistrySync, isp: Ed25519PrivateKey) -> None:
    res = box.apply(sign_document(isp, 7, BAD_REG))
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
    assert box.apply(sign_document(isp, 2, REG_V2)).ok
    box.registry_path.write_text("registrations: [oops\n")
    assert box.apply(sign_document(isp, 3, REG_V1)).ok
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


def test_control_characters_from_the_server_never_reach_log_or_event(tmp_path: Path,
                                                                     isp: Ed25519PrivateKey) -> None:
    import socket
    import ssl
    import threading

    from support.pki import make_pki
    from tunnelwatch.report.events import make_event

    pki = make_pki(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve_one() -> None:
        conn, _ = srv.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(4096)
            tls.sendall(b"HTTP/1.1 503 Down\x1b[2J\x07 forged\x0bline\r\nContent-Length: 0\r\n\r\n")

    t = threading.Thread(target=serve_one, daemon=True)
    t.start()
    (tmp_path / "registry.yaml").write_text(REG_V1)
    box = RegistrySync(url=f"https://127.0.0.1:{port}/reg.json", public_key=pub_b64(isp), ca_file=str(pki.ca),
                       state_dir=str(tmp_path / "state"), registry_path=str(tmp_path / "registry.yaml"),
                       device_id="box-1", timeout=10)
    res = box.sync_once()
    t.join(10)
    srv.close()
    assert not res.ok and "HTTP 503" in res.message
    assert res.message.isprintable() and "\\x1b[2J" in res.message  # escaped, still readable
    ev = make_event("registry_rejected", device_id="box-1", source="sync", reason=res.message[:256])
    assert ev["reason"] == res.message[:256]
