"""The amd64 appliance image: its root filesystem (checked in a chroot) and a real UEFI boot under QEMU.

The boot test writes a provisioning file onto the image's EFI partition (mtools, no mounts), boots the
disk with OVMF (KVM when usable, else TCG), and reads the serial console until the banner unit prints
the daemon's READY line with the provisioned device id: that line comes from `tunnelwatch status` over
the daemon's socket, after systemd saw READY=1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from imagebuild import REPO, Built, provisioning_pubkey, signed_provisioning
from qemuboot import boot_until

from tunnelwatch import __version__

BOOT_TIMEOUT = 900
OVMF = Path("/usr/share/OVMF")
OVMF_BIOS = "/usr/share/ovmf/OVMF.fd"  # one-file firmware for the KVM probe (package ovmf)
DEVICE_ID = "tw-boot-test-0042"
DEVICE_ID_2 = "tw-boot-test-0043"
FACTORY_GPT = "7477e5b3-0000-4000-8000-00000000000"  # + partition number (image/hooks/diskimage.sh)


def chroot(root: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    """A command inside the image, with a clean environment."""
    return subprocess.run(["chroot", str(root), "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                           *cmd], capture_output=True, text=True, timeout=300, check=False)


def test_tunnelwatch_runs_in_the_rootfs(amd64: Built) -> None:
    res = chroot(amd64.rootfs, "tunnelwatch", "--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"tunnelwatch {__version__}"
    chk = chroot(amd64.rootfs, "tunnelwatch", "check-config", "/etc/tunnelwatch/tunnelwatch.yaml")
    assert chk.returncode == 0, chk.stdout + chk.stderr
    # the compiled bindings import on the image's own libraries
    imp = chroot(amd64.rootfs, "/opt/tunnelwatch/bin/python", "-c",
                 "import netfilterqueue, systemd.daemon, zeroconf, cryptography, yaml, scapy; print('ok')")
    assert imp.stdout.strip() == "ok", imp.stderr
    # the ISP-side package (collector) is not carried by a box
    isp = chroot(amd64.rootfs, "/opt/tunnelwatch/bin/python", "-c",
                 "import importlib.util; print(importlib.util.find_spec('tunnelwatch.isp'))")
    assert isp.stdout.strip() == "None", isp.stdout + isp.stderr


def test_units_enabled_and_ssh_off(amd64: Built) -> None:
    r = amd64.rootfs
    for unit in ("tunnelwatch.service", "tunnelwatch-provision.service", "tunnelwatch-banner.service"):
        res = chroot(r, "systemctl", "is-enabled", unit)
        assert res.stdout.strip() == "enabled", (unit, res.stdout, res.stderr)
    assert chroot(r, "systemctl", "is-enabled", "ssh.service").stdout.strip() == "disabled"
    assert not list((r / "etc/ssh").glob("ssh_host_*")), "host keys must be made per box, not shipped"
    assert "PasswordAuthentication no" in (r / "etc/ssh/sshd_config.d/50-tunnelwatch.conf").read_text()
    root_hash = next(ln for ln in (r / "etc/shadow").read_text().splitlines() if ln.startswith("root:"))
    assert root_hash.split(":")[1] in ("*", "!", "!*"), "root must have no password"
    assert (r / "etc/machine-id").read_text() == "", "each box makes its own machine id"


def test_kernel_settings_for_the_daemon(amd64: Built) -> None:
    r = amd64.rootfs
    sysctl = (r / "etc/sysctl.d/60-tunnelwatch.conf").read_text()
    # factory state: no routing until provisioned (provision.py writes 61-tunnelwatch-forwarding.conf)
    assert re.search(r"^net\.ipv4\.ip_forward = 0$", sysctl, re.M)
    assert re.search(r"^net\.netfilter\.nf_conntrack_acct = 1$", sysctl, re.M)
    assert not (r / "etc/sysctl.d/61-tunnelwatch-forwarding.conf").exists()
    modules = (r / "etc/modules-load.d/tunnelwatch.conf").read_text().split()
    kver = next((r / "lib/modules").iterdir()).name
    for mod in ("nfnetlink_queue", "xt_NFQUEUE", "xt_connbytes", "nft_queue"):
        assert mod in modules
        assert list((r / "lib/modules" / kver).rglob(f"{mod}.ko*")), f"{mod} not in kernel {kver}"


def test_factory_state_is_neutral_and_quiet(amd64: Built) -> None:
    r = amd64.rootfs
    # nothing blocked and nobody registered until the ISP provisions the box
    show = chroot(r, "tunnelwatch", "check-config", "/etc/tunnelwatch/tunnelwatch.yaml")
    assert show.returncode == 0, show.stdout + show.stderr
    assert "vpn_tunnel monitor" in show.stdout and "enforce" not in show.stdout, show.stdout
    assert "registry: /etc/tunnelwatch/registry.yaml: 0 registrations" in show.stdout, show.stdout
    assert (r / "usr/share/tunnelwatch/registry.example.yaml").exists()
    # a provisioning file counts only when signed by the key the build was given (PROVISION_PUBKEY)
    assert provisioning_pubkey() in (r / "usr/lib/tunnelwatch/provisioning.pub").read_text().split()
    # resolved answers no LLMNR/mDNS on the WAN (it would give out the hostname, i.e. the device id)
    resolved = (r / "etc/systemd/resolved.conf.d/50-tunnelwatch.conf").read_text()
    assert "LLMNR=no" in resolved and "MulticastDNS=no" in resolved
    modules = [ln.strip() for ln in (r / "etc/modules-load.d/tunnelwatch.conf").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    assert "xt_CONNMARK" not in modules  # no such module: systemd-modules-load failed on every boot
    # security updates arrive by themselves
    assert (r / "usr/bin/unattended-upgrade").exists()
    assert 'APT::Periodic::Unattended-Upgrade "1"' in (r / "etc/apt/apt.conf.d/20auto-upgrades").read_text()


def test_initramfs_built_once_and_update_initramfs_restored(amd64: Built) -> None:
    # image/hooks/initramfs.sh diverts update-initramfs during the install; the image must get Debian's back
    r = amd64.rootfs
    assert chroot(r, "dpkg-divert", "--list", "/usr/sbin/update-initramfs").stdout.strip() == ""
    assert "deferred" not in (r / "usr/sbin/update-initramfs").read_text()
    assert not (r / "usr/sbin/update-initramfs.tw-deferred").exists()
    initrds = sorted(p.name for p in (r / "boot").glob("initrd.img-*"))
    assert len(initrds) == 1 and initrds[0].endswith("-amd64"), initrds  # no .dpkg-bak / .new leftovers
    # FSTYPE=ext4 (overlay conf.d): without it the chroot build leaves fsck.ext4 out and root goes unchecked
    files = chroot(r, "lsinitramfs", f"/boot/{initrds[0]}").stdout.split()
    assert "usr/sbin/fsck.ext4" in files, [f for f in files if "fsck" in f]


def test_no_compiler_and_no_pip(amd64: Built) -> None:
    r = amd64.rootfs
    for cc in ("gcc", "cc", "c++", "g++", "cpp", "clang", "x86_64-linux-gnu-gcc"):
        assert not (r / "usr/bin" / cc).exists(), f"/usr/bin/{cc} in the image"
    pkgs = {ln.split()[1] for ln in amd64.manifest.read_text().splitlines() if ln.startswith("deb ")}
    assert not pkgs & {"gcc", "gcc-12", "cpp", "libc6-dev", "python3-dev", "libnetfilter-queue-dev", "make"}
    assert {"linux-image-amd64", "systemd", "iptables", "nftables", "libnetfilter-queue1"} <= pkgs
    assert not list((r / "opt/tunnelwatch").rglob("pip/__init__.py")), "pip must not be installed"


def test_manifest_and_checksums(amd64: Built) -> None:
    text = amd64.manifest.read_text()
    assert text.startswith("# tunnelwatch-") and "SOURCE_DATE_EPOCH=" in text
    assert re.search(r"^wheel tunnelwatch-\S+\.whl [0-9a-f]{64}$", text, re.M)
    assert re.search(r"^wheel netfilterqueue-1\.1\.0-\S+\.whl [0-9a-f]{64}$", text, re.M | re.I)
    res = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=amd64.out, capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert amd64.image is not None and f"{amd64.image.name}: OK" in res.stdout


def test_disk_layout(amd64: Built) -> None:
    assert amd64.image is not None
    out = subprocess.run(["sfdisk", "--dump", str(amd64.image)], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert "label: gpt" in out
    assert "type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B" in out  # ESP
    assert "type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" in out  # root, x86-64 (systemd-repart grows it)
    esp = _mtools("mdir", "-b", "-s", "-i", f"{amd64.image}@@1M", "::/").stdout
    for f in ("EFI/BOOT/BOOTX64.EFI", "loader/entries/tunnelwatch.conf", "tunnelwatch/vmlinuz",
              "tunnelwatch/initrd.img", "tunnelwatch-provision.yaml.example"):
        assert f"::/{f}" in esp, esp


def _mtools(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})


def kvm_usable(limit: float = 30.0) -> bool:
    """KVM that makes progress: the firmware prints on the serial console within `limit` seconds.

    Nested virtualisation may open /dev/kvm and then abort at the first vCPU run (seen here: MSR 0x10a),
    or run a guest that never advances (no console output, 0% CPU): both fall back to TCG.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or not Path(OVMF_BIOS).exists():
        return False
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "serial.log"
        probe = subprocess.Popen(["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-machine", "q35",
                                  "-m", "256", "-nodefaults", "-display", "none", "-no-reboot",
                                  "-bios", OVMF_BIOS, "-serial", f"file:{out}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline and probe.poll() is None:
                if out.exists() and out.stat().st_size > 0:
                    return True  # the guest runs: OVMF's boot manager printed
                time.sleep(0.2)  # polling a file another process writes; bounded by `limit`
            return False
        finally:
            if probe.poll() is None:
                probe.kill()
            probe.wait(timeout=30)


def _provision(disk: Path, tmp: Path, device_id: str) -> None:
    for f in signed_provisioning(tmp, device_id):
        res = _mtools("mcopy", "-o", "-i", f"{disk}@@1M", str(f), f"::/{f.name}")
        assert res.returncode == 0, res.stderr


def _part_uuids(disk: Path) -> tuple[str, str]:
    """(ESP, root) PARTUUIDs in the image file's GPT, lower case as udev and the files name them."""
    esp, root = (subprocess.run(["sfdisk", "--part-uuid", str(disk), n], capture_output=True, text=True,
                                timeout=60, check=True).stdout.strip().lower() for n in ("1", "2"))
    return esp, root


def test_boots_to_ready_with_provisioned_identity(amd64: Built, tmp_path: Path) -> None:
    assert amd64.image is not None
    for tool in ("qemu-system-x86_64", "mcopy"):
        assert shutil.which(tool), f"{tool} missing: make image-deps"
    disk = tmp_path / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(amd64.image), str(disk)], check=True, timeout=300)
    factory = _part_uuids(amd64.image)
    assert factory == (f"{FACTORY_GPT}1", f"{FACTORY_GPT}2")
    _provision(disk, tmp_path, DEVICE_ID)
    vars_fd = tmp_path / "OVMF_VARS.fd"
    shutil.copy(OVMF / "OVMF_VARS_4M.fd", vars_fd)
    kvm = kvm_usable()
    cmd = ["qemu-system-x86_64", "-machine", "q35", "-m", "1024", "-smp", "2",
           *(["-accel", "kvm", "-cpu", "host"] if kvm else ["-accel", "tcg", "-cpu", "max"]),
           "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF / 'OVMF_CODE_4M.fd'}",
           "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}",
           "-drive", f"file={disk},format=raw,if=virtio",
           # no network: nothing leaves this machine; the daemon needs none to become ready
           "-nic", "none", "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot"]
    first = boot_until(cmd, tmp_path / "console.log", timeout=BOOT_TIMEOUT)
    shutil.copy(tmp_path / "console.log", amd64.out.parent / "boot-test-console.log")
    text, tail = first.console, first.tail()
    assert first.line is not None, f"no READY in {BOOT_TIMEOUT} s (qemu exit {first.qemu_exit}):\n{tail}"
    accel = "kvm" if kvm else "tcg"
    print(f"\nboot to READY under qemu ({accel}): {first.seconds:.0f} s: {first.line}")
    ready = f"tunnelwatch-banner: READY device_id={DEVICE_ID} version={__version__}"
    assert first.line.startswith(ready), tail
    assert f"tunnelwatch-provision: applied: device_id={DEVICE_ID}" in text, tail
    # the banner is ordered after tunnelwatch.service, which systemd counts as started only after READY=1
    # (Type=notify); systemd's own "Started" line is not reliable here: its console status output stops
    # once the serial getty owns ttyS0
    assert re.search(r"Starting .*tunnelwatch\.servi", text), tail
    assert "Failed to start" not in text and "FAILED" not in text, tail
    # provisioned once: the file (possibly with secrets) is gone from the ESP, the result stayed
    listing = _mtools("mdir", "-b", "-i", f"{disk}@@1M", "::/").stdout
    assert "::/tunnelwatch-provision.result" in listing and "::/tunnelwatch-provision.yaml\n" not in listing
    result = _mtools("mtype", "-i", f"{disk}@@1M", "::/tunnelwatch-provision.result").stdout
    assert result.startswith("APPLIED") and DEVICE_ID in result

    # first boot gave the disk partition ids of its own (tunnelwatch-disk-identity) and the loader entry
    # names the new root
    esp, root = _part_uuids(disk)
    assert esp not in factory and root not in factory and esp != root, (esp, root)
    assert f"tunnelwatch-disk-identity: root PARTUUID={FACTORY_GPT}2 -> {root}" in text, tail
    entry = _mtools("mtype", "-i", f"{disk}@@1M", "::/loader/entries/tunnelwatch.conf").stdout
    assert f"root=PARTUUID={root} " in entry and FACTORY_GPT not in entry, entry

    # second boot, by the new ids alone: root from the rewritten loader entry, and the ESP from the
    # rewritten fstab (the provisioning unit reads the new file from /boot/efi, so its verdict on a file for
    # another device id shows the ESP was mounted: a provisioned box keeps its id); the identity step does
    # not run again
    _provision(disk, tmp_path, DEVICE_ID_2)
    second = boot_until(cmd, tmp_path / "console2.log", timeout=BOOT_TIMEOUT)
    shutil.copy(tmp_path / "console2.log", amd64.out.parent / "boot-test-console-2.log")
    (amd64.out.parent / "boot-test.txt").write_text(
        f"boot to READY: {first.seconds:.0f} s ({accel})\n{first.line}\n"
        f"second boot (new PARTUUIDs): {second.seconds:.0f} s\n{second.line}\n")
    assert second.line is not None, f"second boot: no READY banner (qemu exit {second.qemu_exit}):\n" \
        + second.tail()
    print(f"second boot (new PARTUUIDs) to READY: {second.seconds:.0f} s: {second.line}")
    assert second.line.startswith(f"tunnelwatch-banner: READY device_id={DEVICE_ID} "), second.tail()
    assert f"already provisioned as '{DEVICE_ID}'" in second.console, second.tail()
    result = _mtools("mtype", "-i", f"{disk}@@1M", "::/tunnelwatch-provision.result").stdout
    assert result.startswith("REJECTED") and DEVICE_ID_2 in result, result
    assert "tunnelwatch-disk-identity" not in second.console, second.tail()
    assert _part_uuids(disk) == (esp, root)


def test_build_script_names_missing_tools(tmp_path: Path) -> None:
    # a PATH without the build tools: build.sh must say which package brings each one
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "id", "dirname", "date", "dpkg", "sed", "tr", "cat"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    res = subprocess.run([str(REPO / "image/build.sh"), "amd64", str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=60, check=False, env={"PATH": str(bin_dir)})
    assert res.returncode != 0
    if os.geteuid() == 0:
        assert "missing build tool: mmdebstrap (apt-get install mmdebstrap)" in res.stderr, res.stderr
        assert "mkfs.vfat (apt-get install dosfstools)" in res.stderr
    else:
        pytest.skip("needs root: build.sh stops at the root check first")
