"""The arm64 (Raspberry Pi 4/5) image, checked under qemu-user: slow, so only with TW_IMAGE_ARM64=1.

`make image-test-arm64` runs it. The rootfs is built under qemu-user (binfmt) and the same chroot checks
as amd64 run in it; the Pi boot partition must carry firmware, config.txt, cmdline.txt and the device
trees of the Pi 4 and 5.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from imagebuild import Built

from tunnelwatch import __version__


def chroot(root: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    """A command inside the arm64 image (through qemu-aarch64 via binfmt_misc)."""
    return subprocess.run(["chroot", str(root), "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                           *cmd], capture_output=True, text=True, timeout=600, check=False)


def test_arm64_rootfs_runs_tunnelwatch(arm64: Built) -> None:
    r = arm64.rootfs
    assert chroot(r, "uname", "-m").stdout.strip() == "aarch64"
    res = chroot(r, "tunnelwatch", "--version")
    assert res.stdout.strip() == f"tunnelwatch {__version__}", res.stderr
    chk = chroot(r, "tunnelwatch", "check-config", "/etc/tunnelwatch/tunnelwatch.yaml")
    assert chk.returncode == 0, chk.stdout + chk.stderr
    imp = chroot(r, "/opt/tunnelwatch/bin/python", "-c", "import netfilterqueue, systemd.daemon; print('ok')")
    assert imp.stdout.strip() == "ok", imp.stderr
    assert chroot(r, "systemctl", "is-enabled", "tunnelwatch.service").stdout.strip() == "enabled"
    for cc in ("gcc", "cc", "aarch64-linux-gnu-gcc"):
        assert not (r / "usr/bin" / cc).exists()


def test_arm64_initramfs_built_once_and_update_initramfs_restored(arm64: Built) -> None:
    # image/hooks/initramfs.sh diverts update-initramfs during the install; the image must get Debian's back
    r = arm64.rootfs
    assert chroot(r, "dpkg-divert", "--list", "/usr/sbin/update-initramfs").stdout.strip() == ""
    assert "deferred" not in (r / "usr/sbin/update-initramfs").read_text()
    initrds = sorted(p.name for p in (r / "boot").glob("initrd.img-*"))
    assert len(initrds) == 1 and initrds[0].endswith("-arm64"), initrds  # no .dpkg-bak / .new leftovers
    # FSTYPE=ext4 (overlay conf.d): without it the chroot build leaves fsck.ext4 out and root goes unchecked
    files = chroot(r, "lsinitramfs", f"/boot/{initrds[0]}").stdout.split()
    assert "usr/sbin/fsck.ext4" in files, [f for f in files if "fsck" in f]


def test_arm64_pi_boot_partition(arm64: Built) -> None:
    fw = arm64.rootfs / "boot/firmware"
    if arm64.image is not None:
        # the disk image builder moved the files onto the FAT partition; read them from there
        out = subprocess.run(["mdir", "-b", "-s", "-i", f"{arm64.image}@@1M", "::/"], capture_output=True,
                             text=True, timeout=60, check=True, env={"MTOOLS_SKIP_CHECK": "1"})
        names = {line.rsplit("/", 1)[-1] for line in out.stdout.split()}
    else:
        names = {p.name for p in fw.rglob("*")}
    # Pi 4 (bcm2711); the Pi 5 needs a newer kernel than bookworm's 6.1 (image/README.md)
    for f in ("config.txt", "cmdline.txt", "start4.elf", "bcm2711-rpi-4-b.dtb",
              "tunnelwatch-provision.yaml.example"):
        assert f in names, sorted(names)
    # the Debian kernel needs its initrd on the FAT partition (ext4 and the SD controller are modules)
    assert any(n.startswith("initrd.img-") for n in names), sorted(names)
