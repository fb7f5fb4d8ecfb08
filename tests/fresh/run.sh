#!/usr/bin/env bash
# The README's two commands in a fresh minimal Debian 12 root: what a new user's machine has.
#
# Builds a bookworm minbase root with mmdebstrap (only git and ca-certificates added, as the README
# promises), clones this repository's committed HEAD into it, and runs each command of the README's first
# code block in it as root (chroot in a private mount namespace; /proc, /sys, /dev from the host, so the
# demo's network namespaces and NFQUEUE work). Then it checks that the set-up left no system service
# enabled and no process behind. A missing install step (a package, a header, a module) fails here
# instead of on a user's machine.
#
# The test command runs with PYTEST_ARGS narrowed (FRESH_PYTEST_ARGS) to a fast, representative part of
# the suite: its set-up, lint and type-check are the full ones; the whole suite runs on the host in CI.
# usage: tests/fresh/run.sh   (root; FRESH_KEEP=1 keeps the root for a look)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
SUITE=${FRESH_SUITE:-bookworm}
MIRROR=${FRESH_MIRROR:-http://deb.debian.org/debian}
SECURITY=${FRESH_SECURITY:-http://deb.debian.org/debian-security}
PYTEST_SUBSET=${FRESH_PYTEST_ARGS:-tests/unit tests/integration/test_enforce.py}

say() { printf '== fresh: %s\n' "$*"; }
die() { printf 'fresh: error: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap root mode, chroot, network namespaces)"
command -v mmdebstrap >/dev/null || scripts/apt-install.sh mmdebstrap
command -v unshare >/dev/null || die "needs unshare (util-linux)"

# FRESH_REUSE=DIR: run the commands again in a root kept by an earlier FRESH_KEEP=1 run (debugging)
REUSE=${FRESH_REUSE:-}
ROOT=${REUSE:-$(mktemp -d /var/tmp/tunnelwatch-fresh.XXXXXX)}
cleanup() {
    # processes started inside the root (a failed command's leftovers) go first, then the files
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] && kill -9 "${p#/proc/}" 2>/dev/null
    done
    if [ "${FRESH_KEEP:-0}" = 1 ]; then say "root kept in $ROOT"; else rm -rf --one-file-system "$ROOT"; fi
}
trap cleanup EXIT

t0=$SECONDS
if [ -n "$REUSE" ]; then
    say "reusing $ROOT"
    rm -rf "$ROOT/root/tunnelwatch.prev"; mv "$ROOT/root/tunnelwatch" "$ROOT/root/tunnelwatch.prev"
    git clone -q "$REPO" "$ROOT/root/tunnelwatch"
    mv "$ROOT/root/tunnelwatch.prev/.venv" "$ROOT/root/tunnelwatch/" 2>/dev/null || true
else
say "mmdebstrap $SUITE minbase + git, ca-certificates into $ROOT"
mmdebstrap --quiet --variant=minbase --include=git,ca-certificates "$SUITE" "$ROOT" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY $SUITE-security main"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# Local CA certificates of this host (a TLS-intercepting egress, as in CI's sandbox, signs PyPI's
# certificate with one): without them pip in the root cannot verify PyPI. A user's machine needs none.
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    chroot "$ROOT" update-ca-certificates >/dev/null
fi
git clone -q "$REPO" "$ROOT/root/tunnelwatch"
say "root ready in $((SECONDS - t0)) s ($(du -sm --one-file-system "$ROOT" | cut -f1) MB)"
fi

units() {  # enabled units of the root: "<unit> <package>", one a line
    chroot "$ROOT" sh -c 'find /etc/systemd/system -mindepth 2 -maxdepth 2 -type l \
        \( -path "*.wants/*" -o -path "*.requires/*" \) 2>/dev/null | while read -r l; do
            f=$(readlink -f "$l")
            p=$( { dpkg -S "$f" || dpkg -S "${f#/usr}"; } 2>/dev/null | head -n 1 | cut -d: -f1)
            echo "$(basename "$l") ${p:-?}"; done | sort -u'
}
before=$(units)

in_root() {  # run one shell command in the root, as root, in a private mount namespace
    unshare --mount --propagation private -- sh -c '
        set -e; r=$1; shift
        # the root must be a mount point of its own: `ip netns exec` remounts / as a slave
        mount --bind "$r" "$r"
        mount --rbind /dev "$r/dev"; mount -t proc proc "$r/proc"; mount --rbind /sys "$r/sys"
        mount -t tmpfs -o mode=755 tmpfs "$r/run"; mount -t tmpfs -o mode=1777 tmpfs "$r/tmp"
        exec chroot "$r" env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            ${PYTEST_ARGS:+"PYTEST_ARGS=$PYTEST_ARGS"} bash -c "cd /root/tunnelwatch && $*"' sh "$ROOT" "$@"
}

# The README's first code block: one command a line, comments dropped.
mapfile -t cmds < <(awk '/^```/{n++; next} n==1 && NF' README.md | sed 's/[[:space:]]*#.*$//')
[ "${#cmds[@]}" = 2 ] || die "README's first code block should hold 2 commands, found ${#cmds[@]}"
times=()
for cmd in "${cmds[@]}"; do
    say "running the README's: $cmd"
    t=$SECONDS
    if [[ $cmd == *"make test"* ]]; then
        export PYTEST_ARGS="$PYTEST_SUBSET"
    else
        export PYTEST_ARGS=""
    fi
    in_root "$cmd" || die "failed in the fresh root: $cmd"
    times+=("$((SECONDS - t)) s: $cmd")
done

# Left enabled: units that were not before, except the init system's own (systemd arrives with the test
# packages in a root that had no init: its getty/timers are what every booted Debian has).
after=$(units)
new=$(comm -13 <(echo "$before") <(echo "$after") | grep -E '\.(service|socket|timer|path) ' \
    | grep -v -E ' (systemd|systemd-sysv|systemd-timesyncd|udev|dbus|e2fsprogs)$' || true)
[ -z "$new" ] || die "set-up left system services enabled: $(echo "$new" | tr '\n' ';')"
left=""
for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] && left="$left ${p#/proc/}($(cat "$p/comm"))"
done
[ -z "$left" ] || die "processes left running in the root:$left"
for t in "${times[@]}"; do say "ok in $t"; done
say "no system service left enabled, no process left running; total $((SECONDS - t0)) s"
