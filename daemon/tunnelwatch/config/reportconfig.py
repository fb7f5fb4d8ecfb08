"""The `report:` section of the configuration: spool, HTTPS uplink, IPFIX, registry sync, privacy, heartbeat.

Split from runconfig.py like appconfig.py: it reads secrets (the uplink token) at load time and checks
them the same way (owner root, no group/other access). Every reporting channel is off unless its URL or
collector is set; the spool and privacy settings always apply so a box can be switched to reporting by
adding one URL. Relative paths are relative to the file that wrote them; the defaults live in the state
directory systemd creates (StateDirectory=tunnelwatch -> /var/lib/tunnelwatch).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from yaml.nodes import Node, ScalarNode

from tunnelwatch.config.appconfig import read_secret
from tunnelwatch.config.yamlcheck import YamlReader, kind, relative_path
from tunnelwatch.verdict import CONFIDENCES

STATE_DIR: Final = Path("/var/lib/tunnelwatch")
PRIVACY_MODES: Final = ("clear", "hash", "omit")
TRANSPORTS: Final = ("udp", "tcp")
#: what an MQTT uplink does with PUBACK 0x10 "no matching subscribers" (docs/uplink.md)
UNROUTED: Final = ("retry", "accept")
_MB: Final = 1024 * 1024


@dataclass(frozen=True)
class SpoolConfig:
    """The durable event spool (SQLite) and its bounds; 100 MB suits an SD card."""

    path: Path = STATE_DIR / "spool.db"
    max_events: int = 1_000_000
    max_bytes: int = 100 * _MB
    retention_days: int = 30


@dataclass(frozen=True)
class UplinkConfig:
    """The ISP's collector (url None = reporting upward off) and how to authenticate to it."""

    url: str | None = None
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    token_file: Path | None = None
    token: str | None = field(default=None, repr=False)  # the secret itself: never logged
    batch_size: int = 500
    max_rate: float = 50.0
    keepalive: int = 60  # MQTT only: seconds between PINGs on an idle connection
    session_expiry: int = 7 * 86_400  # MQTT only: how long the broker keeps the box's session offline
    unrouted: str = "retry"  # MQTT only: a PUBACK 0x10 (no subscriber matched) keeps the batch, or "accept"

    @property
    def transport(self) -> str:
        """"mqtt" for an mqtts:// url (report/mqtt.py), else "https" (report/uplink.py)."""
        return "mqtt" if (self.url or "").startswith("mqtts://") else "https"


@dataclass(frozen=True)
class IpfixConfig:
    """IPFIX export of decided flows (collector None = off)."""

    collector: tuple[str, int] | None = None
    transport: str = "udp"
    enterprise: int = 32473


@dataclass(frozen=True)
class RegistrySyncConfig:
    """Periodic fetch of the ISP-signed registry (url None = off)."""

    url: str | None = None
    public_key: str | None = None
    ca_file: Path | None = None
    interval: int = 900
    #: the group a document may name instead of this box's device id (docs/registry-sync.md)
    group: str | None = None
    #: accept documents naming neither device nor group (signed before scoping existed); off by default
    accept_unscoped: bool = False


@dataclass(frozen=True)
class PrivacyConfig:
    """How subscriber (LAN) addresses appear in reports."""

    #: hash: the box's device id already names the subscriber line; which LAN host did what stays local
    subscriber_addresses: str = "hash"
    key_file: Path = STATE_DIR / "privacy.key"
    subscriber_nets: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportConfig:
    """Everything about reporting upward."""

    spool: SpoolConfig = SpoolConfig()
    uplink: UplinkConfig = UplinkConfig()
    ipfix: IpfixConfig = IpfixConfig()
    registry_sync: RegistrySyncConfig = RegistrySyncConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    heartbeat: int = 300
    state_dir: Path = STATE_DIR
    #: weakest confidence of a tagged (not blocked, not registered) flow reported one by one; weaker
    #: ones (a port number alone, by default) are only counted in the heartbeat
    min_confidence: str = "heuristic"


def _null(r: YamlReader, node: Node) -> bool:
    return isinstance(node, ScalarNode) and r.value(node) is None


def _path(r: YamlReader, f: dict[str, Node], key: str, what: str, path: str, default: Path | None
          ) -> Path | None:
    if key not in f or _null(r, f[key]):
        return default if key not in f else None
    s = r.string(f[key], what)
    return relative_path(f[key], s, path) if s is not None else default


def _https(r: YamlReader, f: dict[str, Node], what: str, mqtt: bool = False) -> str | None:
    if "url" not in f or _null(r, f["url"]):
        return None
    s = r.string(f["url"], what)
    if s is None:
        return None
    try:
        parts = urlsplit(s)
    except ValueError:  # e.g. "https://[]/" or "https://[x]/": urlsplit checks bracketed hosts itself
        parts = urlsplit("")
    if mqtt and parts.scheme == "mqtts" and parts.hostname and parts.path.strip("/"):
        r.err(f["url"], f"{what} is mqtts://host[:port] with no path: the topics are fixed "
                        f"(tunnelwatch/v1/<device id>/...) (got {kind(f['url'])})")
        return None
    if parts.scheme not in (("https", "mqtts") if mqtt else ("https",)) or not parts.hostname:
        alt = " or mqtts://host[:port] (MQTT 5 over TLS)" if mqtt else ""
        r.err(f["url"], f"{what} must be https://host[:port][/path]{alt} (got {kind(f['url'])}); reports "
                        "and registries only travel over TLS")
        return None
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        r.err(f["url"], f"{what} has a bad port (got {kind(f['url'])})")
        return None
    return s


def _spool(r: YamlReader, node: Node, path: str, state: Path) -> SpoolConfig:
    f = r.mapping(node, ("path", "max_events", "max_bytes", "retention_days"), "report.spool")
    b = SpoolConfig(path=state / "spool.db")
    p = _path(r, f, "path", "report.spool.path", path, b.path)
    if p is None:
        r.err(f["path"], "report.spool.path cannot be null: events are spooled before they are sent")
    return SpoolConfig(
        p or b.path,
        r.opt(f, "max_events", lambda n: r.integer(n, "report.spool.max_events", 100, 100_000_000),
              b.max_events),
        r.opt(f, "max_bytes", lambda n: r.integer(n, "report.spool.max_bytes", _MB, 2**40), b.max_bytes),
        r.opt(f, "retention_days", lambda n: r.integer(n, "report.spool.retention_days", 1, 3650),
              b.retention_days),
    )


def _key_exposed(key: Path) -> str:
    """Why a private key file is exposed to other users ("" when it is not, or does not exist yet)."""
    try:
        st = key.stat()
    except OSError:
        return ""  # not there yet (provisioned later): the uplink says so when it starts
    if st.st_uid not in (0, os.getuid()):
        return f"{key} is owned by uid {st.st_uid}: chown root {key}"
    if st.st_mode & 0o077:
        return (f"{key} is readable by group/others (mode {stat.S_IMODE(st.st_mode):04o}): "
                f"chmod 600 {key}")
    return ""


def _uplink(r: YamlReader, node: Node, path: str) -> UplinkConfig:
    f = r.mapping(node, ("url", "ca_file", "client_cert", "client_key", "token_file", "batch_size",
                         "max_rate", "keepalive", "session_expiry", "unrouted"), "report.uplink")
    b = UplinkConfig()
    url = _https(r, f, "report.uplink.url", mqtt=True)
    cert = _path(r, f, "client_cert", "report.uplink.client_cert", path, None)
    key = _path(r, f, "client_key", "report.uplink.client_key", path, None)
    if key is not None and "client_key" in f:
        problem = _key_exposed(key)
        if problem:
            r.err(f["client_key"], f"report.uplink.client_key: {problem}")
    if (cert is None) != (key is None):
        r.err(f.get("client_cert") or f["client_key"],
              "report.uplink.client_cert and client_key go together: set both (mutual TLS) or neither")
    token_file = _path(r, f, "token_file", "report.uplink.token_file", path, None)
    token: str | None = None
    if token_file is not None:
        try:
            token = read_secret(token_file)
        except ValueError as exc:
            r.err(f["token_file"], f"report.uplink.token_file: {exc}")
    rate = b.max_rate
    if "max_rate" in f:
        v = r.value(f["max_rate"])
        if isinstance(v, int | float) and not isinstance(v, bool) and 0.01 <= v <= 10_000:
            rate = float(v)
        else:
            r.err(f["max_rate"], f"report.uplink.max_rate must be a number of batches per second between "
                                 f"0.01 and 10000 (got {kind(f['max_rate'])})")
    _mqtt_checks(r, f, url, cert)
    return UplinkConfig(
        url, _path(r, f, "ca_file", "report.uplink.ca_file", path, None), cert, key, token_file, token,
        r.opt(f, "batch_size", lambda n: r.integer(n, "report.uplink.batch_size", 1, 10_000), b.batch_size),
        rate,
        r.opt(f, "keepalive", lambda n: r.integer(n, "report.uplink.keepalive", 5, 3600), b.keepalive),
        r.opt(f, "session_expiry", lambda n: r.integer(n, "report.uplink.session_expiry", 60, 2**32 - 2),
              b.session_expiry),
        r.opt(f, "unrouted", lambda n: r.string(n, "report.uplink.unrouted", UNROUTED), b.unrouted))


def _mqtt_checks(r: YamlReader, f: dict[str, Node], url: str | None, cert: Path | None) -> None:
    """What an mqtts:// uplink needs (a client certificate) and what only it takes (keepalive, ...)."""
    if url is not None and url.startswith("mqtts://"):
        if cert is None and "client_cert" not in f and "client_key" not in f:
            r.err(f["url"], "report.uplink.url mqtts:// needs client_cert and client_key: the broker "
                            "knows a box by its certificate (its CN is the device id)")
        if "token_file" in f and not _null(r, f["token_file"]):
            r.err(f["token_file"], "report.uplink.token_file is for an https:// collector; an MQTT broker "
                                   "authenticates the box by its client certificate")
        return
    # keepalive/session_expiry with an https:// url are ignored, not refused: the shipped tunnelwatch.yaml
    # spells out every default, so a technician who only sets `url: https://...` must get a valid config


def _collector(r: YamlReader, node: Node) -> tuple[str, int] | None:
    s = r.string(node, "report.ipfix.collector")
    if s is None:
        return None
    host, sep, port = s.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        ok = sep == ":" and port.isdigit() and 1 <= int(port) <= 65535
    except ValueError:
        ok = False
    if not ok:
        r.err(node, "report.ipfix.collector must be ADDRESS:PORT, e.g. 192.0.2.50:4739 or "
                    f"[2001:db8::5]:4739 (got {kind(node)})")
        return None
    return host, int(port)


def _ipfix(r: YamlReader, node: Node) -> IpfixConfig:
    f = r.mapping(node, ("collector", "transport", "enterprise"), "report.ipfix")
    b = IpfixConfig()
    coll = _collector(r, f["collector"]) if "collector" in f and not _null(r, f["collector"]) else None
    return IpfixConfig(
        coll,
        r.opt(f, "transport", lambda n: r.string(n, "report.ipfix.transport", TRANSPORTS), b.transport),
        r.opt(f, "enterprise", lambda n: r.integer(n, "report.ipfix.enterprise", 1, 2**32 - 1), b.enterprise))


def _sync(r: YamlReader, node: Node, path: str) -> RegistrySyncConfig:
    f = r.mapping(node, ("url", "public_key", "ca_file", "interval", "group", "accept_unscoped"),
                  "report.registry_sync")
    b = RegistrySyncConfig()
    url = _https(r, f, "report.registry_sync.url")
    key: str | None = None
    if "public_key" in f and not _null(r, f["public_key"]):
        key = r.string(f["public_key"], "report.registry_sync.public_key")
        try:
            raw = base64.b64decode(key or "", validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if key is not None and len(raw) != 32:
            r.err(f["public_key"], "report.registry_sync.public_key must be the ISP's Ed25519 public key, "
                                   "base64 of 32 bytes "
                                   "(python -m tunnelwatch.policy.regsync keygen prints it)")
            key = None
    if url is not None and key is None and "public_key" not in f:
        r.err(f["url"], "report.registry_sync.url needs report.registry_sync.public_key: an unsigned "
                        "registry is never applied")
    return RegistrySyncConfig(
        url, key, _path(r, f, "ca_file", "report.registry_sync.ca_file", path, None),
        r.opt(f, "interval", lambda n: r.integer(n, "report.registry_sync.interval", 10, 604_800),
              b.interval),
        r.string(f["group"], "report.registry_sync.group") if "group" in f and not _null(r, f["group"])
        else b.group,
        r.opt(f, "accept_unscoped", lambda n: r.boolean(n, "report.registry_sync.accept_unscoped"),
              b.accept_unscoped))


def _privacy(r: YamlReader, node: Node, path: str, state: Path) -> PrivacyConfig:
    f = r.mapping(node, ("subscriber_addresses", "key_file", "subscriber_nets"), "report.privacy")
    b = PrivacyConfig(key_file=state / "privacy.key")
    nets: list[str] = []
    for n in r.seq(f["subscriber_nets"], "report.privacy.subscriber_nets") if "subscriber_nets" in f else []:
        s = r.value(n)
        try:
            nets.append(str(ipaddress.ip_network(str(s), strict=False)) if isinstance(s, str) else "")
        except ValueError:
            nets.append("")
        if not nets[-1]:
            nets.pop()
            r.err(n, f"report.privacy.subscriber_nets item must be a network, e.g. 192.168.1.0/24 "
                     f"(got {kind(n)})")
    key = _path(r, f, "key_file", "report.privacy.key_file", path, b.key_file)
    if key is None:
        r.err(f["key_file"], "report.privacy.key_file cannot be null (it is created, mode 0600, if missing)")
    return PrivacyConfig(
        r.opt(f, "subscriber_addresses",
              lambda n: r.string(n, "report.privacy.subscriber_addresses", PRIVACY_MODES),
              b.subscriber_addresses),
        key or b.key_file, tuple(nets))


def report_section(r: YamlReader, node: Node, path: str) -> ReportConfig:
    """The report section (reads and checks the uplink token file)."""
    f = r.mapping(node, ("state_dir", "spool", "uplink", "ipfix", "registry_sync", "privacy", "heartbeat",
                         "min_confidence"), "report")
    b = ReportConfig()
    state = _path(r, f, "state_dir", "report.state_dir", path, b.state_dir) or b.state_dir
    # the files not named explicitly follow state_dir, so moving the state dir moves them all
    spool = _spool(r, f["spool"], path, state) if "spool" in f else SpoolConfig(path=state / "spool.db")
    privacy = _privacy(r, f["privacy"], path, state) if "privacy" in f \
        else PrivacyConfig(key_file=state / "privacy.key")
    return ReportConfig(
        spool=spool,
        uplink=_uplink(r, f["uplink"], path) if "uplink" in f else UplinkConfig(),
        ipfix=_ipfix(r, f["ipfix"]) if "ipfix" in f else IpfixConfig(),
        registry_sync=_sync(r, f["registry_sync"], path) if "registry_sync" in f else RegistrySyncConfig(),
        privacy=privacy,
        heartbeat=r.opt(f, "heartbeat", lambda n: r.integer(n, "report.heartbeat", 1, 86_400), b.heartbeat),
        state_dir=state,
        min_confidence=r.opt(f, "min_confidence",
                             lambda n: r.string(n, "report.min_confidence", CONFIDENCES), b.min_confidence),
    )
