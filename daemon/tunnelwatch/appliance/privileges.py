"""Privilege reduction of the running daemon: the only module that touches process capabilities.

The daemon starts as root because binding an NFQUEUE and installing rules need it. Afterwards it only
answers on its netlink socket and, on a registry change or at stop, runs iptables-restore / iptables /
nft again: those need CAP_NET_ADMIN (and CAP_NET_RAW for the legacy iptables socket). Everything else is
removed from the bounding set (so no program it runs can get it back: a root exec gets bounding-set
capabilities only), from the permitted/effective/inheritable sets, and from the ambient set; and
no_new_privs stops set-uid programs from regaining anything. The uid stays 0 so root-owned files (the
registry, /run/xtables.lock, the conntrack sysctl) stay reachable without CAP_DAC_OVERRIDE.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

CAP_NET_ADMIN: Final = 12
CAP_NET_RAW: Final = 13
KEEP: Final = (CAP_NET_ADMIN, CAP_NET_RAW)
_PR_CAPBSET_DROP: Final = 24
_PR_SET_NO_NEW_PRIVS: Final = 38
_PR_CAP_AMBIENT: Final = 47
_PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
_CAP_VERSION_3: Final = 0x20080522
_LAST_CAP: Final = Path("/proc/sys/kernel/cap_last_cap")


class _Header(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _Data(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32))


def _last_cap() -> int:
    try:
        return int(_LAST_CAP.read_text().strip())
    except (OSError, ValueError):
        return 63  # unknown: try them all, EINVAL marks the end


def drop_capabilities(keep: tuple[int, ...] = KEEP) -> list[str]:
    """Reduce this thread's capability sets to `keep`; returns the problems (empty when all went well).

    What is already gone is not dropped again: under the systemd unit the bounding set is already
    `keep` and CAP_SETPCAP (needed to drop from it) is absent, so trying would only report failures."""
    libc = ctypes.CDLL(None, use_errno=True)
    problems: list[str] = []
    have = capabilities()
    bounding = have.get("CapBnd", (1 << 64) - 1)
    for cap in range(_last_cap() + 1):
        if cap in keep or not bounding >> cap & 1:
            continue
        if libc.prctl(_PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            if err != errno.EINVAL:  # EINVAL: a capability this kernel does not know
                problems.append(f"bounding set drop of capability {cap}: {os.strerror(err)}")
    if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        problems.append(f"clearing ambient capabilities: {os.strerror(ctypes.get_errno())}")
    mask = sum(1 << c for c in keep) & have.get("CapPrm", (1 << 64) - 1)  # capset cannot add any
    if (have.get("CapPrm"), have.get("CapEff"), have.get("CapInh")) != (mask, mask, 0):
        data = (_Data * 2)(_Data(mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0),
                           _Data(mask >> 32, mask >> 32, 0))
        if libc.capset(ctypes.byref(_Header(_CAP_VERSION_3, 0)), data) != 0:
            problems.append(f"capset: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        problems.append(f"no_new_privs: {os.strerror(ctypes.get_errno())}")
    return problems


def names(mask: int) -> str:
    """`cap_net_admin, cap_net_raw` for a capability mask (numbers for capabilities without a name here)."""
    known = {CAP_NET_ADMIN: "cap_net_admin", CAP_NET_RAW: "cap_net_raw"}
    caps = [known.get(c, f"cap_{c}") for c in range(64) if mask >> c & 1]
    return ", ".join(caps) or "none"


def drop() -> None:
    """Drop to KEEP and log the outcome; a failure is logged, never fatal (enforcement matters more)."""
    if os.geteuid() != 0:
        log.info("not root: no privileges to drop")
        return
    problems = drop_capabilities()
    eff = capabilities().get("CapEff", -1)
    if problems:
        log.warning("privilege drop incomplete: %s (effective: %s)", "; ".join(problems), names(eff))
    else:
        log.info("privileges dropped: effective capabilities %s", names(eff))


def capabilities(pid: int | str = "self") -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of a process as integers (from /proc/PID/status)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            out[key] = int(value.strip(), 16)
    return out
