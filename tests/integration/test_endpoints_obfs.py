"""Endpoint lists in the running daemon (list verdicts, SIGHUP and file-watch reloads) and XOR-obfuscated
OpenVPN: Debian's OpenVPN behind a small XOR relay pair (as the "xor patch" scrambles each packet),
captured on the router and classified, next to a plain OpenVPN tunnel that must stay confirmed."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from enforce_peers import make_pki, openvpn_pair, start_openvpn, tunnel_ping

from support.netns import CLIENT_IP, SERVER_IP, Lab, lab, require_tools
from tunnelwatch.offline.classify import classify_file

pytestmark = pytest.mark.integration

ECHO_PORT = 7777
OBFS_PORT = 443
XOR_KEY = "a5c3107e9d"

# Echo every UDP datagram back; bounded in time and count.
_ECHO = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(1.0)
print("echo ready", flush=True)
end = time.monotonic() + 120
n = 0
while time.monotonic() < end and n < 10000:
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        continue
    n += 1
    s.sendto(data, peer)
"""

# Send COUNT datagrams on one socket (one flow), one at a time; print how many came back. An echo may take
# its time on a loaded machine (2 s each); after 3 losses in a row the flow is blocked: stop there.
_PROBE = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], int(sys.argv[2])))
s.settimeout(2.0)
back = lost = 0
for i in range(int(sys.argv[3])):
    msg = b"tunnelwatch lab probe %d" % i
    s.send(msg)
    try:
        while s.recv(2048) != msg:  # a late echo of an earlier probe: not this one
            pass
        back += 1
        lost = 0
    except OSError:
        lost += 1
        if lost == 3:
            break
print(back)
"""

# The xor patch's "xormask", done outside OpenVPN: every byte of each UDP datagram, or of each TCP record
# (after OpenVPN's clear 2-byte length, which the patch leaves alone), XOR a repeating key. The same program
# scrambles on one side and unscrambles on the other. One peer, bounded in time and packets.
_RELAY = r"""
import selectors, socket, sys, time
mode, lhost, lport, uhost, uport, key = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], \
    int(sys.argv[5]), bytes.fromhex(sys.argv[6])
end = time.monotonic() + 120
def x(b):
    return bytes(c ^ key[i % len(key)] for i, c in enumerate(b))
sel = selectors.DefaultSelector()
if mode == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((lhost, lport))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect((uhost, uport))
    sel.register(s, selectors.EVENT_READ)
    sel.register(u, selectors.EVENT_READ)
    print("relay ready", flush=True)
    peer, n = None, 0
    while time.monotonic() < end and n < 100000:
        for k, _ in sel.select(1.0):
            n += 1
            if k.fileobj is s:
                data, peer = s.recvfrom(65535)
                u.send(x(data))
            elif peer is not None:
                s.sendto(x(u.recv(65535)), peer)
            else:
                u.recv(65535)
else:
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((lhost, lport))
    ls.listen(1)
    ls.settimeout(60)
    print("relay ready", flush=True)
    c, _ = ls.accept()
    u = socket.create_connection((uhost, uport), timeout=10)
    other, buf = {c: u, u: c}, {c: b"", u: b""}
    for sk in (c, u):
        sel.register(sk, selectors.EVENT_READ)
    done = False
    while not done and time.monotonic() < end:
        for k, _ in sel.select(1.0):
            sk = k.fileobj
            data = sk.recv(65536)
            if not data:
                done = True
                break
            b = buf[sk] + data
            while len(b) >= 2 and len(b) >= 2 + int.from_bytes(b[:2], "big"):
                n = int.from_bytes(b[:2], "big")
                other[sk].sendall(b[:2] + x(b[2:2 + n]))
                b = b[2 + n:]
            buf[sk] = b
"""


def _script(tmp: Path, name: str, text: str) -> str:
    p = tmp / f"{name}.py"
    p.write_text(text)
    return str(p)


# ---------------------------------------------------------------- endpoint lists in the daemon


def _list(path: Path, protocol: str, addresses: list[str], extra: str = "") -> None:
    entries = "".join(f"  - {{address: {a}, ports: [{ECHO_PORT}], transport: udp}}\n" for a in addresses)
    path.write_text(f"provider: LabVPN\nklass: vpn_tunnel\nprotocol: {protocol}\nentries:\n{entries}{extra}")


def _probe(lb: Lab, tmp: Path, count: int = 12) -> int:
    r = lb.run(lb.client, sys.executable, _script(tmp, "probe", _PROBE), SERVER_IP, str(ECHO_PORT),
               str(count), timeout=60)
    return int(r.stdout.strip())


def _wait_count(lb: Lab, name: str, needle: str, n: int, timeout: float = 15.0) -> None:
    """Wait until `needle` occurs at least n times in the log of `name` (bounded)."""
    deadline = time.monotonic() + timeout
    while lb.log(name).count(needle) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not seen {n} times in {name}:\n{lb.log(name)[-3000:]}")
        time.sleep(0.05)


def _workers(log: str) -> int:
    """The queue workers of the daemon, from its ready line ("ready: queues 3-4, ..." or "ready: queue 3")."""
    m = re.search(r"ready: queues (\d+)-(\d+)", log)
    return int(m.group(2)) - int(m.group(1)) + 1 if m else 1


def test_daemon_list_verdicts_and_hot_reload(tmp_path: Path) -> None:
    require_tools("iptables", "ip6tables", "iptables-save", "iptables-restore", "ss")
    lst = tmp_path / "lab-vpn.yaml"
    _list(lst, "labvpn", ["192.0.2.99"])  # the server is not on it yet
    (tmp_path / "registry.yaml").write_text("registrations: []\n")
    cfg = tmp_path / "tunnelwatch.yaml"
    cfg.write_text("queue: {num: 3, packets: 4}\nfirewall: {hooks: [forward], ipv6: false}\n"
                   "registry: registry.yaml\n"
                   "endpoints: {lists: [lab-vpn.yaml], watch: 1}\n"
                   "policy:\n  klass: {vpn_tunnel: {mode: enforce, min_confidence: list}}\n"
                   f"log: {{level: debug}}\nstatus: {{socket: {tmp_path / 'status.sock'}}}\n")
    with lab(tmp_path) as lb:
        echo = _script(tmp_path, "echo", _ECHO)
        lb.spawn(lb.server, [sys.executable, echo, SERVER_IP, str(ECHO_PORT)], "echo")
        lb.wait_for_log("echo", "echo ready")
        daemon = lb.spawn(lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)],
                          "daemon")
        lb.wait_for_log("daemon", "ready:", timeout=20)
        assert "endpoints: 1 entries from 1 list(s)" in lb.log("daemon")
        assert _probe(lb, tmp_path) == 12  # not listed: every echo comes back

        # SIGHUP with the server on the list: new flows get a "list" verdict, blocked (min_confidence list)
        _list(lst, "labvpn", ["192.0.2.99", SERVER_IP])
        daemon.send_signal(signal.SIGHUP)
        lb.wait_for_log("daemon", "reload #1: applied", timeout=15)
        back = _probe(lb, tmp_path)
        assert back <= 2, back  # decided within queue.packets = 4 (2 round trips), then dropped
        lb.wait_for_log("daemon", f"decided vpn_tunnel labvpn list block udp {CLIENT_IP}:", timeout=10)
        assert f"{SERVER_IP} is on endpoint list lab-vpn (LabVPN), entry {SERVER_IP}/32" in lb.log("daemon")

        # a broken edit, picked up by the file watch (no signal): logged, the last good list stays
        _list(lst, "labvpn", ["192.0.2.99", SERVER_IP], extra="  - 203.0.113.999\n")
        lb.wait_for_log("daemon", "keeping the last good list (2 entries)", timeout=15)
        assert "lab-vpn.yaml:7:5: not an IP address or CIDR block" in lb.log("daemon")
        assert _probe(lb, tmp_path) <= 2

        # a fixed file with a new label, again by the watch alone: the new label applies
        # every queue worker watches the file and logs its reading (queue.count auto: one per CPU)
        seen = lb.log("daemon").count("endpoints: 1 entries from 1 list(s)")
        _list(lst, "labvpn_v2", [SERVER_IP])
        _wait_count(lb, "daemon", "endpoints: 1 entries from 1 list(s)", seen + _workers(lb.log("daemon")))
        assert _probe(lb, tmp_path) <= 2
        lb.wait_for_log("daemon", "decided vpn_tunnel labvpn_v2 list block udp", timeout=10)
        assert daemon.poll() is None  # one process all along: no restart


def test_daemon_refuses_to_start_with_a_bad_list(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_text("203.0.113.7\nnot-an-address\n")
    cfg = tmp_path / "tunnelwatch.yaml"
    cfg.write_text("endpoints:\n  lists:\n    - {path: bad.txt, provider: T, klass: proxy_obfuscated, "
                   "protocol: tor}\nlog: {level: info}\n")
    r = subprocess.run([sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 78, r.stderr
    assert f"{tmp_path / 'bad.txt'}:2:1: not an IP address or CIDR block: 'not-an-address'" in r.stderr


# ---------------------------------------------------------------- XOR-obfuscated OpenVPN


def _flows(records: list[dict[str, Any]], transport: str, dport: int) -> list[dict[str, Any]]:
    return [r for r in records if r["transport"] == transport and r["dport"] == dport
            and r["src"] == CLIENT_IP and r["dst"] == SERVER_IP]


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_xor_obfuscated_openvpn_heuristic_and_plain_still_confirmed(tmp_path: Path, proto: str) -> None:
    require_tools("openvpn", "openssl", "tcpdump", "ping", "ss")
    relay = _script(tmp_path, "xor_relay", _RELAY)
    pki = make_pki(tmp_path / "pki")
    obfs = openvpn_pair(tmp_path / "obfs", proto, server_ip="127.0.0.1", port=1196,
                        tun=("10.99.0.1", "10.99.0.2"), pki=pki)
    plain = openvpn_pair(tmp_path / "plain", proto, tun=("10.99.1.1", "10.99.1.2"), pki=pki)
    pcap = tmp_path / "wan0.pcap"
    with lab(tmp_path) as lb, lb.capture(lb.router, "wan0", pcap):
        lb.spawn(lb.server, [sys.executable, relay, proto, SERVER_IP, str(OBFS_PORT), "127.0.0.1", "1196",
                             XOR_KEY], "relay-server")
        lb.wait_for_log("relay-server", "relay ready")
        lb.spawn(lb.client, [sys.executable, relay, proto, "127.0.0.1", "1196", SERVER_IP, str(OBFS_PORT),
                             XOR_KEY], "relay-client")
        lb.wait_for_log("relay-client", "relay ready")
        start_openvpn(lb, obfs, "obfs")
        lb.wait_for_log("obfs-client", "Initialization Sequence Completed", timeout=30)
        assert tunnel_ping(lb, addr="10.99.0.1")
        start_openvpn(lb, plain, "plain")
        lb.wait_for_log("plain-client", "Initialization Sequence Completed", timeout=30)
        assert tunnel_ping(lb, addr="10.99.1.1")
    records = list(classify_file(str(pcap), budget=16, progress=False))  # the daemon's default budget
    table = "\n".join(f"  {r['transport']} {r['src']}:{r['sport']} -> {r['dst']}:{r['dport']} {r['klass']} "
                      f"{r['protocol']} {r['confidence']} {r['evidence']}" for r in records)
    [o] = _flows(records, proto, OBFS_PORT)
    assert (o["klass"], o["protocol"], o["confidence"]) == ("vpn_tunnel", "openvpn", "heuristic"), table
    assert "opcode pattern of OpenVPN under XOR obfuscation" in o["evidence"], table
    [p] = _flows(records, proto, 1194)
    assert (p["klass"], p["protocol"], p["confidence"]) == ("vpn_tunnel", "openvpn", "confirmed"), table
    others = [r for r in records if r not in (o, p) and r["klass"] not in ("benign", "unknown")]
    assert not others, table


# A TLS echo server (one line back per line), and a client that sends a line every 0.2 s on ONE TLS
# connection and prints how many came back. Both bounded in time and count.
_TLS_ECHO = r"""
import socket, ssl, sys, threading
tls = len(sys.argv) > 3  # with a certificate and key: TLS, else plain TCP
if tls:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
srv.settimeout(60)
print("line echo ready", flush=True)
def serve(conn):
    with (ctx.wrap_socket(conn, server_side=True) if tls else conn) as c:
        c.settimeout(15)
        f = c.makefile("rwb")
        for _ in range(200):
            line = f.readline()
            if not line:
                return
            f.write(line)
            f.flush()
for _ in range(4):
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""
_TLS_CLIENT = r"""
import socket, ssl, sys, time
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
back = 0
try:
    with ctx.wrap_socket(socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)) as c:
        c.settimeout(1.0)
        f = c.makefile("rwb")
        for i in range(int(sys.argv[3])):
            f.write(b"line %d\n" % i)
            f.flush()
            if f.readline():
                back += 1
            time.sleep(0.2)
except OSError:
    pass
print(back)
"""


def test_a_listed_tls_connection_is_blocked(tmp_path: Path) -> None:
    """TCP inline: a TLS connection to a listed server is decided on its handshake and cut off."""
    require_tools("iptables", "iptables-save", "iptables-restore", "ss", "conntrack")
    pki = make_pki(tmp_path / "pki")
    lst = tmp_path / "lab-vpn.yaml"
    lst.write_text(f"provider: LabVPN\nklass: vpn_tunnel\nprotocol: labvpn\nentries:\n"
                   f"  - {{address: {SERVER_IP}, ports: [{ECHO_PORT}], transport: tcp}}\n")
    (tmp_path / "registry.yaml").write_text("registrations: []\n")
    cfg = tmp_path / "tunnelwatch.yaml"
    cfg.write_text("queue: {num: 3, packets: 16}\nfirewall: {hooks: [forward], ipv6: false}\n"
                   "registry: registry.yaml\nendpoints: {lists: [lab-vpn.yaml]}\n"
                   "policy:\n  klass: {vpn_tunnel: {mode: enforce, min_confidence: list}}\n"
                   f"log: {{level: debug}}\nstatus: {{socket: {tmp_path / 'status.sock'}}}\n")
    with lab(tmp_path, ipv6=False) as lb:
        echo = _script(tmp_path, "tlsecho", _TLS_ECHO)
        lb.spawn(lb.server, [sys.executable, echo, SERVER_IP, str(ECHO_PORT), str(pki / "server.crt"),
                             str(pki / "server.key")], "echo")
        lb.wait_for_log("echo", "line echo ready")
        lb.spawn(lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)], "daemon")
        lb.wait_for_log("daemon", "ready:", timeout=20)
        client = _script(tmp_path, "tlsclient", _TLS_CLIENT)
        r = lb.run(lb.client, sys.executable, client, SERVER_IP, str(ECHO_PORT), "30", timeout=60)
        back = int(r.stdout.strip())
        log = lb.log("daemon")
        assert f"decided vpn_tunnel labvpn list block tcp {CLIENT_IP}:" in log, log[-3000:]
        assert back < 30, back


# The same client without TLS (the echo server is plain TCP without a certificate).
_TCP_CLIENT = _TLS_CLIENT.replace("ctx.wrap_socket(socket.create_connection(", "(socket.create_connection(")


def test_an_undecided_flow_is_decided_when_it_goes_quiet_and_the_block_reaches_the_kernel(
        tmp_path: Path) -> None:
    """queue.packets 4. Before docs/enforcement.md the kernel queued the handshake and the first line only
    and the daemon decided the flow QUIET_S later (marking its conntrack entry); now the kernel's window
    (2N+16 packets, room for the handshake and pure ACKs) brings the daemon its 4 payload packets, so the
    list block is decided within the window, on the verdict. Either way the kernel drops the rest."""
    require_tools("iptables", "iptables-save", "iptables-restore", "ss", "conntrack")
    lst = tmp_path / "lab-vpn.yaml"
    lst.write_text(f"provider: LabVPN\nklass: vpn_tunnel\nprotocol: labvpn\nentries:\n"
                   f"  - {{address: {SERVER_IP}, ports: [{ECHO_PORT}], transport: tcp}}\n")
    (tmp_path / "registry.yaml").write_text("registrations: []\n")
    cfg = tmp_path / "tunnelwatch.yaml"
    cfg.write_text("queue: {num: 3, packets: 4}\nfirewall: {hooks: [forward], ipv6: false}\n"
                   "registry: registry.yaml\nendpoints: {lists: [lab-vpn.yaml]}\n"
                   "policy:\n  klass: {vpn_tunnel: {mode: enforce, min_confidence: list}}\n"
                   f"log: {{level: debug}}\nstatus: {{socket: {tmp_path / 'status.sock'}}}\n")
    with lab(tmp_path, ipv6=False) as lb:
        echo = _script(tmp_path, "tcpecho", _TLS_ECHO)
        lb.spawn(lb.server, [sys.executable, echo, SERVER_IP, str(ECHO_PORT)], "echo")
        lb.wait_for_log("echo", "line echo ready")
        lb.spawn(lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)], "daemon")
        lb.wait_for_log("daemon", "ready:", timeout=20)
        client = _script(tmp_path, "tcpclient", _TCP_CLIENT)
        r = lb.run(lb.client, sys.executable, client, SERVER_IP, str(ECHO_PORT), "25", timeout=60)
        back = int(r.stdout.strip())
        log = lb.log("daemon")
        assert f"decided vpn_tunnel labvpn list block tcp {CLIENT_IP}:" in log, log[-3000:]
        # lines came back while the flow was undecided (a couple of them), then none
        assert 1 <= back < 20, back
        assert "no conntrack entry left" not in log
