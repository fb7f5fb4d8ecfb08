"""Turns real WireGuard into AmneziaWG on the wire (no AmneziaWG package exists for Debian): a relay per side.

`python awg_relay.py client LISTEN_PORT REMOTE_IP REMOTE_PORT LIFETIME` in the client namespace: the
wireguard-go client talks to 127.0.0.1:LISTEN_PORT, the relay talks to REMOTE_IP:REMOTE_PORT.
`python awg_relay.py server LISTEN_IP LISTEN_PORT WG_PORT LIFETIME` in the server namespace: it receives
on LISTEN_IP:LISTEN_PORT and talks to the wireguard-go server on 127.0.0.1:WG_PORT.

Towards the network each WireGuard message becomes its AmneziaWG 1.x form, as the AmneziaWG description
has it: message types H1..H4 instead of 1..4, S1/S2 random bytes in front of an initiation/response, and
JC random datagrams of JMIN..JMAX bytes before every initiation; from the network the reverse (junk and
anything else is dropped). The WireGuard cryptography is untouched: the far side restores the exact
original bytes (type and reserved zeros are under the MACs) before delivery. Every loop is bounded by
LIFETIME seconds.
"""

from __future__ import annotations

import os
import random
import select
import socket
import struct
import sys
import time

JC, JMIN, JMAX, S1, S2 = 5, 40, 900, 37, 91
H = (0x2A6B1C05, 0x7E3D9F11, 0x5C0FFEE3, 0x1BADB007)
_SIZES = {1: 148, 2: 92, 3: 64}


def wrap(p: bytes, rng: random.Random) -> list[bytes]:
    """One WireGuard message -> the datagrams AmneziaWG would send for it."""
    if len(p) < 4 or not 1 <= p[0] <= 4:
        return []
    mtype = p[0]
    body = struct.pack("<I", H[mtype - 1]) + p[4:]
    if mtype == 1:
        junk = [os.urandom(rng.randint(JMIN, JMAX)) for _ in range(JC)]
        return [*junk, os.urandom(S1) + body]
    if mtype == 2:
        return [os.urandom(S2) + body]
    return [body]


def unwrap(p: bytes) -> bytes | None:
    """An AmneziaWG datagram -> the WireGuard message, or None for junk."""
    for mtype, pad in ((1, S1), (2, S2), (3, 0)):
        if len(p) == _SIZES[mtype] + pad and struct.unpack_from("<I", p, pad)[0] == H[mtype - 1]:
            return bytes([mtype, 0, 0, 0]) + p[pad + 4:]
    if len(p) >= 32 and struct.unpack_from("<I", p, 0)[0] == H[3]:
        return b"\x04\0\0\0" + p[4:]
    return None


def main(argv: list[str]) -> int:
    role, lifetime = argv[0], float(argv[4])
    rng = random.Random(1)
    local = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    net = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if role == "client":
        local.bind(("127.0.0.1", int(argv[1])))
        net.bind(("0.0.0.0", 0))
        remote: tuple[str, int] | None = (argv[2], int(argv[3]))
        peer: tuple[str, int] | None = None  # the wireguard-go client, once it spoke
    else:
        net.bind((argv[1], int(argv[2])))
        local.bind(("127.0.0.1", 0))
        remote = None  # the client relay, once it spoke
        peer = ("127.0.0.1", int(argv[3]))
    print(f"ready: {role}", flush=True)
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        ready, _, _ = select.select([local, net], [], [], 0.5)
        for s in ready:
            data, addr = s.recvfrom(65535)
            if s is local:
                if role == "client":
                    peer = addr
                if remote is not None:
                    for dgram in wrap(data, rng):
                        net.sendto(dgram, remote)
            else:
                if role == "server":
                    remote = addr
                msg = unwrap(data)
                if msg is not None and peer is not None:
                    local.sendto(msg, peer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
