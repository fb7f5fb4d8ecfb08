#!/usr/bin/env bash
# mmdebstrap --customize-hook: turn the Debian root filesystem in $1 into a tunnelwatch appliance.
# Runs on the build host as root; commands inside the image go through chroot (qemu-user for arm64).
# Environment from build.sh: TW_REPO, TW_IMAGE, TW_ARCH, TW_WHEELS, TW_VERSION, SOURCE_DATE_EPOCH,
# TW_PROVISION_PUBKEY (comma-separated, may be empty).
# The same steps are what an rpi-image-gen / pi-gen / mkosi layer runs (image/README.md).
set -euo pipefail
R=$1
inside() { chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
    SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" "$@"; }
say() { echo "== customize: $*"; }

say "overlay (sysctl, modules-load, units, ssh policy, network default)"
cp -a "$TW_IMAGE/overlay/common/." "$R/"
[ -d "$TW_IMAGE/overlay/$TW_ARCH" ] && cp -a "$TW_IMAGE/overlay/$TW_ARCH/." "$R/"

say "tunnelwatch $TW_VERSION into /opt/tunnelwatch (a venv on Debian's python3, wheels only, no pip left)"
mkdir -p "$R/tmp/wheels"
cp "$TW_WHEELS"/*.whl "$R/tmp/wheels/"
inside python3 -m venv --without-pip /opt/tunnelwatch
PIPWHL=$(cd "$R/tmp/wheels" && ls pip-*.whl)
# exactly the wheels the manifest records: each pinned by its sha256 (image/wheelhashes.py), and pip in
# hash-checking mode refuses any other file
python3 "$TW_IMAGE/wheelhashes.py" requirements "$TW_WHEELS" --exclude pip > "$R/tmp/wheels/requirements.txt"
# pip runs from its own wheel file and is not installed: nothing in the image can fetch code later
inside sh -c "cd /tmp/wheels && /opt/tunnelwatch/bin/python $PIPWHL/pip install -q --no-index --no-deps \
    --require-hashes --find-links /tmp/wheels -r requirements.txt --disable-pip-version-check --no-cache-dir" \
    || { echo "customize: pip install --require-hashes failed: a wheel does not match its recorded sha256" >&2; exit 1; }
rm -rf "$R/tmp/wheels"
# the ISP side (reference collector and its store, tunnelwatch.isp) has no business on a box
rm -rf "$R"/opt/tunnelwatch/lib/python3*/site-packages/tunnelwatch/isp
ln -sf /opt/tunnelwatch/bin/tunnelwatch "$R/usr/bin/tunnelwatch"

if [ -n "${TW_PROVISION_PUBKEY:-}" ]; then
    say "provisioning key(s): $TW_PROVISION_PUBKEY"
    install -d -m 0755 "$R/usr/lib/tunnelwatch"
    { echo "# ISP provisioning public keys (image build PROVISION_PUBKEY): provision.py accepts a file signed by one"
      printf '%s\n' ${TW_PROVISION_PUBKEY//,/ }; } > "$R/usr/lib/tunnelwatch/provisioning.pub"
    chmod 0644 "$R/usr/lib/tunnelwatch/provisioning.pub"
else
    say "no PROVISION_PUBKEY: this image refuses every provisioning file"
    rm -f "$R/usr/lib/tunnelwatch/provisioning.pub"
fi

say "systemd unit, example config"
install -m 0644 "$TW_REPO/systemd/tunnelwatch.service" "$R/usr/lib/systemd/system/tunnelwatch.service"
install -d -m 0755 "$R/etc/tunnelwatch" "$R/etc/tunnelwatch/tunnelwatch.yaml.d"
install -m 0644 "$TW_REPO/config/tunnelwatch.yaml" "$R/etc/tunnelwatch/tunnelwatch.yaml"
# factory state: the example config is neutral (monitor), the registry empty; the example registration
# stays beside them for technicians
install -m 0644 "$TW_IMAGE/factory/registry.yaml" "$R/etc/tunnelwatch/registry.yaml"
install -D -m 0644 "$TW_REPO/config/registry.yaml" "$R/usr/share/tunnelwatch/registry.example.yaml"
install -m 0644 "$TW_IMAGE/provision.example.yaml" "$R/usr/share/tunnelwatch-provision.example.yaml"

say "enable: tunnelwatch, provisioning, banner, disk identity, networkd, resolved, timesyncd; disable: ssh"
# presets too: systemd applies them on the first boot (empty machine-id) and must not undo this
mkdir -p "$R/etc/systemd/system-preset"
cat > "$R/etc/systemd/system-preset/10-tunnelwatch.preset" <<'EOF'
enable tunnelwatch.service
enable tunnelwatch-provision.service
enable tunnelwatch-banner.service
enable tunnelwatch-disk-identity.service
enable systemd-networkd.service
enable systemd-resolved.service
enable systemd-timesyncd.service
disable ssh.service
disable ssh.socket
EOF
inside systemctl enable tunnelwatch.service tunnelwatch-provision.service tunnelwatch-banner.service \
    tunnelwatch-disk-identity.service systemd-networkd.service systemd-resolved.service systemd-timesyncd.service
inside systemctl disable ssh.service ssh.socket 2>/dev/null || true
inside systemctl mask ssh.socket
# each box makes its own host keys when ssh is provisioned (provision.py runs ssh-keygen -A)
rm -f "$R"/etc/ssh/ssh_host_*

say "identity: no machine-id, no root password, hostname tunnelwatch"
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"
inside usermod -p '*' root
echo tunnelwatch > "$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\ttunnelwatch\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
    > "$R/etc/hosts"
ln -sf ../run/systemd/resolve/stub-resolv.conf "$R/etc/resolv.conf"

case "$TW_ARCH" in
amd64)
    say "UEFI: systemd-boot on the ESP (/boot/efi), serial console ttyS0"
    cat > "$R/etc/fstab" <<'EOF'
# tunnelwatch amd64 image: factory partition UUIDs (image/hooks/diskimage.sh), made unique on first boot
# by tunnelwatch-disk-identity.service, which rewrites this file and the loader entry
PARTUUID=7477e5b3-0000-4000-8000-000000000002 /         ext4 defaults,noatime,x-systemd.growfs 0 1
PARTUUID=7477e5b3-0000-4000-8000-000000000001 /boot/efi vfat umask=0077,shortname=winnt,nofail 0 2
EOF
    E=$R/boot/efi
    mkdir -p "$E/EFI/BOOT" "$E/loader/entries"
    cp "$R/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$E/EFI/BOOT/BOOTX64.EFI"
    printf 'default tunnelwatch.conf\ntimeout 0\nconsole-mode keep\neditor no\n' > "$E/loader/loader.conf"
    cat > "$E/loader/entries/tunnelwatch.conf" <<'EOF'
title   tunnelwatch appliance (Debian 12)
linux   /tunnelwatch/vmlinuz
initrd  /tunnelwatch/initrd.img
options root=PARTUUID=7477e5b3-0000-4000-8000-000000000002 ro rootwait console=tty0 console=ttyS0,115200n8
EOF
    # the initrd, once (hooks/initramfs.sh); its post-update hook copies it to the ESP, as update-esp does
    "$TW_IMAGE/hooks/initramfs.sh" build "$R"
    inside /usr/lib/tunnelwatch/update-esp
    [ -s "$E/tunnelwatch/vmlinuz" ] && [ -s "$E/tunnelwatch/initrd.img" ] || { echo "no kernel on the ESP" >&2; exit 1; }
    install -m 0644 "$TW_IMAGE/provision.example.yaml" "$E/tunnelwatch-provision.yaml.example"
    ;;
arm64)
    say "Raspberry Pi: raspi-firmware on /boot/firmware (FAT), Debian arm64 kernel + bcm2711 (Pi 4) device trees"
    cat > "$R/etc/fstab" <<'EOF'
# tunnelwatch arm64 (Raspberry Pi) image: factory MBR disk id 0x7477e5b3 (image/hooks/diskimage.sh), made
# unique on first boot by tunnelwatch-disk-identity.service, which rewrites this file and cmdline.txt
PARTUUID=7477e5b3-02 /              ext4 defaults,noatime,x-systemd.growfs 0 1
PARTUUID=7477e5b3-01 /boot/firmware vfat umask=0077,shortname=winnt,nofail 0 2
EOF
    # raspi-firmware writes cmdline.txt and config.txt from these (and copies kernel, initrd, dtbs) on every
    # kernel change; the last console gets the boot log: the serial one, for technicians
    cat > "$R/etc/default/raspi-firmware" <<'EOF'
ROOTPART=PARTUUID=7477e5b3-02
CONSOLES="tty0 ttyS1,115200"
# the Pi 4 UART clock follows the GPU clock: only 360 MHz keeps the serial console readable
GPU_FREQ=360
KERNEL_ARCH=arm64
EOF
    mkdir -p "$R/boot/firmware"
    KVER=$(cd "$R/boot" && ls vmlinuz-* | sed 's/vmlinuz-//' | sort -V | tail -n 1)
    # the initrd, once (hooks/initramfs.sh); its post-update hook (raspi-firmware) copies it to /boot/firmware
    "$TW_IMAGE/hooks/initramfs.sh" build "$R"
    inside /etc/kernel/postinst.d/z50-raspi-firmware "$KVER" "/boot/vmlinuz-$KVER"
    inside /etc/initramfs/post-update.d/z50-raspi-firmware "$KVER" "/boot/initrd.img-$KVER"
    [ -s "$R/boot/firmware/config.txt" ] || { echo "raspi-firmware did not populate /boot/firmware" >&2; exit 1; }
    install -m 0644 "$TW_IMAGE/provision.example.yaml" "$R/boot/firmware/tunnelwatch-provision.yaml.example"
    ;;
esac

say "check inside the image: tunnelwatch --version, check-config, unit enabled, no compiler"
inside tunnelwatch --version
inside tunnelwatch check-config /etc/tunnelwatch/tunnelwatch.yaml
inside systemctl is-enabled tunnelwatch.service
for cc in gcc cc c++ g++ clang tcc; do
    if [ -e "$R/usr/bin/$cc" ]; then echo "compiler /usr/bin/$cc in the image" >&2; exit 1; fi
done

# timestamps no later than SOURCE_DATE_EPOCH, so the filesystems built from this tree are reproducible
find "$R" -xdev \( -path "$R/proc" -o -path "$R/sys" -o -path "$R/dev" \) -prune \
    -o -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0r touch -h -d "@$SOURCE_DATE_EPOCH"
