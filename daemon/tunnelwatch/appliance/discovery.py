"""mDNS discovery: the box advertises `_tunnelwatch._tcp.local.` on its LAN interfaces only, and
`tunnelwatch discover` lists the boxes a technician's laptop can see.

Never on the WAN: each LAN interface gets its own Zeroconf instance, told only that interface's addresses
(so it joins the multicast group and answers only there) and with its sockets pinned to the device
(SO_BINDTODEVICE), because zeroconf's shared listening socket is bound to the wildcard address and would
otherwise answer a unicast query sent to the router's WAN address. If pinning fails (no CAP_NET_RAW on an
old kernel) a warning says the firewall must drop udp/5353 from the WAN. Hostile mDNS input is zeroconf's
to parse; everything printed from it here is made printable first.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import re
import socket
import sys
import threading
import time
from typing import Final

import ifaddr
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from tunnelwatch.text import printable

log = logging.getLogger(__name__)


class _QuietExpected(logging.Filter):
    """zeroconf warns on every start that an address is not available, "expected to happen on some
    systems" (an interface without that address family): nothing a technician can act on; debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and "expected to happen on some systems" in record.getMessage():
            log.debug("zeroconf: %s", record.getMessage())
            return False
        return True


logging.getLogger("zeroconf").addFilter(_QuietExpected())

SERVICE_TYPE: Final = "_tunnelwatch._tcp.local."
_HOST_LABEL = re.compile(r"[^a-z0-9-]+")
_RESOLVE_TOTAL_S: Final = 5.0


def interface_addresses(ifname: str) -> tuple[list[str], int | None]:
    """(IPv4 addresses, interface index when it has IPv6) of one interface; ([], None) when absent."""
    for adapter in ifaddr.get_adapters():
        if adapter.nice_name != ifname and adapter.name != ifname:
            continue
        v4 = [ip.ip for ip in adapter.ips if isinstance(ip.ip, str)]
        has_v6 = any(isinstance(ip.ip, tuple) for ip in adapter.ips)
        return v4, (adapter.index if has_v6 and adapter.index else None)
    return [], None


def _routable_v6(ifname: str) -> list[str]:
    """IPv6 addresses of an interface without link-local/loopback ones (they need a scope A/AAAA lack)."""
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        if adapter.nice_name == ifname or adapter.name == ifname:
            for ip in adapter.ips:
                if isinstance(ip.ip, tuple) and not _scoped(ipaddress.IPv6Address(ip.ip[0])):
                    out.append(ip.ip[0])
    return out


def _scoped(a: ipaddress.IPv6Address) -> bool:
    return a.is_link_local or a.is_loopback


def lan_addresses(ifname: str) -> list[str]:
    """IPv4 and routable IPv6 addresses of an interface: what to advertise, and where the daemon can bind
    the status page (StatusServer's `http` pairs)."""
    return interface_addresses(ifname)[0] + _routable_v6(ifname)


def instance_name(device_id: str) -> str:
    """The DNS-SD instance label for a device id: dots dropped, at most 63 bytes."""
    label = device_id.replace(".", "-").strip() or "tunnelwatch"
    while len(label.encode()) > 63:
        label = label[:-1]
    return label


def box_name() -> str:
    """The name a technician knows the box by (its host name, first label), for the DNS-SD instance;
    "" when it has none worth showing (then the device id stands in)."""
    name = socket.gethostname().split(".")[0].strip()
    return "" if name.lower() in ("", "localhost", "localhost-localdomain") else name


def _host_name(device_id: str) -> str:
    label = _HOST_LABEL.sub("-", device_id.lower()).strip("-")[:50] or "box"
    return f"tunnelwatch-{label}.local."


def _pin(zc: Zeroconf, ifname: str) -> bool:
    """Bind every socket of a Zeroconf instance to one device; False when the kernel refuses."""
    try:
        socks = [t.sock for t in zc.engine.readers]
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    except (OSError, AttributeError) as exc:
        log.warning("mDNS on %s not pinned to the device (%s): drop udp/5353 from the WAN in the firewall",
                    ifname, exc)
        return False
    return bool(socks)


class Advertiser:
    """Announces this box on the LAN interfaces; update() changes the TXT record, stop() says goodbye."""

    def __init__(self, *, interfaces: list[str], port: int, device_id: str,
                 properties: dict[str, str], name: str | None = None) -> None:
        self.interfaces = list(interfaces)
        self.port = port
        self.device_id = device_id
        # the instance name (discover's NAME) is what the box is called, the id is in the TXT record
        # (discover's ID): both the device id made the two columns say the same thing
        self.name = instance_name(name or device_id)
        self.properties = self._txt(properties)
        self.ready = threading.Event()  # set once every interface finished registering (or failed)
        self._zcs: list[tuple[Zeroconf, ServiceInfo]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _txt(self, properties: dict[str, str]) -> dict[str, str]:
        txt = {"txtvers": "1", "id": self.device_id, **properties}
        for k, v in txt.items():
            if len(f"{k}={v}".encode()) > 255:
                raise ValueError(f"TXT entry {k!r} longer than 255 bytes")
        return txt

    def _info(self, ifname: str) -> ServiceInfo | None:
        addrs = lan_addresses(ifname)
        if not addrs:
            return None
        return ServiceInfo(SERVICE_TYPE, f"{self.name}.{SERVICE_TYPE}", port=self.port,
                           properties=dict(self.properties), server=_host_name(self.device_id),
                           parsed_addresses=addrs)

    def start(self) -> None:
        """Register in a background thread (mDNS probing takes about a second); `ready` is set after."""
        self._thread = threading.Thread(target=self._register_all, name="mdns advertiser", daemon=True)
        self._thread.start()

    def _register_all(self) -> None:
        try:
            for ifname in self.interfaces:
                try:
                    self._register(ifname)
                except Exception as exc:  # one broken interface must not stop the others, nor the daemon
                    log.error("mDNS on %s: %s", ifname, exc)
        finally:
            self.ready.set()

    def _register(self, ifname: str) -> None:
        v4, v6_index = interface_addresses(ifname)
        info = self._info(ifname)
        choice: list[str | int] = [*v4, *([v6_index] if v6_index is not None else [])]
        if info is None or not choice:
            log.warning("mDNS: interface %s has no address: not advertising there", ifname)
            return
        version = IPVersion.All if v4 and v6_index is not None else (
            IPVersion.V4Only if v4 else IPVersion.V6Only)
        zc = Zeroconf(interfaces=choice, ip_version=version)
        _pin(zc, ifname)
        try:
            zc.register_service(info, allow_name_change=True)
        except Exception:
            zc.close()
            raise
        with self._lock:
            self._zcs.append((zc, info))
        log.info("mDNS: advertising %s on %s (%s)", info.name, ifname, ", ".join(info.parsed_addresses()))

    def update(self, properties: dict[str, str]) -> None:
        """Replace the TXT properties (id and txtvers are kept) and re-announce."""
        self.properties = self._txt(properties)
        with self._lock:
            for i, (zc, old) in enumerate(self._zcs):
                # keep the registered name: zeroconf may have renamed us after a conflict
                info = ServiceInfo(SERVICE_TYPE, old.name, port=old.port, properties=dict(self.properties),
                                   server=old.server, parsed_addresses=old.parsed_addresses())
                try:
                    zc.update_service(info)
                except Exception as exc:
                    log.error("mDNS update: %s", exc)
                    continue
                self._zcs[i] = (zc, info)

    def stop(self) -> None:
        """Unregister (goodbye packets) and close every socket."""
        if self._thread is not None:
            self._thread.join(timeout=15)
        with self._lock:
            zcs, self._zcs = self._zcs, []
        for zc, info in zcs:
            try:
                zc.unregister_service(info)
            except Exception as exc:
                log.debug("mDNS unregister: %s", exc)
            finally:
                zc.close()


def _box(info: ServiceInfo) -> dict[str, object]:
    props: dict[str, str] = {}
    for k, v in (info.properties or {}).items():
        key = k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)
        props[key] = v.decode("utf-8", "replace") if isinstance(v, bytes) else ""
    name = info.name.removesuffix("." + SERVICE_TYPE)
    return {"name": name, "addresses": sorted(info.parsed_scoped_addresses()), "port": info.port,
            "server": info.server, "properties": props}


def browse(timeout: float) -> list[dict[str, object]]:
    """Boxes answering on any interface within `timeout` seconds, resolved (bounded in time)."""
    names: set[str] = set()
    lock = threading.Lock()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            with lock:
                names.add(name)

    zc = Zeroconf()
    try:
        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
        time.sleep(max(0.0, timeout))  # the browse window itself: mDNS has no "all answers are in"
        browser.cancel()
        with lock:
            found = sorted(names)
        boxes: list[dict[str, object]] = []
        deadline = time.monotonic() + _RESOLVE_TOTAL_S
        for name in found:
            left = deadline - time.monotonic()
            info = zc.get_service_info(SERVICE_TYPE, name, timeout=int(max(left, 0.2) * 1000))
            if info is not None:
                boxes.append(_box(info))
        return boxes
    finally:
        zc.close()


def cli_discover(args: argparse.Namespace) -> int:
    """`tunnelwatch discover`: list the boxes on this network; exit 0 when any was found, 1 otherwise."""
    timeout = float(getattr(args, "timeout", 3.0) or 3.0)
    boxes = browse(min(max(timeout, 0.5), 120.0))
    if getattr(args, "json", False):
        print(json.dumps(boxes, indent=2))
    elif boxes:
        cols = ("name", "id", "addresses", "port", "version", "url")
        rows = []
        for b in boxes:
            props = b["properties"] if isinstance(b["properties"], dict) else {}
            addrs = b["addresses"] if isinstance(b["addresses"], list) else []
            path = props.get("path") or props.get("status") or "/"
            url = f"http://{_urlhost(addrs)}:{b['port']}{path}" if addrs else ""
            rows.append({"name": printable(b["name"], 63), "id": printable(props.get("id", ""), 63),
                         "addresses": printable(" ".join(addrs), 80),
                         "port": str(b["port"]), "version": printable(props.get("version", ""), 20),
                         "url": printable(url, 100)})
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
        print(" ".join(f"{c.upper():{widths[c]}}" for c in cols).rstrip())
        for r in rows:
            print(" ".join(f"{r[c]:{widths[c]}}" for c in cols).rstrip())
    if not boxes:
        print(f"tunnelwatch: no boxes answered within {timeout:g} s", file=sys.stderr)
        return 1
    return 0


def _urlhost(addrs: list[str]) -> str:
    v4 = [a for a in addrs if ":" not in a]
    return v4[0] if v4 else f"[{addrs[0].replace('%', '%25')}]"  # a zone id is %25-escaped in a URL
