"""Harness: IPFIX encoding of odd flow dicts (ipfix.IpfixExporter.export) into a capturing fake socket.

The input is a JSON list of flow dicts when it parses, else typical flows whose fields the bytes overwrite
with hostile values. export()
must skip what it cannot encode and never raise; every message sent must be well-formed IPFIX (version 10,
lengths that add up, sets that fill the message).
"""

from __future__ import annotations

import json
import struct
from typing import Any

from fuzz._fuzzlib import Bytes, fuzz_main, instrumented, value

with instrumented():
    from tunnelwatch.report.ipfix import IpfixExporter
    from tunnelwatch.report.privacy import Pseudonymizer


class CaptureSocket:
    """Collects what would go on the wire."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: object) -> int:
        """Keep a datagram."""
        self.sent.append(bytes(data))
        return len(data)

    def sendall(self, data: bytes) -> None:
        """Keep a stream write."""
        self.sent.append(bytes(data))

    def close(self) -> None:
        """Nothing to close."""


class Exporter(IpfixExporter):
    """The real exporter with its socket replaced by CaptureSocket."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(("192.0.2.10", 4739), clock=lambda: 1_790_000_000.0, **kw)
        self.fake = CaptureSocket()

    def _ensure_socket(self) -> Any:
        return self.fake


EXPORTERS = [Exporter(), Exporter(transport="tcp", enterprise=4294967295),
             Exporter(pseudonymizer=Pseudonymizer("hash", b"k" * 32))]


def check_message(msg: bytes) -> None:
    """One IPFIX message: header length matches, sets tile the rest exactly."""
    assert len(msg) >= 16, msg
    version, length = struct.unpack_from("!HH", msg)
    assert version == 10 and length == len(msg), (version, length, len(msg))
    p = 16
    while p < len(msg):
        _sid, slen = struct.unpack_from("!HH", msg, p)
        assert slen >= 4 and p + slen <= len(msg), (p, slen, len(msg))
        p += slen


BASE: dict[str, object] = {
    "src": "192.0.2.1", "sport": 40000, "dst": "198.51.100.2", "dport": 1194, "transport": "udp",
    "klass": "vpn_tunnel", "protocol": "openvpn", "confidence": "confirmed", "action": "report", "packets": 5,
    "bytes": 900, "first_seen": 1790000000.5, "last_seen": 1790000001.0, "registration_id": None}
KEYS = sorted(BASE)


def flows_of(data: bytes) -> list[dict[str, Any]]:
    """JSON flow lists as they are; other bytes overwrite fields of a typical flow with hostile values."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        b = Bytes(data)
        out = []
        for _ in range(1 + b.byte() % 4):
            f = dict(BASE)
            for _ in range(b.byte() % 6):
                f[b.pick(KEYS)] = value(b)
            out.append(f)
        return out
    flows = doc if isinstance(doc, list) else [doc]
    return [f if isinstance(f, dict) else {"src": f, "dst": f} for f in flows[:64]]


def one_input(data: bytes) -> None:
    """Export the flows described by `data` through each exporter."""
    flows = flows_of(data)
    for ex in EXPORTERS:
        ex.fake.sent.clear()
        ex.export(flows)
        for msg in ex.fake.sent:
            check_message(msg)


if __name__ == "__main__":
    fuzz_main(one_input)
