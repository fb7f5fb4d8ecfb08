"""Builds the appliance image (image/build.sh) for the image tests, or reuses a finished build.

The build goes to build/image/ARCH in the checkout (CI starts clean; nothing is cached elsewhere).
TW_IMAGE_REUSE=1 reuses an image already built there (local iteration only). The build needs root and
the tools of `make image-deps`; without them the tests fail with build.sh's message, never skip.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tunnelwatch.isp.provsign import public_b64, sign_bytes

REPO = Path(__file__).resolve().parents[2]
#: the test images trust this fixed, test-only provisioning key (PROVISION_PUBKEY), so the boot tests can
#: sign their provisioning files; an image for an ISP is built with the ISP's own key
TEST_PROVISION_KEY = Ed25519PrivateKey.from_private_bytes(b"tunnelwatch image test key, 32B!")
# arm64 from clean is ~36 min on a loaded 2-core machine (builder chroot + wheels compiled under qemu-user,
# then one initramfs under qemu-user), so it gets twice the amd64 bound
BUILD_TIMEOUT = {"amd64": 1800, "arm64": 3600}


@dataclass(frozen=True)
class Built:
    """What image/build.sh left in its output directory."""

    arch: str
    out: Path
    rootfs: Path
    image: Path | None
    manifest: Path
    seconds: float | None


def build(arch: str, stage: str) -> Built:
    """Run image/build.sh (or reuse its output with TW_IMAGE_REUSE=1); fail with the log's tail."""
    out = REPO / "build/image" / arch
    log = out.parent / f"build-{arch}.log"

    def found(seconds: float | None) -> Built:
        imgs = sorted(out.glob(f"tunnelwatch-*-{arch}.img"))
        mans = sorted(out.glob(f"tunnelwatch-*-{arch}.manifest"))
        assert mans, f"no manifest in {out}"
        return Built(arch, out, out / "rootfs", imgs[0] if imgs else None, mans[0], seconds)

    ready = (out / "SHA256SUMS").exists() and (stage == "rootfs" or any(out.glob("*.img")))
    if os.environ.get("TW_IMAGE_REUSE") == "1" and ready:
        return found(None)
    if os.geteuid() != 0:
        pytest.fail("the image build needs root (mmdebstrap, chroot): run as root, as CI does")
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PROVISION_PUBKEY": provisioning_pubkey(), "STAGE": stage, "COMPRESS": "none"}
    t0 = time.monotonic()
    with log.open("w") as f:
        res = subprocess.run([str(REPO / "image/build.sh"), arch, str(out)], stdout=f,
                             stderr=subprocess.STDOUT, env=env, timeout=BUILD_TIMEOUT[arch], check=False)
    seconds = time.monotonic() - t0
    if res.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        pytest.fail(f"image/build.sh {arch} failed (exit {res.returncode}); {log}:\n{tail}")
    print(f"\nimage build {arch} ({stage}): {seconds:.0f} s")
    return found(seconds)


def provisioning_pubkey() -> str:
    """The PROVISION_PUBKEY the test images are built with: the test key's (the boot tests sign with it)."""
    return public_b64(TEST_PROVISION_KEY)


def signed_provisioning(tmp: Path, device_id: str) -> tuple[Path, Path]:
    """A provisioning file for device_id and its .sig by the test images' key, for mcopy onto the card."""
    prov = tmp / "tunnelwatch-provision.yaml"
    raw = f"version: 1\ndevice_id: {device_id}\nconfig:\n  log: {{level: info}}\n".encode()
    prov.write_bytes(raw)
    sig = tmp / "tunnelwatch-provision.yaml.sig"
    sig.write_bytes(sign_bytes(TEST_PROVISION_KEY, raw))
    return prov, sig
