#!/bin/sh
# The userspace section of the bench (bench/flow_bench.py through bench/run_all.py) on arm64, under qemu-user.
#
# There is no arm64 board here. This proves the daemon's userspace packet path runs on arm64 (Debian 12's
# own python3, python3-yaml and python3-cryptography, as a Raspberry Pi OS / Debian arm64 router would have)
# and prints the same rows as `make bench`'s userspace section, labelled "arm64 (qemu-user)". Emulated
# timings say NOTHING about a Raspberry Pi's speed (qemu translates every instruction on this x86 host);
# the Pi's figures are derived from the native x86 rows and a per-core factor: docs/performance.md.
#
# Usage (root; the arm64 root is built once with mmdebstrap and cached):
#   bench/arm64_userspace.sh [run_all.py options]    default --max-flows 100000 --mix-conns 5000 (emulation
#                                                    is ~10x slower than this host); later options win
#   bench/arm64_userspace.sh python ARGS...          run the arm64 python3 on ARGS (worktree at /tw)
#   bench/arm64_userspace.sh root                    only build (or reuse) the root and print its path
# TW_ARM64_ROOT overrides the root's directory (default /var/tmp/tunnelwatch-arm64-bookworm).
# TW_ARM64_TIMEOUT bounds each emulated python run in seconds (default 1800).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
WT=$(dirname "$HERE")
ROOT=${TW_ARM64_ROOT:-/var/tmp/tunnelwatch-arm64-bookworm}
TIMEOUT=${TW_ARM64_TIMEOUT:-1800}
# what the userspace path imports, from Debian 12 (netfilterqueue is not needed: no kernel queue here)
PKGS=python3,python3-yaml,python3-cryptography
STAMP="bookworm arm64 $PKGS"

die() { echo "arm64_userspace: $*" >&2; exit 1; }

build_root() {
    if [ -f "$ROOT/.tunnelwatch-stamp" ] && [ "$(cat "$ROOT/.tunnelwatch-stamp")" = "$STAMP" ]; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "building the arm64 root needs root (mmdebstrap, chroot)"
    command -v mmdebstrap >/dev/null || die "mmdebstrap missing: apt-get install -y mmdebstrap"
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] ||
        die "no binfmt_misc entry for arm64: apt-get install -y qemu-user-static binfmt-support"
    echo "arm64_userspace: building $ROOT (Debian 12 arm64: $PKGS) ..." >&2
    rm -rf "$ROOT.new"
    timeout 1800 mmdebstrap --quiet --arch=arm64 --variant=essential --include="$PKGS" \
        bookworm "$ROOT.new" || { rm -rf "$ROOT.new"; die "mmdebstrap failed"; }
    mkdir -p "$ROOT.new/tw"
    echo "$STAMP" > "$ROOT.new/.tunnelwatch-stamp"
    rm -rf "$ROOT"
    mv "$ROOT.new" "$ROOT"
}

# Run the root's arm64 python3 with the worktree bound read-only at /tw and a private /proc, in a mount
# namespace of its own: both mounts vanish with the process, so nothing is left mounted on any exit.
arm64_python() {
    build_root
    exec timeout "$TIMEOUT" unshare --mount --propagation private sh -c '
        mount -t proc proc "$1/proc" && mount --bind "$2" "$1/tw" && mount -o remount,bind,ro "$1/tw" &&
        shift 2 && exec chroot "$0" /usr/bin/env PYTHONPATH=/tw/daemon:/tw/bench PYTHONDONTWRITEBYTECODE=1 \
            /usr/bin/python3 "$@"' "$ROOT" "$ROOT" "$WT" "$@"
}

case "${1:-}" in
    root) build_root; echo "$ROOT" ;;
    python) shift; arm64_python "$@" ;;
    *)
        build_root
        arch=$("$0" python -c 'import platform; print(platform.machine())')
        [ "$arch" = aarch64 ] || die "the root's python3 reports machine '$arch', not aarch64"
        PY=${PYTHON:-python3}
        [ -x "$WT/.venv/bin/python" ] && PY=${PYTHON:-$WT/.venv/bin/python}
        cd "$WT" && PYTHONPATH="$WT/daemon:$WT/bench${PYTHONPATH:+:$PYTHONPATH}" \
            exec "$PY" bench/run_all.py --only userspace-arm64 --max-flows 100000 --mix-conns 5000 "$@"
        ;;
esac
