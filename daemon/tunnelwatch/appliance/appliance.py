"""The daemon's appliance side: status state and servers, mDNS advertisement, device id, config events.

Owns what the inline path must never wait for: the StatusState it feeds, the StatusServer (unix socket
always, HTTP only on configured LAN addresses with a token) and the mDNS Advertiser on LAN interfaces.
Everything here degrades instead of failing: a missing zeroconf, an interface without an address or a
port in use is logged and the daemon keeps enforcing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import logging
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from tunnelwatch import __version__
from tunnelwatch.appliance.registrations import registration_rows
from tunnelwatch.appliance.state import StatusState
from tunnelwatch.appliance.statusweb import StatusServer
from tunnelwatch.config.runconfig import RunConfig
from tunnelwatch.policy.registry import Registry

if TYPE_CHECKING:
    from tunnelwatch.appliance.discovery import Advertiser

log = logging.getLogger(__name__)

STATUS_PATH: Final = "/api/status"
_MACHINE_ID: Final = Path("/etc/machine-id")


def device_id(cfg: RunConfig) -> str:
    """The configured id, else one derived from /etc/machine-id (never the raw id), else the hostname."""
    if cfg.discovery.device_id:
        return cfg.discovery.device_id
    try:
        mid = _MACHINE_ID.read_text().strip()
    except OSError:
        mid = ""
    if mid:
        # an application-specific id: the machine id itself is meant to stay private to the box
        return "tw-" + hashlib.sha256(f"tunnelwatch:{mid}".encode()).hexdigest()[:12]
    return socket.gethostname()


def mode_of(cfg: RunConfig) -> str:
    """The strongest mode any rule uses: enforce, grace or monitor."""
    modes = {cfg.default.mode, *(r.mode for r in (*cfg.klass.values(), *cfg.protocol.values()))}
    return "enforce" if "enforce" in modes else "grace" if "grace" in modes else "monitor"


def registry_figures(registry: Registry, now: dt.datetime | None = None) -> dict[str, object]:
    """Status fields about the registry: entries, entries valid now, and the first expiry among them."""
    now = now or dt.datetime.now(dt.UTC)
    active = registry.active(now)
    ends = [e.valid_until.timestamp() for e in active if e.valid_until is not None]
    return {"registry_entries": len(registry.entries), "registry_active": len(active),
            "registry_next_expiry": min(ends) if ends else None, "registrations": registration_rows(registry)}


def registry_version(registry: Registry) -> str:
    """A short content hash of the registry file plus its entry count (the signed version comes later)."""
    if registry.path is None:
        return f"none ({len(registry.entries)} entries)"
    try:
        digest = hashlib.sha256(registry.path.read_bytes()).hexdigest()[:12]
    except OSError:
        digest = "unreadable"
    return f"sha256:{digest} ({len(registry.entries)} entries)"


def interface_addresses(name: str) -> list[str]:
    """The IPv4 and global IPv6 addresses of an interface (link-local v6 needs a scope: skipped)."""
    try:
        out = subprocess.run(["ip", "-j", "addr", "show", "dev", name], capture_output=True, text=True,
                             timeout=10, check=False).stdout
        data = json.loads(out or "[]")
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return []
    addrs: list[str] = []
    for iface in data if isinstance(data, list) else []:
        for a in iface.get("addr_info", []) if isinstance(iface, dict) else []:
            local = a.get("local") if isinstance(a, dict) else None
            if isinstance(local, str) and not ipaddress.ip_address(local).is_link_local:
                addrs.append(local)
    return addrs


def http_addresses(cfg: RunConfig) -> list[tuple[str, int]]:
    """(address, port) pairs for status.listen: addresses as given, interfaces resolved now."""
    out: list[tuple[str, int]] = []
    for item in cfg.status.listen:
        try:
            ipaddress.ip_address(item)
            addrs = [item]
        except ValueError:
            addrs = interface_addresses(item)
            if not addrs:
                log.warning("status: interface %s has no usable address: no status page there", item)
        out += [(a, cfg.status.port) for a in addrs if (a, cfg.status.port) not in out]
    return out


class Appliance:
    """Status state, status servers and the mDNS advertiser of one daemon, restartable on reload."""

    def __init__(self, cfg: RunConfig, registry: Registry) -> None:
        self.cfg = cfg
        self.state = StatusState(device_id=device_id(cfg), version=__version__, mode=mode_of(cfg))
        self.state.set(registry_version=registry_version(registry), queues=self._queues(cfg),
                       **registry_figures(registry))
        self.server: StatusServer | None = None
        self.advertiser: Advertiser | None = None

    @staticmethod
    def _queues(cfg: RunConfig) -> list[int]:
        return list(range(cfg.queue_num, cfg.queue_num + cfg.queue_count))

    def start_status(self) -> None:
        """The unix socket (and HTTP when configured): before READY, so `tunnelwatch status` works then."""
        st = self.cfg.status
        http = http_addresses(self.cfg) if st.listen and st.token else []
        try:
            self.server = StatusServer(self.state, socket_path=st.socket, http=http, token=st.token,
                                       token_file=str(st.token_file) if st.token_file else None)
            self.server.start()
        except (OSError, ValueError) as exc:
            log.error("status server: %s", exc)
            self.server = None

    def properties(self) -> dict[str, str]:
        """The TXT record: device id, version and where the status API is. Not the policy mode: anyone on
        the LAN reads it, and whether enforcement is on is for the token holder's status page."""
        snap = self.state.snapshot()
        return {"id": str(snap["device_id"]), "version": __version__, "status": STATUS_PATH}

    def start_discovery(self) -> None:
        """Advertise on the configured LAN interfaces (none = not at all)."""
        disc = self.cfg.discovery
        if not (disc.enabled and disc.interfaces):
            return
        try:
            from tunnelwatch.appliance.discovery import Advertiser, box_name
        except ImportError as exc:  # zeroconf is an optional daemon dependency
            log.warning("discovery disabled: %s", exc)
            return
        try:
            self.advertiser = Advertiser(interfaces=list(disc.interfaces), port=self.cfg.status.port,
                                         device_id=str(self.state.snapshot()["device_id"]),
                                         properties=self.properties(), name=box_name())
            self.advertiser.start()
        except (OSError, ValueError, RuntimeError) as exc:
            log.error("discovery: cannot advertise on %s: %s", ",".join(disc.interfaces), exc)
            self.advertiser = None

    def apply(self, cfg: RunConfig, registry: Registry) -> None:
        """A reloaded config: restart only the servers whose settings changed."""
        old, self.cfg = self.cfg, cfg
        self.state.set(mode=mode_of(cfg), registry_version=registry_version(registry), config_check="ok",
                       last_reload=time.time(), **registry_figures(registry))
        if cfg.status != old.status:
            if self.server is not None:
                self.server.stop()
            self.start_status()
        if cfg.discovery != old.discovery or cfg.status.port != old.status.port:
            self.stop_discovery()
            if cfg.discovery.device_id != old.discovery.device_id:
                self.state.set(device_id=device_id(cfg))
            self.start_discovery()
        elif self.advertiser is not None:
            self.advertiser.update(self.properties())

    def stop_discovery(self) -> None:
        """Withdraw the advertisement (goodbye packets)."""
        if self.advertiser is not None:
            try:
                self.advertiser.stop()
            except (OSError, RuntimeError) as exc:
                log.warning("discovery: stop: %s", exc)
            self.advertiser = None

    def stop(self) -> None:
        """Stop advertising and serving (at exit)."""
        self.stop_discovery()
        if self.server is not None:
            self.server.stop()
            self.server = None
