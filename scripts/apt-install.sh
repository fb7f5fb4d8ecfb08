#!/usr/bin/env bash
# Install Debian packages for tunnelwatch's set-up without leaving system services behind.
#
# The peers the tests drive (openvpn, strongswan, kamailio, coturn, ssh, ...) ship units that Debian
# enables and starts on install. The tests start their own instances inside network namespaces, so on a
# workstation those system services would be a surprise: while we install, policy-rc.d refuses every
# start, and afterwards every unit the install newly enabled is disabled again. Units the machine had
# enabled before are left alone. apt's own per-package lines are shown as progress.
#
# usage: scripts/apt-install.sh PACKAGE...
set -euo pipefail

if [ "$#" -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "== not root or no apt-get: skipping system packages: $*" >&2
    exit 0
fi

missing=()
for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "== system packages: all $# present"
    exit 0
fi

enabled_units() {
    # Enablement is a symlink in a .wants/.requires directory: readable with or without a running systemd.
    find /etc/systemd/system -mindepth 2 -maxdepth 2 -type l \( -path '*.wants/*' -o -path '*.requires/*' \) \
        -printf '%f\n' 2>/dev/null | sort -u
}

sysv_started() {
    # SysV-only services (no systemd unit, e.g. mumble-server): enabled = an S link in a runlevel 2-5
    # directory; systemd's sysv generator starts those at boot.
    find /etc/rc2.d /etc/rc3.d /etc/rc4.d /etc/rc5.d -maxdepth 1 -type l -name 'S*' -printf '%f\n' \
        2>/dev/null | sed 's/^S[0-9]*//' | sort -u
}

before=$(mktemp); after=$(mktemp); sysv_before=$(mktemp)
made_policy=0
cleanup() {
    if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    rm -f "$before" "$after" "$sysv_before"
}
trap cleanup EXIT
enabled_units >"$before"
sysv_started >"$sysv_before"
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# tunnelwatch set-up: no service starts while packages install\nexit 101\n' \
        >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
fi

echo "== apt-get install: ${#missing[@]} of $# packages missing (apt lists what it fetches and sets up)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}"

enabled_units >"$after"
# The init system's own units (a root without systemd before this install gets its getty, timers...) are
# what any booted Debian has: only units of the other packages count as services we brought.
KEEP_PKGS=" systemd systemd-sysv systemd-timesyncd udev dbus e2fsprogs "
new=""
for u in $(comm -13 "$before" "$after" | grep -E '\.(service|socket|timer|path)$' || true); do
    link=$(find /etc/systemd/system -mindepth 2 -maxdepth 2 -type l -name "$u" | head -n 1)
    file=$(readlink -f "$link" || true)
    # bookworm's merged /usr: dpkg knows a unit by the path its package shipped (/lib/... or /usr/lib/...)
    pkg=$( { dpkg -S "$file" || dpkg -S "${file#/usr}"; } 2>/dev/null | head -n 1 | cut -d: -f1 || true)
    case "$KEEP_PKGS" in *" $pkg "*) continue ;; esac
    new="$new $u"
done
new=$(echo $new)
if [ -n "$new" ]; then
    echo "== disabling the system services these packages enabled (the tests start their own):" $new
    if [ -d /run/systemd/system ]; then
        # a booted system: policy-rc.d kept them from starting; stop any that started anyway
        # shellcheck disable=SC2086
        systemctl disable --now $new >/dev/null 2>&1 || true
    else
        # shellcheck disable=SC2086
        systemctl disable $new >/dev/null 2>&1 || true
    fi
    still=$(comm -12 <(tr " " "\n" <<<"$new" | sort) <(enabled_units) || true)
    if [ -n "$still" ]; then
        # instances (foo@bar.service) and units systemctl cannot resolve offline: remove the links
        for u in $still; do
            find /etc/systemd/system -mindepth 2 -maxdepth 2 -type l -name "$u" -delete
        done
    fi
fi
sysv_new=$(comm -13 "$sysv_before" <(sysv_started) | tr "\n" " ")
if [ -n "${sysv_new// /}" ]; then
    echo "== disabling the SysV init scripts these packages enabled:" $sysv_new
    for n in $sysv_new; do
        update-rc.d "$n" disable >/dev/null 2>&1 || true
    done
fi
echo "== system packages installed; no service left enabled by this install"
