#!/usr/bin/env bash
# The initramfs is built once, at the end of the image build, instead of on every dpkg trigger.
#
#   initramfs.sh defer ROOT   (mmdebstrap --essential-hook: before the kernel and initramfs-tools are installed)
#   initramfs.sh build ROOT   (hooks/customize.sh: restore update-initramfs, build the initrd of the kernel once)
#
# Why: during the install, linux-image's postinst and initramfs-tools' trigger each ran mkinitramfs over
# the whole module tree; under qemu-user (arm64) that is a shell script forking thousands of emulated
# processes, ~17 min per run on the 2-core build machine, twice. A diversion (dpkg-divert, so dpkg
# itself knows) puts a no-op in place of update-initramfs while packages are installed; `build` removes
# it, so the finished image has Debian's own update-initramfs and kernel upgrades behave as usual.
#
# MODULES stays Debian's default "most": "dep" would size the initrd for the BUILD machine's disk
# controller (it inspects the running system), and a hand-made "list" for the Pi 4's SD/USB boot path
# (sdhci-iproc, its GPIO regulators, pcie-brcmstb, xhci, uas...) must be proven on real hardware first.
set -euo pipefail
CMD=${1:?usage: initramfs.sh defer|build ROOT}
R=${2:?usage: initramfs.sh defer|build ROOT}
UI=/usr/sbin/update-initramfs
REAL=$UI.tw-deferred
inside() { chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
    ${SOURCE_DATE_EPOCH:+SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH"} "$@"; }
say() { echo "== initramfs: $*"; }

case "$CMD" in
defer)
    inside dpkg-divert --quiet --local --rename --divert "$REAL" --add "$UI"
    mkdir -p "$R/usr/sbin"
    # kernel postinst and the initramfs-tools trigger call this; the real one runs once in `build`
    printf '#!/bin/sh\necho "update-initramfs: deferred to the end of the image build ($*)" >&2\nexit 0\n' \
        > "$R$UI"
    chmod 0755 "$R$UI"
    say "update-initramfs diverted to $REAL during the package install"
    ;;
build)
    if inside dpkg-divert --list "$UI" | grep -q .; then
        rm -f "$R$UI"
        inside dpkg-divert --quiet --local --rename --remove "$UI"
    fi
    [ -x "$R$UI" ] || { echo "initramfs: $UI missing after removing the diversion" >&2; exit 1; }
    KVER=$(cd "$R/boot" && ls vmlinuz-* | sed 's/vmlinuz-//' | sort -V | tail -n 1)
    [ -n "$KVER" ] || { echo "initramfs: no kernel in $R/boot" >&2; exit 1; }
    t0=$(date +%s)
    say "update-initramfs -c -k $KVER (once; MODULES=$(sed -n 's/^MODULES=//p' "$R/etc/initramfs-tools/initramfs.conf"))"
    # -c runs /etc/initramfs/post-update.d too: raspi-firmware copies the initrd to /boot/firmware,
    # the amd64 hook copies it to the ESP
    inside update-initramfs -c -k "$KVER"
    [ -s "$R/boot/initrd.img-$KVER" ] || { echo "initramfs: /boot/initrd.img-$KVER not written" >&2; exit 1; }
    say "initrd.img-$KVER: $(du -h "$R/boot/initrd.img-$KVER" | cut -f1) in $(( $(date +%s) - t0 ))s"
    ;;
*)
    echo "usage: initramfs.sh defer|build ROOT" >&2; exit 2 ;;
esac
