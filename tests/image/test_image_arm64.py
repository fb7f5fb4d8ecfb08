"""The arm64 (Raspberry Pi 4) image: slow to build and boot, so only with TW_IMAGE_ARM64=1.

`make image-test-arm64` runs it. The rootfs is built under qemu-user (binfmt) and the same chroot checks
as amd64 run in it; the Pi boot partition must carry firmware, config.txt, cmdline.txt and the device
trees. Then the disk image boots under qemu-system-aarch64 `-M virt` (Cortex-A72, the Pi 4's core, TCG)
with the image's own kernel, initrd and cmdline.txt from its boot partition, the root filesystem from its
own partition, to the daemon's READY with a provisioned identity, and a second time by the partition ids
the first boot gave the disk. What `-M virt` does not run of the Pi (its firmware, device tree, SD
controller, UART, NIC) is listed in image/README.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from imagebuild import Built, signed_provisioning
from qemuboot import Boot, boot_until

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


BOOT_TIMEOUT = 1800
DEVICE_ID = "tw-arm64-test-0042"
DEVICE_ID_2 = "tw-arm64-test-0043"


def _mtools(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})


def _disk_id(disk: Path) -> str:
    return subprocess.run(["sfdisk", "--disk-id", str(disk)], capture_output=True, text=True, timeout=60,
                          check=True).stdout.strip()


def _boot(disk: Path, tmp: Path, device_id: str, log: Path) -> tuple[Boot, str]:
    """Provision, then boot the image's own kernel, initrd and cmdline.txt (console: virt's UART)."""
    fat = f"{disk}@@1M"
    for f in signed_provisioning(tmp, device_id):
        assert _mtools("mcopy", "-o", "-i", fat, str(f), f"::/{f.name}").returncode == 0
    names = _mtools("mdir", "-b", "-i", fat, "::/").stdout.split()
    kernel = sorted(n.rsplit("/", 1)[-1] for n in names if re.search(r"/vmlinuz-[^/]*-arm64$", n))
    initrd = sorted(n.rsplit("/", 1)[-1] for n in names if re.search(r"/initrd\.img-[^/]*-arm64$", n))
    assert kernel and initrd, names
    for f in (kernel[-1], initrd[-1]):
        assert _mtools("mcopy", "-o", "-i", fat, f"::/{f}", str(tmp / f)).returncode == 0
    cmdline = _mtools("mtype", "-i", fat, "::/cmdline.txt").stdout.strip()
    assert "root=PARTUUID=" in cmdline, cmdline
    # the Pi's consoles (tty0, the GPIO UART ttyS1) are not on -M virt: its PL011 is ttyAMA0
    append = " ".join(a for a in cmdline.split() if not a.startswith("console=")) + " console=ttyAMA0"
    cmd = ["qemu-system-aarch64", "-machine", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024",
           "-accel", "tcg", "-kernel", str(tmp / kernel[-1]), "-initrd", str(tmp / initrd[-1]),
           "-append", append, "-drive", f"file={disk},format=raw,if=virtio",
           # no network: nothing leaves this machine; the daemon needs none to become ready
           "-nic", "none", "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot"]
    return boot_until(cmd, log, timeout=BOOT_TIMEOUT), append


def test_arm64_boots_to_ready_under_qemu_virt(arm64: Built, tmp_path: Path) -> None:
    assert arm64.image is not None, "the boot needs the disk image (TW_IMAGE_ARM64_STAGE=all)"
    assert shutil.which("qemu-system-aarch64"), "qemu-system-aarch64 missing: make image-deps"
    disk = tmp_path / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(arm64.image), str(disk)], check=True, timeout=300)
    assert _disk_id(arm64.image) == "0x7477e5b3"  # the factory id every image leaves the build with
    first, append = _boot(disk, tmp_path, DEVICE_ID, tmp_path / "console.log")
    out = arm64.out.parent
    shutil.copy(tmp_path / "console.log", out / "boot-test-arm64-console.log")
    assert "root=PARTUUID=7477e5b3-02" in append, append
    assert first.line is not None, f"no READY in {BOOT_TIMEOUT} s (exit {first.qemu_exit}):\n{first.tail()}"
    print(f"\narm64 boot to READY, qemu-system-aarch64 -M virt (TCG): {first.seconds:.0f} s: {first.line}")
    assert first.line.startswith(f"tunnelwatch-banner: READY device_id={DEVICE_ID} "), first.tail()
    assert f"tunnelwatch-provision: applied: device_id={DEVICE_ID}" in first.console, first.tail()
    assert "Failed to start" not in first.console and "FAILED" not in first.console, first.tail()
    # the disk has an id of its own now, and cmdline.txt names it
    new = _disk_id(disk)
    assert re.fullmatch(r"0x[0-9a-f]{8}", new) and new != "0x7477e5b3", new
    assert f"tunnelwatch-disk-identity: disk id 0x7477e5b3 -> {new}" in first.console, first.tail()
    cmdline = _mtools("mtype", "-i", f"{disk}@@1M", "::/cmdline.txt").stdout
    assert f"root=PARTUUID={new[2:]}-02" in cmdline, cmdline

    # second boot with the rewritten cmdline.txt (root by the new id) and a provisioning file for another
    # device, read from /boot/firmware, which fstab now mounts by the new id, and refused: a provisioned
    # box keeps its id
    second, append2 = _boot(disk, tmp_path, DEVICE_ID_2, tmp_path / "console2.log")
    shutil.copy(tmp_path / "console2.log", out / "boot-test-arm64-console-2.log")
    (out / "boot-test-arm64.txt").write_text(
        f"arm64 -M virt TCG boot to READY: {first.seconds:.0f} s\n{first.line}\n"
        f"second boot (new PARTUUIDs): {second.seconds:.0f} s\n{second.line}\n")
    assert f"root=PARTUUID={new[2:]}-02" in append2, append2
    assert second.line is not None, f"second boot: no READY (qemu exit {second.qemu_exit}):\n{second.tail()}"
    print(f"second boot (new PARTUUIDs) to READY: {second.seconds:.0f} s: {second.line}")
    assert second.line.startswith(f"tunnelwatch-banner: READY device_id={DEVICE_ID} "), second.tail()
    assert f"already provisioned as '{DEVICE_ID}'" in second.console, second.tail()
    assert "tunnelwatch-disk-identity" not in second.console, second.tail()
    assert _disk_id(disk) == new
