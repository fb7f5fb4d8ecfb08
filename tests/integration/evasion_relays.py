"""Small relays of the evasion tests, run as `python -c` scripts inside a lab namespace.

UDP_HOLD (server namespace): a UDP relay in front of a server on loopback that holds every reply until
`hold` seconds after the server's first one (a slow server). TCP_SHAPE (client namespace): a TCP relay in
front of the tunnel client that, on the upstream connection, either sends 20 duplicate ACKs before the
first data ("dupacks": crafted with scapy from the sniffed handshake's sequence numbers) or cuts the
client's first write into 1- and 2-byte segments, each acknowledged before the next is sent ("split").
Both are bounded in time and print what they did, for the tests to wait on.
"""

from __future__ import annotations

from typing import Final

UDP_HOLD: Final = r"""
import select, socket, sys, time
listen, port, upstream, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
front.bind((listen, port))
back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
back.connect(("127.0.0.1", upstream))
client, held, release = None, [], None
print("relay ready", flush=True)
end = time.monotonic() + 300
while time.monotonic() < end:
    wait = max(0.0, release - time.monotonic()) if held else 1.0
    ready, _, _ = select.select([front, back], [], [], wait)
    if front in ready:
        data, client = front.recvfrom(65535)
        back.send(data)
    if back in ready:
        try:
            data = back.recv(65535)
        except ConnectionRefusedError:
            continue
        if release is None:
            release = time.monotonic() + hold
            print(f"holding the server's replies for {hold} s", flush=True)
        if time.monotonic() < release:
            held.append(data)
        elif client is not None:
            front.sendto(data, client)
    if held and time.monotonic() >= release and client is not None:
        for d in held:
            front.sendto(d, client)
        print(f"released {len(held)} held replies", flush=True)
        held = []
"""

TCP_SHAPE: Final = r"""
import array, fcntl, select, socket, sys, termios, threading, time
from scapy.all import IP, TCP, AsyncSniffer, conf, send
conf.verb = 0
mode, lport, dst, dport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", lport))
srv.listen(1)
print("relay ready", flush=True)
down, _ = srv.accept()
seen, started = {}, threading.Event()

def keep(p):
    if TCP in p and p[TCP].flags & 0x02:
        seen["synack" if p[TCP].flags & 0x10 else "syn"] = p

sniffer = AsyncSniffer(filter=f"tcp and host {dst} and port {dport}", prn=keep, store=False,
                       started_callback=started.set)
sniffer.start()
started.wait(10)
up = socket.create_connection((dst, dport), timeout=10)
up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
end = time.monotonic() + 10
while len(seen) < 2 and time.monotonic() < end:
    select.select([], [], [], 0.01)
sniffer.stop()

def unacked():
    buf = array.array("i", [0])
    fcntl.ioctl(up.fileno(), termios.TIOCOUTQ, buf)
    return buf[0]

def drained():
    end = time.monotonic() + 5
    while unacked() and time.monotonic() < end:
        select.select([], [], [], 0.005)

if mode == "dupacks":
    syn, synack = seen["syn"], seen["synack"]
    ack = IP(src=syn[IP].src, dst=dst) / TCP(sport=syn[TCP].sport, dport=dport, flags="A",
                                               seq=syn[TCP].seq + 1, ack=synack[TCP].seq + 1, window=502)
    send([ack] * 20)
    print("sent 20 duplicate ACKs", flush=True)
first = True
end = time.monotonic() + 300
while time.monotonic() < end:
    ready, _, _ = select.select([down, up], [], [], 1.0)
    if down in ready:
        data = down.recv(65535)
        if not data:
            break
        if first and mode == "split":
            pieces, i, n = [], 0, 1
            while i < min(len(data), 12):
                pieces.append(data[i:i + n])
                i, n = i + n, 3 - n
            pieces.append(data[i:])
            for piece in pieces:
                if piece:
                    up.send(piece)
                    drained()  # acknowledged: the next piece cannot ride in the same segment
            print(f"first write of {len(data)} bytes sent as {len(pieces)} segments", flush=True)
        else:
            up.sendall(data)
        first = False
    if up in ready:
        data = up.recv(65535)
        if not data:
            break
        down.sendall(data)
"""

UDP_FLOOD: Final = r"""
import socket, sys, time
src, dst, count, limit_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
end, sent = time.monotonic() + limit_s, 0
for i in range(count):
    if time.monotonic() > end:
        break
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.sendto(b"flood %d" % i, (dst, 20000 + i % 40000))
    s.close()
    sent += 1
print("flood sent", sent, flush=True)
"""

# TCP Fast Open client (client namespace): one OpenVPN client hard reset, length-prefixed as over TCP,
# carried in the SYN itself (MSG_FASTOPEN; the namespace's sysctl sends it without a cookie), then it
# prints what the server answered.
TFO_CLIENT: Final = r"""
import os, socket, sys
dst, port = sys.argv[1], int(sys.argv[2])
rec = b"\x38" + os.urandom(8) + b"\x00" + b"\x00\x00\x00\x00"
s = socket.socket()
s.settimeout(10)
s.sendto(len(rec).to_bytes(2, "big") + rec, socket.MSG_FASTOPEN, (dst, port))
print("sent reset in the SYN", flush=True)
try:
    print("answer", len(s.recv(4096)), "bytes", flush=True)
except OSError as exc:
    print("no answer:", exc, flush=True)
"""

DNS_FRONT: Final = r"""
import select, socket, struct, sys, time
listen, port, upstream = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
front.bind((listen, port))
back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
back.connect(("127.0.0.1", upstream))
client = None
print("relay ready", flush=True)
end = time.monotonic() + 300
while time.monotonic() < end:
    ready, _, _ = select.select([front, back], [], [], 1.0)
    if front in ready:
        data, addr = front.recvfrom(65535)
        if len(data) >= 17 and data[2] & 0x80 == 0 and data[4:6] == b"\x00\x01":
            # a DNS query: answer it here (an A record) so the flow looks like plain DNS
            answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01"
            front.sendto(data[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + data[12:] + answer, addr)
            print("answered a DNS query", flush=True)
        else:
            client = addr
            back.send(data)
    if back in ready:
        try:
            data = back.recv(65535)
        except ConnectionRefusedError:
            continue
        if client is not None:
            front.sendto(data, client)
"""

DNS_QUERIES: Final = r"""
import socket, sys
src, sport, dst, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, sport))
s.settimeout(3)
for i in range(count):
    question = b"\x07example\x03org\x00\x00\x01\x00\x01"
    q = (0x1200 + i).to_bytes(2, "big") + b"\x01\x00\x00\x01" + bytes(6) + question
    s.sendto(q, (dst, 53))
    s.recvfrom(2048)
print("dns answered", count, flush=True)
"""
