"""Regenerate the seed corpus (tests/fuzz/corpus/<harness>/) from the repo's own files and crafted inputs.

    .venv/bin/python tests/fuzz/make_seeds.py

Sources: tests/data (our captures and configs), config/ (shipped examples) and hand-built protocol
messages. Never the nDPI corpus in ../shared (its licence keeps it out of the repository). Seeds are
small and deterministic, so rerunning this gives the same files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
import sys
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "daemon")]

from tunnelwatch.offline.pcapfile import PcapReader, ip_offset  # noqa: E402

CAPTURES = sorted((ROOT / "tests/data/captures").glob("*.pcap"))
EXAMPLES = ROOT / "config/endpoints"
LINKTYPES = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 999]  # sorted(SUPPORTED_LINKTYPES) + [999]


def write(harness: str, items: Iterable[bytes]) -> int:
    """Store each item as corpus/<harness>/<sha1-prefix>; return how many."""
    d = HERE / "corpus" / harness
    d.mkdir(parents=True, exist_ok=True)
    n = 0
    for data in items:
        (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)
        n += 1
    return n


def frames(limit: int = 8) -> list[tuple[int, bytes]]:
    """(linktype, frame) of the first packets of each capture."""
    out: list[tuple[int, bytes]] = []
    for path in CAPTURES:
        with path.open("rb") as fh:
            for i, (_ts, lt, frame) in enumerate(PcapReader(fh, str(path))):
                if i >= limit:
                    break
                out.append((lt, frame))
    return out


def pcapng(frames_: list[bytes]) -> bytes:
    """A small pcapng: section header, one Ethernet interface (ns resolution), enhanced packet blocks."""
    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)
    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack("<HHI", 1, 0, 65535) + struct.pack("<HHB3x", 9, 1, 9) + b"\0\0\0\0")
    for i, f in enumerate(frames_):
        out += block(6, struct.pack("<IIIII", 0, 0, 1000 + i, len(f), len(f)) + f)
    return out


def ip_packets() -> list[bytes]:
    """IP packets out of the captures."""
    out = []
    for lt, frame in frames(12):
        off = ip_offset(lt, frame)
        if off >= 0:
            out.append(frame[off:])
    return out


WG_INIT = b"\x01\0\0\0" + bytes(range(4)) + bytes(140)
OVPN_RESET = struct.pack("!H", 14) + b"\x38" + bytes(range(8)) + b"\0" + b"\0\0\0\0"
SIP = (b"INVITE sip:bob@192.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
       b"From: <sip:alice@192.0.2.1>;tag=1\r\nTo: <sip:bob@192.0.2.2>\r\nCall-ID: abc@192.0.2.1\r\n"
       b"CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: 66\r\n\r\n"
       b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
STUN = struct.pack("!HHI", 1, 0, 0x2112A442) + bytes(12)
DNS = bytes.fromhex("1234010000010000000000000377777706676f6f676c6503636f6d0000010001")
TLS_HELLO = bytes.fromhex("16030100a5010000a10303") + bytes(32) + b"\0\0\x02\x13\x01\x01\x00"
IKE = bytes(8) + bytes(8) + b"\x21\x20\x22\x08" + bytes(4) + struct.pack("!I", 28)


def classify_seeds() -> list[bytes]:
    """Mode-odd seeds (raw IP packets from the captures) and mode-even synthetic flows."""
    raw = b"".join(struct.pack("!H", len(p)) + p for p in ip_packets()[:40])
    seeds = [b"\x11" + raw[i:i + 3000] for i in range(0, min(len(raw), 12000), 3000)]
    from fuzz.fuzz_classify import TRANSPORTS
    for proto, dport, payloads in ((17, 51820, [WG_INIT, bytes(92)]), (17, 1194, [OVPN_RESET, OVPN_RESET]),
                                   (17, 5060, [SIP, b"SIP/2.0 200 OK\r\n" + SIP[40:]]), (17, 3478, [STUN]),
                                   (17, 53, [DNS]), (6, 443, [TLS_HELLO]), (17, 500, [IKE])):
        # one flow: transport index, then both ports as "u16 follows" (selector byte >= 200)
        flow = bytes([TRANSPORTS.index(proto), 200, 0xC3, 0x50, 200]) + struct.pack("!H", dport)
        body = b"".join(bytes([0x00 if i % 2 == 0 else 0x80]) + struct.pack("!H", len(p)) + p
                        for i, p in enumerate(payloads * 2))
        # mode 0x08: IPv4, budget 9; one flow; then the packets
        seeds.append(b"\x08\x00" + flow + body)
    return seeds


def http_reply(status: str, headers: dict[str, str], body: bytes) -> bytes:
    """Raw HTTP/1.1 response bytes."""
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


def uplink_seeds() -> list[bytes]:
    """Replies the collector gives (and some it should not)."""
    ok = json.dumps({"status": "stored", "batch_id": "x", "accepted": 3, "duplicates": 0}).encode()
    dup = json.dumps({"status": "duplicate"}).encode()
    raw = [
        http_reply("200 OK", {"Content-Type": "application/json", "Content-Length": str(len(ok))}, ok),
        http_reply("200 OK", {"Content-Length": str(len(dup)), "Connection": "close"}, dup),
        http_reply("429 Too Many Requests", {"Retry-After": "7", "Content-Length": "0"}, b""),
        http_reply("503 Service Unavailable", {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT",
                                               "Content-Length": "0"}, b""),
        http_reply("413 Payload Too Large", {"Content-Length": "2"}, b"{}"),
        http_reply("400 Bad Request", {"Transfer-Encoding": "chunked"}, b"2\r\n{}\r\n0\r\n\r\n"),
        http_reply("500 Internal Server Error", {}, b"oops"),
        http_reply("401 Unauthorized", {"WWW-Authenticate": "Bearer"}, b""),
        b"HTTP/1.0 204 No Content\r\n\r\n",
    ]
    direct = [struct.pack("!H", 429) + b"\x04Busy\x01\x017" + b"\x00\x10",
              struct.pack("!H", 503) + b"\x00\x01" + bytes([29]) + b"Wed, 21 Oct 2026 07:28:00 GMT"
              + b"\x00\x10",
              struct.pack("!H", 200) + b"\x02OK\x00" + b'{"status":"duplicate"}']
    return [b"\x00" + r for r in raw] + [b"\x01" + d for d in direct]


def collector_seeds() -> list[bytes]:
    """Requests an uplink sends (good, bad token, bad body, GET)."""
    bid = "6f1d2c3a-8b4e-5a7f-9c0d-1e2f3a4b5c6d"
    ev = {"schema": 1, "id": "0" * 32, "kind": "heartbeat", "device_id": "box1"}
    doc = json.dumps({"schema": 1, "batch_id": bid, "device_id": "box1", "events": [ev]}).encode()
    gz = gzip.compress(doc, mtime=0)

    def post(body: bytes, enc: str, token: str = "fuzz-token-0123456789") -> bytes:
        return (f"POST /v1/events HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\n"
                f"Content-Encoding: {enc}\r\nX-Tunnelwatch-Batch-Id: {bid}\r\nX-Tunnelwatch-Device: box1\r\n"
                f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    return [b"\x00" + post(gz, "gzip"), b"\x01" + post(gz, "gzip"), b"\x01" + post(doc, "identity", "nope"),
            b"\x00" + post(doc, "identity"), b"\x00" + post(gz[:20], "gzip"),
            b"\x00GET /healthz HTTP/1.1\r\nHost: c\r\n\r\n", b"\x00" + post(doc, "br") + post(gz, "gzip")]


def regsync_seeds() -> list[bytes]:
    """A signed document (raw), signed payloads, and registry texts to sign."""
    from fuzz.fuzz_regsync import KEY  # the harness's fixed test key
    from tunnelwatch.policy.regsync import sign_document
    reg = (ROOT / "config/registry.yaml").read_text()
    doc = sign_document(KEY, 3, reg, issued="2026-11-23T00:00:00Z", device="box1")
    return [b"\x00" + doc, b"\x00" + doc[: len(doc) // 2], b"\x00" + doc.replace(b"payload", b"pay1oad"),
            b"\x01" + json.dumps({"version": 2, "registry": "registrations: []\n"}).encode(),
            b"\x01" + json.dumps({"version": 0, "registry": 5}).encode(), b"\x02" + reg.encode(),
            b"\x02registrations:\n  - id: x\n"]


def event_seeds() -> list[bytes]:
    """One JSON object per event kind, with typical field values."""
    flow = {"sport": 40000, "dport": 1194, "transport": "udp", "klass": "vpn_tunnel", "protocol": "openvpn",
            "confidence": "confirmed", "action": "report", "src": "192.0.2.1", "dst": "198.51.100.2",
            "evidence": ["P_CONTROL_HARD_RESET_CLIENT_V2"], "packets": 5, "bytes": 900,
            "first_seen": 1790000000.5, "last_seen": "2026-01-01T00:00:00.000000Z"}
    docs = [{"kind": "flow_tagged", **flow}, {"kind": "flow_blocked", **flow, "action": "block"},
            {"kind": "registered_tunnel_used", **flow, "registration_id": "r1"},
            {"kind": "heartbeat", "uptime_s": 5.5, "flows_by_klass": {"voip": 1}, "packets_queued": 9,
             "queue_drops": 0, "verdict_latency_ms": {"p50": 0.1}},
            {"kind": "config_rejected", "path": "/etc/x.yaml", "errors": ["x:1:1: bad"]},
            {"kind": "daemon_started", "software": "1.0", "mode": "nfqueue", "queues": 2, "ts": 1e9},
            {"kind": "daemon_stopped", "reason": "SIGTERM", "uptime_s": 1e308, "device_id": "b\n"}]
    return [json.dumps(d).encode() for d in docs]


def ipfix_seeds() -> list[bytes]:
    """Flow lists as the reporter hands them to the exporter, and odd ones."""
    f = {"src": "192.0.2.1", "sport": 40000, "dst": "198.51.100.2", "dport": 1194, "transport": "udp",
         "klass": "vpn_tunnel", "protocol": "openvpn", "confidence": "confirmed", "action": "report",
         "packets": 5, "bytes": 900, "first_seen": 1790000000.5, "last_seen": 1790000001.0}
    v6 = {**f, "src": "2001:db8::1", "dst": "2001:db8::2", "transport": 17, "registration_id": "r" * 300}
    odd = {**f, "sport": -5, "bytes": 2**70, "first_seen": "NaN", "protocol": "x" * 400,
           "transport": "proto-99"}
    return [json.dumps([f]).encode(), json.dumps([f, v6, odd]).encode(), json.dumps([v6] * 40).encode(),
            json.dumps([{**f, "src": "192.0.2.1", "dst": "2001:db8::2"}]).encode()]


def main() -> None:
    """Write every harness's seeds and print the counts."""
    configs = [*sorted((ROOT / "tests/data/config").rglob("*.yaml")), ROOT / "config/tunnelwatch.yaml"]
    fr = frames()
    counts = {
        "packet": write("packet", (bytes([LINKTYPES.index(lt) if lt in LINKTYPES else 0, 0]) + f
                                   for lt, f in fr[:60])),
        "pcap": write("pcap", [p.read_bytes()[:4096] for p in CAPTURES]
                      + [pcapng([f for _, f in fr[:6]]), pcapng([f for _, f in fr[6:8]])[:200]]),
        "classify": write("classify", classify_seeds()),
        "config": write("config", [p.read_bytes() for p in configs if p.stat().st_size < 8192]
                        + [b"log:\n  level: debug\n#--dropin\nqueue:\n  num: 3\n"]),
        "registry": write("registry", [(ROOT / "config/registry.yaml").read_bytes(), b"registrations: []\n"]),
        "endpoints": write("endpoints", [b"\x00" + (EXAMPLES / "example-vpn-provider.yaml").read_bytes(),
                                         b"\x01" + (EXAMPLES / "example-tor-relays.txt").read_bytes()[:4096],
                                         b"\x01192.0.2.0/24\n2001:db8::/33 # x\n10.0.0.1/8\n"]),
        "regsync": write("regsync", regsync_seeds()),
        "uplink": write("uplink", uplink_seeds()),
        "collector": write("collector", collector_seeds()),
        "ipfix": write("ipfix", ipfix_seeds()),
        "events": write("events", event_seeds()),
    }
    for name, n in counts.items():
        print(f"{name:10s} {n} seeds")


if __name__ == "__main__":
    main()
