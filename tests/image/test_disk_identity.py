"""The first-boot disk-identity step (image/overlay/common/usr/lib/tunnelwatch/disk-identity), no image.

It runs here on a disk-image file partitioned as image/hooks/diskimage.sh does (same factory ids) and on
a scratch tree holding the files that name them (TW_ROOT, TW_DISK): new random ids, every file rewritten,
nothing changed when a boot file is missing, a second run changes nothing. The boot tests check the
same step on the real images (test_image_amd64.py, test_image_arm64.py).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from imagebuild import REPO

SCRIPT = REPO / "image/overlay/common/usr/lib/tunnelwatch/disk-identity"
DIAG = REPO / "image/hooks/diskimage.sh"
GPT_ESP = "7477E5B3-0000-4000-8000-000000000001"
GPT_ROOT = "7477E5B3-0000-4000-8000-000000000002"


def sfdisk(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(["sfdisk", *args], input=stdin, capture_output=True, text=True, timeout=60,
                          check=True).stdout


def run(tree: Path, disk: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "TW_ROOT": str(tree), "TW_DISK": str(disk), "TW_ROOT_PART": "-"})


def factory_table(label: str) -> str:
    """The sfdisk script of image/hooks/diskimage.sh for this label (so the two cannot drift apart)."""
    text = DIAG.read_text()
    scripts = re.findall(r"<<PT\n(.*?)\nPT\n", text, re.S)
    script: str = next(s for s in scripts if f"label: {label}" in s)
    return script.replace("${BOOTMB}", "16").replace("$((1 + BOOTMB))", "17").replace("${ROOTMB}", "40")


@pytest.fixture
def pi(tmp_path: Path) -> tuple[Path, Path]:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"")
    os.truncate(disk, 64 << 20)
    sfdisk("-q", str(disk), stdin=factory_table("dos"))
    t = tmp_path / "root"
    (t / "etc/default").mkdir(parents=True)
    (t / "boot/firmware").mkdir(parents=True)
    (t / "etc/fstab").write_text("# tunnelwatch arm64 (Raspberry Pi) image: factory MBR disk id 0x7477e5b3\n"
                                 "PARTUUID=7477e5b3-02 /              ext4 defaults,noatime 0 1\n"
                                 "PARTUUID=7477e5b3-01 /boot/firmware vfat umask=0077,nofail 0 2\n")
    (t / "boot/firmware/cmdline.txt").write_text(
        "console=tty0 console=ttyS1,115200 root=PARTUUID=7477e5b3-02 rw fsck.repair=yes rootwait\n")
    (t / "etc/default/raspi-firmware").write_text("ROOTPART=PARTUUID=7477e5b3-02\nKERNEL_ARCH=arm64\n")
    return t, disk


def test_pi_mbr_gets_its_own_disk_id_and_every_file_follows(pi: tuple[Path, Path]) -> None:
    t, disk = pi
    assert sfdisk("--disk-id", str(disk)).strip() == "0x7477e5b3"
    res = run(t, disk)
    assert res.returncode == 0, res.stdout + res.stderr
    new = sfdisk("--disk-id", str(disk)).strip()
    assert re.fullmatch(r"0x[0-9a-f]{8}", new) and new != "0x7477e5b3", new
    nid = new[2:]
    fstab = (t / "etc/fstab").read_text()
    assert f"PARTUUID={nid}-02 /" in fstab and f"PARTUUID={nid}-01 /boot/firmware" in fstab, fstab
    assert f"root=PARTUUID={nid}-02 rw" in (t / "boot/firmware/cmdline.txt").read_text()
    assert f"ROOTPART=PARTUUID={nid}-02" in (t / "etc/default/raspi-firmware").read_text()
    assert "7477e5b3-0" not in fstab + (t / "boot/firmware/cmdline.txt").read_text()
    assert not list(t.rglob("*.tw-new"))
    assert f"disk-id {new}" in (t / "var/lib/tunnelwatch/disk-identity").read_text()
    assert f"-> {new}" in res.stdout
    # the partitions themselves are untouched
    dump = sfdisk("--dump", str(disk))
    assert "start=        2048, size=       32768, type=c, bootable" in dump, dump
    # idempotent: a second run keeps the ids and the files
    before = {p: p.read_text() for p in t.rglob("*") if p.is_file() and "var/lib" not in str(p)}
    again = run(t, disk)
    assert again.returncode == 0, again.stderr
    assert "already has its own ids" in again.stdout
    assert sfdisk("--disk-id", str(disk)).strip() == new
    assert {p: p.read_text() for p in before} == before


def test_ids_differ_between_boxes(pi: tuple[Path, Path], tmp_path: Path) -> None:
    t, disk = pi
    other = tmp_path / "other.img"
    other.write_bytes(disk.read_bytes())
    (tmp_path / "other").mkdir()
    subprocess.run(["cp", "-a", str(t), str(tmp_path / "other/root")], check=True, timeout=60)
    assert run(t, disk).returncode == 0
    assert run(tmp_path / "other/root", other).returncode == 0
    assert sfdisk("--disk-id", str(disk)) != sfdisk("--disk-id", str(other))


def test_nothing_changes_without_the_boot_partition(pi: tuple[Path, Path]) -> None:
    t, disk = pi
    (t / "boot/firmware/cmdline.txt").unlink()  # boot partition not mounted (fstab says nofail)
    res = run(t, disk)
    assert res.returncode != 0
    assert "cmdline.txt is missing" in res.stderr and "nothing changed" in res.stderr
    assert sfdisk("--disk-id", str(disk)).strip() == "0x7477e5b3"
    assert "PARTUUID=7477e5b3-02" in (t / "etc/fstab").read_text()
    assert not (t / "var/lib/tunnelwatch/disk-identity").exists()


def test_rewrites_files_left_behind_when_the_table_already_changed(pi: tuple[Path, Path]) -> None:
    # a run cut off after the table write but before the renames, on a box that still booted: the next
    # run only brings the files in line with the table
    t, disk = pi
    sfdisk("-q", "--disk-id", str(disk), "0x12345678")
    (t / "etc/fstab").write_text("PARTUUID=12345678-02 / ext4 defaults 0 1\n"
                                 "PARTUUID=7477e5b3-01 /boot/firmware vfat nofail 0 2\n")
    res = run(t, disk)
    assert res.returncode == 0, res.stderr
    assert sfdisk("--disk-id", str(disk)).strip() == "0x12345678"
    assert "PARTUUID=12345678-01 /boot/firmware" in (t / "etc/fstab").read_text()
    assert "root=PARTUUID=12345678-02" in (t / "boot/firmware/cmdline.txt").read_text()


def test_x86_gpt_gets_new_partition_uuids_and_the_loader_entry_follows(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"")
    os.truncate(disk, 64 << 20)
    sfdisk("-q", str(disk), stdin=factory_table("gpt"))
    t = tmp_path / "root"
    (t / "etc").mkdir(parents=True)
    (t / "boot/efi/loader/entries").mkdir(parents=True)
    (t / "etc/fstab").write_text(f"PARTUUID={GPT_ROOT.lower()} / ext4 defaults 0 1\n"
                                 f"PARTUUID={GPT_ESP.lower()} /boot/efi vfat umask=0077,nofail 0 2\n")
    entry = t / "boot/efi/loader/entries/tunnelwatch.conf"
    entry.write_text("title tunnelwatch\nlinux /tunnelwatch/vmlinuz\n"
                     f"options root=PARTUUID={GPT_ROOT.lower()} ro\n")
    res = run(t, disk)
    assert res.returncode == 0, res.stdout + res.stderr
    esp, root = (sfdisk("--part-uuid", str(disk), n).strip() for n in ("1", "2"))
    assert esp != GPT_ESP and root != GPT_ROOT and esp != root
    # files name them in lower case, as udev's /dev/disk/by-partuuid links do
    esp, root = esp.lower(), root.lower()
    assert sfdisk("--disk-id", str(disk)).strip() != "7477E5B3-0000-4000-8000-000000000000"
    assert f"root=PARTUUID={root} ro" in entry.read_text()
    fstab = (t / "etc/fstab").read_text()
    assert f"PARTUUID={root} /" in fstab and f"PARTUUID={esp} /boot/efi" in fstab
    assert "7477" not in fstab
    assert f"-> {root}" in res.stdout
    assert run(t, disk).returncode == 0
    assert sfdisk("--part-uuid", str(disk), "2").strip().lower() == root
    assert entry.read_text().count(root) == 1
