"""IPFIX (RFC 7011) flow export: templates, data records and the UDP/TCP transport to one collector.

The tag travels in standard elements: applicationId (IE 95, RFC 6759 format with classification engine 20
"PANA-L7-PEN": engine id, our enterprise number, then a 4-byte selector from `APP_SELECTORS`) and
applicationName (IE 96, the protocol name, e.g. "openvpn"). klass, confidence, action, registration id and
a subscriber pseudonym are enterprise-specific elements under a configurable Private Enterprise Number.
Export is best effort (the spool + uplink is the durable channel): network errors are logged and counted,
never raised into the daemon. docs/ipfix.md lists every field.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tunnelwatch.record import FlowRecord
from tunnelwatch.report.privacy import Pseudonymizer

log = logging.getLogger(__name__)

VERSION = 10
TEMPLATE_SET_ID = 2
TEMPLATE_V4 = 256
TEMPLATE_V6 = 257
VARLEN = 65535
#: RFC 6759 classification engine "PANA-L7-PEN": selectors assigned by the enterprise named in the value.
ENGINE_PANA_L7_PEN = 20
#: Stable selector ids for applicationId; a name missing here is exported with selector 0 (its name is
#: still in applicationName). Append only: collectors may store these numbers.
APP_SELECTORS: dict[str, int] = {
    "openvpn": 1, "wireguard": 2, "ike": 3, "esp": 4, "ah": 5, "l2tp": 6, "pptp": 7, "gre": 8,
    "anyconnect": 9, "sip": 10, "rtp": 11, "rtcp": 12, "stun": 13, "turn": 14, "dns": 15, "mdns": 16,
    "llmnr": 17, "tls": 18, "dtls": 19, "http": 20, "quic": 21, "ntp": 22, "dhcp": 23, "ssdp": 24, "ssh": 25,
}
#: Enterprise-specific element ids under the configured PEN (all strings).
E_KLASS, E_CONFIDENCE, E_ACTION, E_REGISTRATION, E_SUBSCRIBER = 1, 2, 3, 4, 5
_PROTOS = {"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51, "icmpv6": 58, "sctp": 132}
#: Keeps one UDP message inside a 1500-byte path MTU with room for IPv6 + UDP headers.
MAX_UDP_MESSAGE = 1400
_MAX_STR = 128


@dataclass(frozen=True)
class _Field:
    ie: int
    length: int
    pen: int = 0


def _fields(v6: bool, pen: int) -> list[_Field]:
    return [
        _Field(27 if v6 else 8, 16 if v6 else 4), _Field(28 if v6 else 12, 16 if v6 else 4),
        _Field(7, 2), _Field(11, 2), _Field(4, 1), _Field(1, 8), _Field(2, 8), _Field(152, 8), _Field(153, 8),
        _Field(95, VARLEN), _Field(96, VARLEN),
        *(_Field(e, VARLEN, pen) for e in (E_KLASS, E_CONFIDENCE, E_ACTION, E_REGISTRATION, E_SUBSCRIBER)),
    ]


def template_record(template_id: int, fields: list[_Field]) -> bytes:
    """One template record: id, field count and the field specifiers (enterprise bit when pen != 0)."""
    out = struct.pack("!HH", template_id, len(fields))
    for f in fields:
        if f.pen:
            out += struct.pack("!HHI", f.ie | 0x8000, f.length, f.pen)
        else:
            out += struct.pack("!HH", f.ie, f.length)
    return out


def varlen(data: bytes) -> bytes:
    """RFC 7011 section 7 variable-length encoding (1-byte length, or 255 + 2-byte length)."""
    if len(data) < 255:
        return bytes([len(data)]) + data
    return b"\xff" + struct.pack("!H", len(data)) + data


def _text(v: object) -> bytes:
    b = str(v).encode("utf-8", "replace") if v is not None else b""
    return b[:_MAX_STR].decode("utf-8", "ignore").encode()


def app_id(protocol: str, pen: int) -> bytes:
    """applicationId value: engine 20, the PEN, then the 4-byte selector of this protocol."""
    return struct.pack("!BII", ENGINE_PANA_L7_PEN, pen, APP_SELECTORS.get(protocol, 0))


def _proto(v: object) -> int:
    if isinstance(v, int) and 0 <= v <= 255:
        return v
    return _PROTOS.get(str(v).lower(), 0)


def _int(v: object, hi: int) -> int:
    try:
        n = int(str(v)) if not isinstance(v, int | float) else int(v)
    except (TypeError, ValueError, OverflowError):
        return 0
    return min(max(n, 0), hi)


def _ms(v: object, default: float) -> int:
    try:
        t = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float range
        t = default
    if not math.isfinite(t) or t < 0 or t > 2**40:
        t = default
    return int(t * 1000)


class IpfixExporter:
    """Exports tagged flows to one collector: UDP (templates repeated) or TCP (templates per session)."""

    def __init__(self, collector: tuple[str, int], *, transport: str = "udp", observation_domain: int = 1,
                 enterprise: int = 32473, template_refresh: float = 600,
                 pseudonymizer: Pseudonymizer | None = None, clock: Callable[[], float] = time.time,
                 timeout: float = 5.0) -> None:
        if transport not in ("udp", "tcp"):
            raise ValueError(f"IPFIX transport must be udp or tcp, not {transport!r}")
        if not 0 < enterprise < 2**32:
            raise ValueError("IPFIX enterprise number must be 1..4294967295")
        self.collector = collector
        self.transport = transport
        self.domain = observation_domain
        self.pen = enterprise
        self.refresh = template_refresh
        self.privacy = pseudonymizer
        self.clock = clock
        self.timeout = timeout
        self.seq = 0
        self.stats = {"messages": 0, "records": 0, "skipped": 0, "errors": 0}
        self._templates = (template_record(TEMPLATE_V4, _fields(False, self.pen))
                           + template_record(TEMPLATE_V6, _fields(True, self.pen)))
        self._last_templates: float | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def export(self, flows: Iterable[FlowRecord | Mapping[str, object]]) -> None:
        """Send these flows (records, or event-style dicts); unusable flows are skipped, errors logged."""
        recs: list[tuple[int, bytes]] = []
        for f in flows:
            r = self._record(f.fields() if isinstance(f, FlowRecord) else f)
            if r is None:
                self.stats["skipped"] += 1
            else:
                recs.append(r)
        if not recs:
            return
        with self._lock:
            try:
                self._send_records(recs)
            except OSError as exc:
                self.stats["errors"] += 1
                log.warning("ipfix: export to %s:%d/%s failed: %s", *self.collector, self.transport, exc)
                self._close_socket()

    def close(self) -> None:
        """Close the socket (TCP: the collector sees the end of the session)."""
        with self._lock:
            self._close_socket()

    def _record(self, f: Mapping[str, object]) -> tuple[int, bytes] | None:
        try:
            src = ipaddress.ip_address(str(f.get("src")))
            dst = ipaddress.ip_address(str(f.get("dst")))
        except ValueError:
            return None
        if src.version != dst.version:
            return None
        subscriber = ""
        if self.privacy is not None and self.privacy.covers(str(src)):
            subscriber = self.privacy.addr(str(src)) or ""
            if self.privacy.mode != "clear":
                # A pseudonym does not fit an address field: the address is zeroed, the pseudonym rides
                # in its own element.
                src = ipaddress.ip_address("::" if src.version == 6 else "0.0.0.0")
            else:
                subscriber = ""
        now = self.clock()
        protocol = str(f.get("protocol") or "")
        body = (src.packed + dst.packed
                + struct.pack("!HHBQQQQ", _int(f.get("sport"), 65535), _int(f.get("dport"), 65535),
                              _proto(f.get("transport")), _int(f.get("bytes"), 2**64 - 1),
                              _int(f.get("packets"), 2**64 - 1), _ms(f.get("first_seen"), now),
                              _ms(f.get("last_seen"), now))
                + varlen(app_id(protocol, self.pen) if protocol else b"") + varlen(_text(protocol))
                + b"".join(varlen(_text(f.get(k) or "")) for k in ("klass", "confidence", "action",
                                                                    "registration_id"))
                + varlen(_text(subscriber)))
        return (TEMPLATE_V6 if src.version == 6 else TEMPLATE_V4), body

    def _send_records(self, recs: list[tuple[int, bytes]]) -> None:
        self._ensure_socket()
        if self.transport == "udp" and (self._last_templates is None
                                        or self.clock() - self._last_templates >= self.refresh):
            # UDP has no session: the collector may have restarted, so templates are repeated (RFC 7011 8.4).
            self._send_message([(TEMPLATE_SET_ID, self._templates)], 0)
            self._last_templates = self.clock()
        limit = MAX_UDP_MESSAGE if self.transport == "udp" else 65535
        i = 0
        while i < len(recs):
            sets: list[tuple[int, bytes]] = []
            size, count = 16, 0
            while i < len(recs):
                tid, body = recs[i]
                extra = len(body) + (4 if not sets or sets[-1][0] != tid else 0)
                if count and size + extra > limit:
                    break
                if sets and sets[-1][0] == tid:
                    sets[-1] = (tid, sets[-1][1] + body)
                else:
                    sets.append((tid, body))
                size, count, i = size + extra, count + 1, i + 1
            self._send_message(sets, count)

    def _send_message(self, sets: list[tuple[int, bytes]], records: int) -> None:
        payload = b"".join(struct.pack("!HH", sid, 4 + len(b)) + b for sid, b in sets)
        header = struct.pack("!HHIII", VERSION, 16 + len(payload), int(self.clock()) & 0xFFFFFFFF,
                             self.seq, self.domain)
        sock = self._ensure_socket()
        if self.transport == "udp":
            sock.sendto(header + payload, self.collector)
        else:
            sock.sendall(header + payload)
        # RFC 7011: the sequence number counts data records sent before this message, per domain.
        self.seq = (self.seq + records) & 0xFFFFFFFF
        self.stats["messages"] += 1
        self.stats["records"] += records

    def _ensure_socket(self) -> socket.socket:
        if self._sock is None:
            info = socket.getaddrinfo(self.collector[0], self.collector[1], 0,
                                      socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM)
            family, kind, proto, _, addr = info[0]
            s = socket.socket(family, kind, proto)
            s.settimeout(self.timeout)
            if self.transport == "tcp":
                try:
                    s.connect(addr)
                except OSError:
                    s.close()
                    raise
                # Templates go first on every new TCP session (RFC 7011 section 8.1).
                self._sock = s
                self._send_message([(TEMPLATE_SET_ID, self._templates)], 0)
                return s
            self._sock = s
        return self._sock

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._last_templates = None
