"""A client-side DPI-evasion shim, as zapret's nfqws does it: a low-TTL decoy before the first data segment.

Run in the client namespace, as root: `python desync_shim.py QUEUE DPORT TTL LIFETIME`. It queues the
namespace's own TCP packets to DPORT (the first few of each connection, through an NFQUEUE rule it adds
to mangle POSTROUTING) and, before the first segment that carries data, sends a decoy from a raw socket:
the same addresses, ports, sequence and acknowledgement numbers, an HTTP request of the same length as
payload, and IP TTL `TTL`, so it passes the router and expires before the server. Then it lets the real
segment go. The decoy carries a mark the rule skips. Prints "sent a decoy ..." per connection; exits after
LIFETIME seconds (its rule goes with the namespace).
"""

from __future__ import annotations

import select
import socket
import struct
import subprocess
import sys
import time

from netfilterqueue import NetfilterQueue
from netfilterqueue import Packet as QueuedPacket

SKIP_MARK = 0x7D


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def decoy(ip: bytes, ttl: int) -> bytes | None:
    """The decoy for an IPv4/TCP packet with data, or None when it carries none."""
    ihl = (ip[0] & 0x0F) * 4
    doff = (ip[ihl + 12] >> 4) * 4
    size = len(ip) - ihl - doff
    if ip[9] != 6 or size <= 0:
        return None
    fake = b"GET / HTTP/1.1\r\nHost: www.example.com\r\nAccept: */*\r\nX-Pad: "
    fake = (fake + b"a" * max(0, size - len(fake) - 4) + b"\r\n\r\n")[:size]
    hdr = bytearray(ip[:ihl])
    hdr[8] = ttl
    hdr[10:12] = b"\0\0"
    hdr[10:12] = struct.pack("!H", checksum(bytes(hdr)))
    tcp = bytearray(ip[ihl:ihl + doff]) + fake
    tcp[16:18] = b"\0\0"
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    tcp[16:18] = struct.pack("!H", checksum(pseudo + bytes(tcp)))
    return bytes(hdr) + bytes(tcp)


def main(argv: list[str]) -> int:
    qnum, dport, ttl, lifetime = int(argv[0]), int(argv[1]), int(argv[2]), float(argv[3])
    subprocess.run(["iptables", "-w", "-t", "mangle", "-A", "POSTROUTING", "-p", "tcp", "--dport", str(dport),
                    "-m", "mark", "!", "--mark", str(SKIP_MARK), "-m", "connbytes", "--connbytes", "1:6",
                    "--connbytes-dir", "original", "--connbytes-mode", "packets", "-j", "NFQUEUE",
                    "--queue-num", str(qnum)], check=True)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, SKIP_MARK)
    done: set[bytes] = set()

    def on_packet(pkt: QueuedPacket) -> None:
        ip = pkt.get_payload()
        ihl = (ip[0] & 0x0F) * 4
        conn = ip[12:20] + ip[ihl:ihl + 4]
        fake = decoy(ip, ttl) if conn not in done else None
        if fake is not None:
            done.add(conn)
            raw.sendto(fake, (socket.inet_ntoa(ip[16:20]), 0))
            print(f"sent a decoy of {len(fake)} bytes with TTL {ttl} before the first data segment",
                  flush=True)
        pkt.accept()

    nfq = NetfilterQueue()
    nfq.bind(qnum, on_packet)
    print("shim ready", flush=True)
    deadline = time.monotonic() + lifetime
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([nfq.get_fd()], [], [], 0.5)
            if ready:
                nfq.run(block=False)
    finally:
        nfq.unbind()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
