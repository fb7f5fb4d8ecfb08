"""The KVM probe of the boot test: a KVM that opens but makes no progress must fall back to TCG."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import test_image_amd64 as boot


def _fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    exe = tmp_path / "bin" / "qemu-system-x86_64"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(boot.os, "access", lambda path, mode: True)
    bios = tmp_path / "OVMF.fd"
    bios.write_bytes(b"\0")
    monkeypatch.setattr(boot, "OVMF_BIOS", str(bios))


def _serial_arg() -> str:
    # the probe passes "-serial file:PATH" last: write there like a guest's firmware would
    return 'for a; do last="$a"; done; out="${last#file:}"\n'


def test_a_hung_kvm_guest_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_qemu(tmp_path, monkeypatch, "exec sleep 30\n")  # opens, never prints, never exits
    assert boot.kvm_usable(limit=1.0) is False


def test_an_aborting_kvm_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_qemu(tmp_path, monkeypatch, "echo 'failed to set MSR 0x10a' >&2; exit 134\n")
    assert boot.kvm_usable(limit=5.0) is False


def test_a_guest_that_prints_is_kvm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prints = 'echo "BdsDxe: loading Boot0001" > "$out"\nexec sleep 30\n'
    _fake_qemu(tmp_path, monkeypatch, _serial_arg() + prints)
    assert boot.kvm_usable(limit=10.0) is True
