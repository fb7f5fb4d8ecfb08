#!/usr/bin/env bash
# Build a partitioned disk image from a finished rootfs directory, without loop devices or mounts:
# the FAT boot partition with mkfs.vfat + mtools, the root partition with mkfs.ext4 -d, assembled with
# sfdisk + dd. amd64: GPT, ESP (systemd-boot) + root. arm64: MBR (the Pi's boot ROM), FAT + root.
# Fixed UUIDs/serials and SOURCE_DATE_EPOCH timestamps keep the output reproducible.
#   hooks/diskimage.sh ROOTFS IMAGE        (TW_ARCH=amd64|arm64 from build.sh)
set -euo pipefail
R=$1 IMG=$2
ARCH=${TW_ARCH:?}
SDE=${SOURCE_DATE_EPOCH:-0}
BOOTMB=${BOOT_MB:-256}
case "$ARCH" in amd64) BOOTDIR=boot/efi ;; arm64) BOOTDIR=boot/firmware ;; esac
W=$(dirname "$IMG")/.disk
rm -rf "$W" && mkdir -p "$W/boot"
# the boot partition's files live on FAT, not in the root filesystem (the mount point stays)
mv "$R/$BOOTDIR"/* "$W/boot/"
trap 'mv "$W/boot"/* "$R/$BOOTDIR"/ 2>/dev/null || true' EXIT

echo "== disk: boot partition (FAT32, ${BOOTMB} MiB)"
truncate -s "${BOOTMB}M" "$W/boot.fat"
mkfs.vfat -F 32 -n TW-BOOT -i 7477e5b3 --invariant "$W/boot.fat" >/dev/null
export MTOOLS_SKIP_CHECK=1
find "$W/boot" -exec touch -h -d "@$SDE" {} +
(cd "$W/boot" && for f in *; do mcopy -s -m -Q -i "$W/boot.fat" "$f" ::/; done)

echo "== disk: root partition (ext4)"
USED=$(du -s -B1M --exclude=./proc "$R" | cut -f1)
ROOTMB=$(( USED + USED / 4 + 256 ))
truncate -s "${ROOTMB}M" "$W/root.ext4"
E2FSPROGS_FAKE_TIME=$SDE mkfs.ext4 -q -L tw-root -U 7477e5b3-0000-4000-8000-0000000000ff \
    -E hash_seed=7477e5b3-0000-4000-8000-0000000000fe,root_owner=0:0 -m 1 -d "$R" "$W/root.ext4"

echo "== disk: partition table and assembly"
TOTAL=$(( 1 + BOOTMB + ROOTMB + 1 ))
rm -f "$IMG" && truncate -s "${TOTAL}M" "$IMG"
if [ "$ARCH" = amd64 ]; then
    sfdisk -q "$IMG" <<PT
label: gpt
label-id: 7477E5B3-0000-4000-8000-000000000000
first-lba: 2048
start=1MiB, size=${BOOTMB}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=7477E5B3-0000-4000-8000-000000000001, name="esp"
start=$((1 + BOOTMB))MiB, size=${ROOTMB}MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=7477E5B3-0000-4000-8000-000000000002, name="root"
PT
else
    sfdisk -q "$IMG" <<PT
label: dos
label-id: 0x7477e5b3
start=1MiB, size=${BOOTMB}MiB, type=c, bootable
start=$((1 + BOOTMB))MiB, size=${ROOTMB}MiB, type=83
PT
fi
dd if="$W/boot.fat" of="$IMG" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$W/root.ext4" of="$IMG" bs=1M seek=$((1 + BOOTMB)) conv=notrunc,sparse status=none
rm -f "$W/boot.fat" "$W/root.ext4"
sfdisk -l "$IMG" | sed 's/^/   /'
