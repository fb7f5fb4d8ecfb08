#!/usr/bin/env bash
# Build the tunnelwatch appliance image (Debian 12 bookworm) for amd64 (UEFI) or arm64 (Raspberry Pi 4/5).
#
#   image/build.sh ARCH [OUTDIR]        (as root; `make image ARCH=amd64|arm64` calls this)
#
# Stages: tools check -> build chroot + wheels -> rootfs (mmdebstrap + hooks/customize.sh) -> manifest +
# lock check -> disk image -> SHA256SUMS. Environment:
#   STAGE=builder|rootfs|all  stop after the wheel build chroot, or the rootfs and its manifest (default all)
#   SOURCE_DATE_EPOCH=N       timestamps in the image (default: the last commit's time)
#   SNAPSHOT=20261123T000000Z take packages from snapshot.debian.org at that time (default: deb.debian.org)
#   MIRROR=URL                Debian mirror (default http://deb.debian.org/debian)
#   IMAGE_LOCK=warn|strict|off compare installed versions with image/lock/ARCH.lock (default warn)
#   COMPRESS=zstd|none        also write IMAGE.img.zst (default none)
#   SRC_REF=HEAD              build tunnelwatch from that git commit instead of the work tree
#   PROVISION_PUBKEY=B64[,B64] the ISP's provisioning public key(s) (base64 of 32 raw Ed25519 bytes,
#                             `python -m tunnelwatch.isp.provsign keygen` prints one), written to
#                             /usr/lib/tunnelwatch/provisioning.pub; without it the image refuses every
#                             provisioning file (a factory image for no ISP in particular)
#   KEEP_BUILDER=1            reuse OUTDIR/builder (the wheel build chroot) when its package list is unchanged,
#                             and the dependency wheels built in it when python-requirements.txt is unchanged
#                             (tunnelwatch's own wheel is always rebuilt from the sources)
set -euo pipefail

ARCH=${1:?usage: image/build.sh amd64|arm64 [OUTDIR]}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=${2:-$REPO/build/image/$ARCH}
STAGE=${STAGE:-all}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECMIRROR=${SECMIRROR:-http://deb.debian.org/debian-security}
IMAGE_LOCK=${IMAGE_LOCK:-warn}
COMPRESS=${COMPRESS:-none}
SUITE=bookworm
T0=$(date +%s)
STEP=0

case "$ARCH" in amd64|arm64) ;; *) echo "image: ARCH must be amd64 or arm64 (got '$ARCH')" >&2; exit 2 ;; esac

say() { echo "== image[$ARCH] +$(( $(date +%s) - T0 ))s: $*"; }
step() { STEP=$((STEP + 1)); say "[$STEP] $*"; }
die() { echo "image[$ARCH]: error: $*" >&2; exit 1; }
pkgs() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$@" | tr -s ' \n' ',' | sed 's/,$//'; }

# --- tools -------------------------------------------------------------------------------------------
step "checking build tools"
[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap in root mode, chroot for the wheel build and the checks)"
missing=()
need() { command -v "$1" >/dev/null || missing+=("$1 (apt-get install $2)"); }
need mmdebstrap mmdebstrap
need mkfs.vfat dosfstools
need mcopy mtools
need sfdisk fdisk
need mkfs.ext4 e2fsprogs
need git git
[ "$COMPRESS" = zstd ] && need zstd zstd
HOSTARCH=$(dpkg --print-architecture)
if [ "$ARCH" != "$HOSTARCH" ]; then
    need qemu-aarch64-static qemu-user-static
    need update-binfmts binfmt-support
    need arch-test arch-test  # mmdebstrap runs it to see whether the foreign architecture executes
fi
if [ ${#missing[@]} -gt 0 ]; then
    printf 'image[%s]: error: missing build tool: %s\n' "$ARCH" "${missing[@]}" >&2
    echo "image[$ARCH]: all at once: apt-get install mmdebstrap dosfstools mtools fdisk e2fsprogs zstd" \
         "qemu-user-static binfmt-support arch-test qemu-system-x86 ovmf  (or: make image-deps)" >&2
    exit 2
fi
if [ "$ARCH" != "$HOSTARCH" ]; then
    # foreign binaries run through qemu-user: binfmt_misc must be mounted and the handler enabled
    [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
        || die "cannot mount binfmt_misc (needed to run $ARCH binaries under qemu-user)"
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 \
        || die "cannot enable the qemu-aarch64 binfmt handler (update-binfmts --enable qemu-aarch64)"
fi

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 0)}
PROVISION_PUBKEY=${PROVISION_PUBKEY:-}
for k in ${PROVISION_PUBKEY//,/ }; do
    # checked here, not on the first boot of every box: a typo would make the whole batch unprovisionable
    [ "$(printf '%s' "$k" | base64 -d 2>/dev/null | wc -c)" = 32 ] && [[ $k =~ ^[A-Za-z0-9+/]{43}=$ ]] \
        || die "PROVISION_PUBKEY: '$k' is not base64 of a 32-byte Ed25519 public key"
done
VERSION=$(sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$REPO/daemon/tunnelwatch/__init__.py")
[ -n "$VERSION" ] || die "cannot read __version__ from daemon/tunnelwatch/__init__.py"
NAME=tunnelwatch-$VERSION-$ARCH
mkdir -p "$OUT"
say "tunnelwatch $VERSION, Debian $SUITE, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH ($(date -u -d "@$SOURCE_DATE_EPOCH" +%F)), output $OUT"

if [ -n "${SNAPSHOT:-}" ]; then
    MIRROR=https://snapshot.debian.org/archive/debian/$SNAPSHOT
    SECMIRROR=https://snapshot.debian.org/archive/debian-security/$SNAPSHOT
    say "pinned to snapshot $SNAPSHOT"
fi
COMPONENTS="main non-free-firmware"
SOURCES=("deb $MIRROR $SUITE $COMPONENTS" "deb $MIRROR $SUITE-updates $COMPONENTS"
         "deb $SECMIRROR $SUITE-security $COMPONENTS")
# Docs, man pages and translations are not needed on an appliance (copyright files stay).
SLIM=(--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
      --dpkgopt='path-include=/usr/share/locale/locale.alias' --dpkgopt='path-exclude=/usr/share/doc/*'
      --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/info/*')
APTCACHE=$OUT/cache/apt
mkdir -p "$APTCACHE"
# .debs are kept under OUTDIR between local builds (CI starts clean; nothing is cached elsewhere)
CACHE=(--skip=download/empty --setup-hook='mkdir -p "$1"/var/cache/apt/archives/'
       --setup-hook="sync-in $APTCACHE /var/cache/apt/archives/"
       --customize-hook="sync-out /var/cache/apt/archives $APTCACHE"
       --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb')
QUIET=()
[ -n "${VERBOSE:-}" ] && QUIET=(--verbose)

# --- wheels, compiled in a throw-away build chroot ------------------------------------------------------
step "build chroot (gcc, headers) for the Python wheels"
B=$OUT/builder
# the chroot depends on its package list only; the dependency wheels also on the pinned, hashed requirements
CSTAMP=$(sha256sum < "$HERE/packages/builder.txt" | cut -c1-16)
BSTAMP=$(cat "$HERE/packages/builder.txt" "$HERE/python-requirements.txt" | sha256sum | cut -c1-16)
if [ -n "${KEEP_BUILDER:-}" ] && [ "$(cat "$B/.stamp" 2>/dev/null)" = "$CSTAMP" ]; then
    say "reusing $B"
else
    rm -rf "$B"
    mmdebstrap "${QUIET[@]}" --mode=root --variant=minbase --architectures="$ARCH" "${CACHE[@]}" \
        --include="$(pkgs "$HERE/packages/builder.txt")" "$SUITE" "$B" "${SOURCES[@]}"
    echo "$CSTAMP" > "$B/.stamp"
fi
if [ "$STAGE" = builder ]; then
    say "done (build chroot only) in $(( $(date +%s) - T0 ))s"
    exit 0
fi

step "wheels: tunnelwatch (this checkout) + pinned dependencies (image/python-requirements.txt)"
REUSE_DEPS=
if [ -n "${KEEP_BUILDER:-}" ] && [ "$(cat "$B/wheels/.stamp" 2>/dev/null)" = "$BSTAMP" ]; then
    # compiling netfilterqueue/systemd-python under qemu-user is minutes: only tunnelwatch changes here
    REUSE_DEPS=1
    rm -f "$B"/wheels/tunnelwatch-*.whl
    say "reusing the dependency wheels in $B/wheels"
else
    rm -rf "$B/wheels"
fi
rm -rf "$B/src" "$OUT/wheels" "$OUT/src"
mkdir -p "$OUT/src"
SRCPATHS=(daemon config systemd pyproject.toml README.md)
if [ -n "${SRC_REF:-}" ]; then
    # a commit (e.g. SRC_REF=HEAD): the image is built from exactly that, whatever the work tree holds
    git -C "$REPO" archive "$SRC_REF" -- "${SRCPATHS[@]}" | tar -x -C "$OUT/src"
    say "sources: git $SRC_REF ($(git -C "$REPO" rev-parse --short "$SRC_REF"))"
else
    # the checkout as git sees it (tracked and new files, not ignored ones): no venv, caches or build output
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard -- "${SRCPATHS[@]}" \
        | while IFS= read -r -d '' f; do if [ -e "$f" ]; then cp --parents "$f" "$OUT/src/"; fi; done)
    say "sources: work tree of $REPO ($(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '?'))"
fi
cp -r "$OUT/src" "$B/src"
cp "$HERE/python-requirements.txt" "$B/src/requirements.txt"
mount_chroot() { for d in proc sys dev; do mountpoint -q "$1/$d" || mount --rbind "/$d" "$1/$d"; done; }
umount_chroot() { for d in dev sys proc; do mountpoint -q "$1/$d" && umount -R "$1/$d"; done; return 0; }
trap 'umount_chroot "$B"' EXIT
mount_chroot "$B"
# the host's CA bundle: where PyPI is reached through a TLS-inspecting proxy, its CA is only there
cp /etc/ssl/certs/ca-certificates.crt "$B/etc/tw-build-ca.crt"
# env -i: the host's PIP_* settings (indexes, constraints) must not leak into the image build
chroot "$B" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_USE_PEP517=1 PIP_CERT=/etc/tw-build-ca.crt \
    REUSE_DEPS="$REUSE_DEPS" sh -euc '
    [ -x /venv/bin/pip ] || python3 -m venv /venv
    if [ -z "$REUSE_DEPS" ]; then
        # every file from PyPI must have a sha256 recorded in python-requirements.txt; a mismatch stops here
        /venv/bin/pip wheel -q --no-deps --require-hashes --wheel-dir /wheels -r /src/requirements.txt \
            || { echo "image: pip wheel --require-hashes failed: a download does not match the sha256" \
                      "recorded in image/python-requirements.txt (or a pin has no hash)" >&2; exit 1; }
        cp /usr/share/python-wheels/pip-*.whl /wheels/
    fi
    /venv/bin/pip wheel -q --no-deps --wheel-dir /wheels /src' \
    || { umount_chroot "$B"; die "wheels: pip wheel failed (see above)"; }
umount_chroot "$B"
trap - EXIT
echo "$BSTAMP" > "$B/wheels/.stamp"
mkdir -p "$OUT/wheels"
cp "$B"/wheels/*.whl "$OUT/wheels/"
say "wheels: $(cd "$OUT/wheels" && ls | sed -E 's/-(cp311|py3).*//' | tr '\n' ' ')"

# --- rootfs -------------------------------------------------------------------------------------------
step "rootfs: mmdebstrap $SUITE $ARCH ($(pkgs "$HERE/packages/common.txt" "$HERE/packages/$ARCH.txt" | tr ',' '\n' | wc -l) packages + dependencies)"
R=$OUT/rootfs
rm -rf "$R"
export TW_REPO=$OUT/src TW_IMAGE=$HERE TW_ARCH=$ARCH TW_WHEELS=$OUT/wheels TW_VERSION=$VERSION \
    TW_PROVISION_PUBKEY=$PROVISION_PUBKEY
mmdebstrap "${QUIET[@]}" --mode=root --variant=minbase --architectures="$ARCH" "${SLIM[@]}" "${CACHE[@]}" \
    --include="$(pkgs "$HERE/packages/common.txt" "$HERE/packages/$ARCH.txt")" \
    --essential-hook="\"$HERE/hooks/initramfs.sh\" defer \"\$1\"" \
    --customize-hook="\"$HERE/hooks/customize.sh\" \"\$1\"" \
    "$SUITE" "$R" "${SOURCES[@]}"
say "rootfs: $(du -sh --exclude=proc "$R" | cut -f1)"

# --- manifest and lock -------------------------------------------------------------------------------
step "manifest (packages + wheels) and lock check"
MAN=$OUT/$NAME.manifest
{
    echo "# $NAME: Debian $SUITE $ARCH, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH, mirror ${SNAPSHOT:+snapshot }$MIRROR"
    dpkg-query --admindir="$R/var/lib/dpkg" -W -f='deb ${Package} ${Version} ${Architecture}\n' | sort
    (cd "$OUT/wheels" && for w in *.whl; do echo "wheel $w $(sha256sum "$w" | cut -c1-64)"; done)
} > "$MAN"
say "manifest: $(grep -c '^deb ' "$MAN") packages, $(grep -c '^wheel ' "$MAN") wheels -> $MAN"
LOCK=$HERE/lock/$ARCH.lock
if [ "$IMAGE_LOCK" != off ] && [ -f "$LOCK" ]; then
    if diff <(grep '^deb ' "$LOCK") <(grep '^deb ' "$MAN") > "$OUT/lock.diff"; then
        say "lock: every package version matches $LOCK"
    else
        say "lock: versions differ from $LOCK (Debian point release or security update since it was recorded):"
        sed 's/^/    /' "$OUT/lock.diff" | head -40
        [ "$IMAGE_LOCK" = strict ] && die "IMAGE_LOCK=strict: refusing an image that differs from the lock"
    fi
elif [ "$IMAGE_LOCK" != off ]; then
    say "lock: no $LOCK yet (make image-lock ARCH=$ARCH records this build's versions)"
fi

if [ "$STAGE" = rootfs ]; then
    (cd "$OUT" && sha256sum "$NAME.manifest" > SHA256SUMS)
    say "done (rootfs only) in $(( $(date +%s) - T0 ))s"
    exit 0
fi

# --- disk image -----------------------------------------------------------------------------------------
step "disk image"
"$HERE/hooks/diskimage.sh" "$R" "$OUT/$NAME.img"
if [ "$COMPRESS" = zstd ]; then
    say "compressing (zstd -10)"
    zstd -q -f -T0 -10 "$OUT/$NAME.img" -o "$OUT/$NAME.img.zst"
fi
(cd "$OUT" && sha256sum "$NAME.img" "$NAME.manifest" $( [ "$COMPRESS" = zstd ] && echo "$NAME.img.zst") > SHA256SUMS)
say "image $OUT/$NAME.img: $(du -h --apparent-size "$OUT/$NAME.img" | cut -f1) (allocated $(du -h "$OUT/$NAME.img" | cut -f1))"
say "done in $(( $(date +%s) - T0 ))s"
