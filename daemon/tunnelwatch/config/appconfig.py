"""The appliance sections of the configuration: the status socket/HTTP API, mDNS discovery, secrets.

Split from runconfig.py (the schema's core) because these sections touch the file system at load time:
the status token is a secret read from its own file, which must be owned by root (or the daemon's user)
and not readable by group or others, so a leaked config file never leaks the API token.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from yaml.nodes import Node, ScalarNode

from tunnelwatch.config.yamlcheck import YamlReader, kind, relative_path

DEFAULT_SOCKET: Final = "/run/tunnelwatch/status.sock"
_IFNAME: Final = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


@dataclass(frozen=True)
class StatusConfig:
    """The status socket (root-only, no token) and the token-protected HTTP API on LAN addresses."""

    socket: str | None = DEFAULT_SOCKET
    listen: tuple[str, ...] = ()
    port: int = 8787
    token_file: Path | None = None
    token: str | None = field(default=None, repr=False)  # the secret itself: never logged
    uplink_grace: int = 600  # seconds the uplink may fail before health degrades (appliance/health.py)


@dataclass(frozen=True)
class DiscoveryConfig:
    """mDNS advertisement of this box on LAN interfaces (none listed = not advertised)."""

    enabled: bool = True
    interfaces: tuple[str, ...] = ()
    device_id: str | None = None


def read_secret(path: Path) -> str:
    """A secret's first line; refuses files others can read or that belong to someone else (ValueError)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
    if st.st_uid not in (0, os.getuid()):
        raise ValueError(f"{path} is owned by uid {st.st_uid}: chown root {path}")
    if st.st_mode & 0o077:
        raise ValueError(f"{path} is readable by group/others (mode {stat.S_IMODE(st.st_mode):04o}): "
                         f"chmod 600 {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    token = lines[0].strip() if lines else ""
    if len(token) < 16:
        raise ValueError(f"{path}: the token must be at least 16 characters (e.g. openssl rand -hex 24)")
    return token


def _names(r: YamlReader, node: Node, what: str, addresses: bool) -> tuple[str, ...]:
    out: list[str] = []
    for n in r.seq(node, what):
        s = r.value(n)
        # digits-and-dots or a colon: meant as an address (10.0.0.300 is a typo, not an interface)
        looks_ip = isinstance(s, str) and (":" in s or re.fullmatch(r"[\d.]+", s) is not None)
        ok = isinstance(s, str) and not looks_ip and bool(_IFNAME.match(s))
        if isinstance(s, str) and addresses and looks_ip:
            try:
                ipaddress.ip_address(s)
                ok = True
            except ValueError:
                pass
        if not ok:
            want = "an interface name or an IP address" if addresses else "an interface name"
            r.err(n, f"{what} item must be {want}, e.g. br-lan (got {kind(n)})")
        elif s not in out:
            out.append(str(s))
    return tuple(out)


def _not_lan(value: object) -> str:
    """Why an address cannot be a LAN-only listening address ("" when it can, or when it is a name)."""
    try:
        ip = ipaddress.ip_address(str(value))
    except ValueError:
        return ""
    if ip.is_unspecified:
        return "listens on every interface, WAN included"
    if not (ip.is_private or ip.is_link_local or ip.is_loopback):
        return "is a global address (reachable from the Internet side)"
    return ""


def _null(r: YamlReader, node: Node) -> bool:
    return isinstance(node, ScalarNode) and r.value(node) is None


def status_section(r: YamlReader, node: Node, path: str) -> StatusConfig:
    """The status section (reads and checks the token file)."""
    f = r.mapping(node, ("socket", "listen", "port", "token_file", "uplink_grace"), "status")
    base = StatusConfig()
    sock: str | None = base.socket
    if "socket" in f:
        v = r.value(f["socket"])
        if _null(r, f["socket"]):
            sock = None  # explicitly off
        elif isinstance(v, str) and v.startswith("/"):
            sock = v
        else:
            r.err(f["socket"], f"status.socket must be an absolute path or null (got {kind(f['socket'])})")
    listen = _names(r, f["listen"], "status.listen", True) if "listen" in f else ()
    for n in r.seq(f["listen"], "status.listen") if listen else []:
        why = _not_lan(r.value(n))
        if why:
            r.err(n, f"status.listen: {r.value(n)} {why}: the status API is for the LAN only; name the LAN "
                     "interface (e.g. br-lan) or its address")
    port = r.opt(f, "port", lambda n: r.integer(n, "status.port", 1, 65535), base.port)
    token_file: Path | None = None
    token: str | None = None
    if "token_file" in f and not _null(r, f["token_file"]):
        s = r.string(f["token_file"], "status.token_file")
        if s is not None:
            token_file = relative_path(f["token_file"], s, path)
            try:
                token = read_secret(token_file)
            except ValueError as exc:
                r.err(f["token_file"], f"status.token_file: {exc}")
    if listen and token_file is None:
        r.err(f["listen"], "status.listen needs status.token_file: the HTTP API is only served with a token")
    grace = r.opt(f, "uplink_grace", lambda n: r.integer(n, "status.uplink_grace", 1, 86_400),
                  base.uplink_grace)
    return StatusConfig(sock, listen, port, token_file, token, grace)


def discovery_section(r: YamlReader, node: Node) -> DiscoveryConfig:
    """The discovery section."""
    f = r.mapping(node, ("enabled", "interfaces", "device_id"), "discovery")
    dev: str | None = None
    if "device_id" in f and not _null(r, f["device_id"]):
        dev = r.string(f["device_id"], "discovery.device_id")
        if dev is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,63}", dev):
            r.err(f["device_id"], "discovery.device_id must be 1-63 letters, digits, '.', '_' or '-'")
            dev = None
    return DiscoveryConfig(
        enabled=r.opt(f, "enabled", lambda n: r.boolean(n, "discovery.enabled"), True),
        interfaces=_names(r, f["interfaces"], "discovery.interfaces", False) if "interfaces" in f else (),
        device_id=dev,
    )
