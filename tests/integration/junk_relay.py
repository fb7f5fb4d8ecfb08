"""A tiny UDP relay for evasion tests: N junk datagrams from its own socket to the server, then forwarding.

Run in the client namespace: `python junk_relay.py LISTEN_PORT SERVER_IP SERVER_PORT JUNK LIFETIME SEED`.
The tunnel client talks to 127.0.0.1:LISTEN_PORT; the relay's upstream socket is the flow the router
sees. Before it forwards the client's first datagram it sends JUNK random datagrams (1..1400 bytes, the
first 1 byte long) to the server from that same socket, so the flow carries junk first. Replies go back
to the last client address. It exits after LIFETIME seconds (every loop is bounded).
"""

from __future__ import annotations

import random
import select
import socket
import sys
import time


def main(argv: list[str]) -> int:
    listen_port, server_ip, server_port, junk, lifetime, seed = (
        int(argv[0]), argv[1], int(argv[2]), int(argv[3]), float(argv[4]), int(argv[5]))
    rng = random.Random(seed)
    local = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    local.bind(("127.0.0.1", listen_port))
    up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    up.bind(("0.0.0.0", 0))
    server = (server_ip, server_port)
    print(f"ready: 127.0.0.1:{listen_port} -> {server_ip}:{server_port} from port {up.getsockname()[1]}",
          flush=True)
    client: tuple[str, int] | None = None
    junk_sent = False
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        ready, _, _ = select.select([local, up], [], [], 0.5)
        for s in ready:
            data, addr = s.recvfrom(65535)
            if s is local:
                client = addr
                if not junk_sent:
                    for i in range(junk):
                        size = 1 if i == 0 else rng.randint(1, 1400)
                        up.sendto(bytes(rng.randrange(256) for _ in range(size)), server)
                    junk_sent = True
                    print(f"junk sent: {junk} datagrams before the first client datagram", flush=True)
                up.sendto(data, server)
            elif client is not None:
                local.sendto(data, client)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
