"""The first-boot provisioning script (image/overlay/.../provision.py) against a scratch system tree.

Runs the real script with the project's venv interpreter and the real `tunnelwatch check-config`, so
these run everywhere in a second; the booted image's provisioning is checked in test_image_amd64.py.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tunnelwatch.isp.provsign import public_b64, sign_bytes
from tunnelwatch.policy.regsync import SIG_CONTEXT as REGISTRY_CONTEXT

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "image/overlay/common/usr/lib/tunnelwatch/provision.py"
TUNNELWATCH = str(Path(sys.executable).with_name("tunnelwatch"))
# a fixed test-only ISP provisioning key (never in an image built for a real ISP)
ISP = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_ISP = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkq3m0m4d5m2Y0yGk9QxYl1b9Jk1dKc0Jx8m3t0T1tU tech@isp"


def system(tmp_path: Path) -> Path:
    """A scratch root with the factory /etc/tunnelwatch of the image and an empty boot partition."""
    root = tmp_path / "root"
    etc = root / "etc/tunnelwatch"
    (etc / "tunnelwatch.yaml.d").mkdir(parents=True)
    shutil.copy(REPO / "config/tunnelwatch.yaml", etc / "tunnelwatch.yaml")
    shutil.copy(REPO / "image/factory/registry.yaml", etc / "registry.yaml")
    (root / "boot/firmware").mkdir(parents=True)
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\ttunnelwatch\n")
    pub = root / "usr/lib/tunnelwatch/provisioning.pub"
    pub.parent.mkdir(parents=True)
    pub.write_text(f"# test ISP\n{public_b64(ISP)}\n")
    return root


def run(root: Path) -> subprocess.CompletedProcess[str]:
    """The script as the unit runs it, pointed at the scratch root."""
    return subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), "--tunnelwatch", TUNNELWATCH],
                          capture_output=True, text=True, timeout=120, check=False)


def put(root: Path, doc: object, *, key: Ed25519PrivateKey | None = ISP, boot: str = "boot/firmware") -> Path:
    """Write the provisioning file onto the boot partition, signed by `key` (None: unsigned)."""
    f = root / boot / "tunnelwatch-provision.yaml"
    raw = doc if isinstance(doc, bytes) else (doc if isinstance(doc, str) else yaml.safe_dump(doc)).encode()
    f.write_bytes(raw)
    if key is not None:
        f.with_name(f.name + ".sig").write_bytes(sign_bytes(key, raw))
    return f


def test_no_file_changes_nothing(tmp_path: Path) -> None:
    root = system(tmp_path)
    res = run(root)
    assert res.returncode == 0, res.stderr
    assert "no provisioning file" in res.stdout
    assert not list((root / "etc/tunnelwatch/tunnelwatch.yaml.d").iterdir())
    assert not (root / "etc/sysctl.d/61-tunnelwatch-forwarding.conf").exists()  # unprovisioned: no routing


def test_valid_file_is_applied_once_and_removed(tmp_path: Path) -> None:
    root = system(tmp_path)
    src = put(root, {"version": 1, "device_id": "cpe-lhr-000123",
                     "config": {"policy": {"klass": {"voip": "enforce"}},
                                "report": {"uplink": {"url": "https://collector.isp.example",
                                                      "token_file": "uplink.token"}}},
                     "files": {"uplink.token": "0123456789abcdef0123456789"},
                     "ssh_authorized_keys": [KEY]})
    res = run(root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "tunnelwatch-provision: check-config ok" in res.stdout
    assert "applied: device_id=cpe-lhr-000123 hostname=cpe-lhr-000123 files=1 ssh=key-only" in res.stdout
    etc = root / "etc/tunnelwatch"
    dropin = yaml.safe_load((etc / "tunnelwatch.yaml.d/50-provision.yaml").read_text())
    assert dropin["discovery"]["device_id"] == "cpe-lhr-000123"
    assert dropin["policy"]["klass"]["voip"] == "enforce"
    token = etc / "uplink.token"
    assert token.read_text() == "0123456789abcdef0123456789"
    assert token.stat().st_mode & 0o777 == 0o600
    assert (root / "etc/hostname").read_text() == "cpe-lhr-000123\n"
    assert "127.0.1.1\tcpe-lhr-000123" in (root / "etc/hosts").read_text()
    assert "127.0.1.1\ttunnelwatch" not in (root / "etc/hosts").read_text()
    assert (root / "root/.ssh/authorized_keys").read_text() == KEY + "\n"
    fwd = (root / "etc/sysctl.d/61-tunnelwatch-forwarding.conf").read_text()
    assert "net.ipv4.ip_forward = 1" in fwd and "net.ipv6.conf.all.forwarding = 1" in fwd
    # the secret leaves the card; the result file says what happened, without the secret
    assert not src.exists() and not src.with_name(src.name + ".sig").exists()
    result = (root / "boot/firmware/tunnelwatch-provision.result").read_text()
    assert result.startswith("APPLIED ") and "cpe-lhr-000123" in result and "0123456789abcdef" not in result
    applied = json.loads((root / "var/lib/tunnelwatch-provision/applied.json").read_text())
    assert applied["device_id"] == "cpe-lhr-000123" and applied["ssh"] is True
    # the daemon accepts the provisioned configuration as a whole
    chk = subprocess.run([TUNNELWATCH, "check-config", str(etc / "tunnelwatch.yaml")], capture_output=True,
                         text=True, timeout=60, check=False)
    assert chk.returncode == 0, chk.stdout + chk.stderr
    # applied once: with the file gone, the next boot changes nothing
    again = run(root)
    assert again.returncode == 0 and "no provisioning file" in again.stdout


def test_file_problems_are_all_reported_and_nothing_changes(tmp_path: Path) -> None:
    root = system(tmp_path)
    src = put(root, {"version": 2, "device_id": "bad id!", "colour": "blue",
                     "files": {"../escape": "x"}, "ssh_authorized_keys": ["password123"]})
    res = run(root)
    assert res.returncode == 1
    out = res.stdout
    for msg in ("colour: unknown key", "version: must be 1", "device_id: required",
                "files.../escape: a plain file name", "ssh_authorized_keys[0]: not an OpenSSH public key"):
        assert msg in out, out
    assert "nothing was changed" in out
    assert src.exists()
    assert (root / "boot/firmware/tunnelwatch-provision.result").read_text().startswith("REJECTED")
    assert not list((root / "etc/tunnelwatch/tunnelwatch.yaml.d").iterdir())
    assert not (root / "etc/sysctl.d/61-tunnelwatch-forwarding.conf").exists()  # unprovisioned: no routing
    assert not (root / "etc/hostname").exists()


def test_config_rejected_by_check_config_keeps_factory_settings(tmp_path: Path) -> None:
    root = system(tmp_path)
    put(root, {"version": 1, "device_id": "cpe-1", "config": {"queue": {"pakets": 16}}})
    res = run(root)
    assert res.returncode == 1
    assert "REJECTED" in res.stdout and "check-config:" in res.stdout
    # check-config's own file:line message, with its hint, reaches the technician
    assert "pakets" in res.stdout and "did you mean 'packets'" in res.stdout
    assert not list((root / "etc/tunnelwatch/tunnelwatch.yaml.d").iterdir())
    assert not (root / "etc/sysctl.d/61-tunnelwatch-forwarding.conf").exists()  # unprovisioned: no routing


@pytest.mark.parametrize("text", ["version: [1\n", "\xff\xfe not utf-8", "- just\n- a list\n"])
def test_unreadable_files_are_rejected_not_crashed(tmp_path: Path, text: str) -> None:
    root = system(tmp_path)
    put(root, text.encode("latin-1"))
    res = run(root)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "REJECTED" in res.stdout and "Traceback" not in res.stderr


def test_efi_partition_is_searched_too(tmp_path: Path) -> None:
    root = system(tmp_path)
    (root / "boot/efi").mkdir()
    put(root, "version: 1\ndevice_id: x86-box-7\n", boot="boot/efi")
    res = run(root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "device_id=x86-box-7" in res.stdout
    assert os.path.exists(root / "boot/efi/tunnelwatch-provision.result")


# -- authenticity: signature by the image's key, and the device id of a provisioned box ----------------------

DOC = {"version": 1, "device_id": "cpe-lhr-000123", "config": {"policy": {"klass": {"voip": "enforce"}}}}


def assert_refused(root: Path, res: subprocess.CompletedProcess[str], reason: str) -> None:
    """Refused with `reason` on the console and in the .result, and nothing on the box changed."""
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert reason in res.stdout, res.stdout
    result = (root / "boot/firmware/tunnelwatch-provision.result").read_text()
    assert result.startswith("REJECTED ") and reason in result, result
    assert (root / "boot/firmware/tunnelwatch-provision.yaml").exists()  # left for the technician to fix
    assert not (root / "etc/sysctl.d/61-tunnelwatch-forwarding.conf").exists()
    assert not (root / "etc/hostname").exists()


def test_signed_file_is_accepted(tmp_path: Path) -> None:
    root = system(tmp_path)
    put(root, DOC)
    res = run(root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "tunnelwatch-provision: signature ok" in res.stdout
    assert "applied: device_id=cpe-lhr-000123" in res.stdout


def test_unsigned_file_is_refused(tmp_path: Path) -> None:
    root = system(tmp_path)
    put(root, DOC, key=None)
    res = run(root)
    assert_refused(root, res, "unsigned: no tunnelwatch-provision.yaml.sig")
    assert not list((root / "etc/tunnelwatch/tunnelwatch.yaml.d").iterdir())


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    root = system(tmp_path)
    src = put(root, DOC)
    # one setting changed after the ISP signed: monitor instead of enforce
    src.write_bytes(src.read_bytes().replace(b"enforce", b"monitor"))
    res = run(root)
    assert_refused(root, res, "bad signature: the file was changed after signing")
    assert not list((root / "etc/tunnelwatch/tunnelwatch.yaml.d").iterdir())


def test_file_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    root = system(tmp_path)
    put(root, DOC, key=OTHER_ISP)
    assert_refused(root, run(root), "signed by a key this image does not trust")


@pytest.mark.parametrize("sig", [b"", b"not base64 !!\n", b"AAAA\n"])
def test_garbage_signature_is_refused(tmp_path: Path, sig: bytes) -> None:
    root = system(tmp_path)
    src = put(root, DOC)
    src.with_name(src.name + ".sig").write_bytes(sig)
    assert_refused(root, run(root), "tunnelwatch-provision.yaml.sig")


def test_image_without_key_refuses_every_file(tmp_path: Path) -> None:
    root = system(tmp_path)
    (root / "usr/lib/tunnelwatch/provisioning.pub").unlink()
    put(root, DOC)
    assert_refused(root, run(root), "this image has no provisioning key")


def test_signature_for_a_registry_does_not_pass(tmp_path: Path) -> None:
    # the same key signing the same bytes in the registry's context must not provision a box
    root = system(tmp_path)
    src = put(root, DOC, key=None)
    sig = ISP.sign(REGISTRY_CONTEXT + src.read_bytes())
    src.with_name(src.name + ".sig").write_bytes(base64.b64encode(sig))
    assert_refused(root, run(root), "bad signature")


def _provisioned(tmp_path: Path) -> Path:
    root = system(tmp_path)
    put(root, DOC)
    assert run(root).returncode == 0
    return root


def test_provisioned_box_refuses_a_file_for_another_device(tmp_path: Path) -> None:
    root = _provisioned(tmp_path)
    dropin = (root / "etc/tunnelwatch/tunnelwatch.yaml.d/50-provision.yaml").read_text()
    (root / "etc/sysctl.d/61-tunnelwatch-forwarding.conf").unlink()  # so assert_refused sees no new write
    (root / "etc/hostname").unlink()
    put(root, {**DOC, "device_id": "cpe-lhr-000999"})
    res = run(root)
    assert_refused(root, res, "already provisioned as 'cpe-lhr-000123'")
    assert (root / "etc/tunnelwatch/tunnelwatch.yaml.d/50-provision.yaml").read_text() == dropin
    applied = json.loads((root / "var/lib/tunnelwatch-provision/applied.json").read_text())
    assert applied["device_id"] == "cpe-lhr-000123"


def test_provisioned_box_accepts_its_own_device_id_again(tmp_path: Path) -> None:
    root = _provisioned(tmp_path)
    put(root, {**DOC, "config": {"policy": {"klass": {"voip": "monitor"}}}})
    res = run(root)
    assert res.returncode == 0, res.stdout + res.stderr
    dropin = yaml.safe_load((root / "etc/tunnelwatch/tunnelwatch.yaml.d/50-provision.yaml").read_text())
    assert dropin["policy"]["klass"]["voip"] == "monitor"


def test_isp_tool_signs_what_the_box_accepts(tmp_path: Path) -> None:
    root = system(tmp_path)
    src = put(root, DOC, key=None)
    pem = tmp_path / "isp.pem"
    py = [sys.executable, "-m", "tunnelwatch.isp.provsign"]
    kg = subprocess.run([*py, "keygen", "--out", str(pem)], capture_output=True, text=True, timeout=60,
                        check=True)
    (root / "usr/lib/tunnelwatch/provisioning.pub").write_text(kg.stdout)
    assert pem.stat().st_mode & 0o777 == 0o600
    subprocess.run([*py, "sign", "--key", str(pem), str(src)], capture_output=True, timeout=60, check=True)
    vf = subprocess.run([*py, "verify", "--public-key", kg.stdout.strip(), str(src)], capture_output=True,
                        text=True, timeout=60, check=False)
    assert vf.returncode == 0, vf.stderr
    res = run(root)
    assert res.returncode == 0, res.stdout + res.stderr
    # the tool refuses to sign what no box would accept
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    sg = subprocess.run([*py, "sign", "--key", str(pem), str(bad)], capture_output=True, text=True,
                        timeout=60, check=False)
    assert sg.returncode == 78 and not bad.with_name("bad.yaml.sig").exists()
