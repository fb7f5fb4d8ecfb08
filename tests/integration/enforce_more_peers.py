"""More real peers for the enforcement tests: wireguard-go, OpenVPN over IPv6, a DNS responder, SIPp.

Keys and configs are generated under the test's tmp dir at test time; everything runs inside the lab's
namespaces. Interface names carry the lab prefix because wireguard-go's control socket
(/var/run/wireguard/IFACE.sock) is not per namespace.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from support.netns import CLIENT_IP, SERVER_IP, SERVER_IP6, Lab, sh

WG_PORT = 51820
WG_SERVER_IP = "10.98.0.1"
WG_CLIENT_IP = "10.98.0.2"
OVPN6_TUN_SERVER_IP = "10.97.0.1"
OVPN6_TUN_CLIENT_IP = "10.97.0.2"
OVPN_PORT = 1194
DNS_ANSWER = "192.0.2.53"
SIP_PORT = 5060


def ping_until(lb: Lab, ns: str, addr: str, timeout: float = 15.0) -> bool:
    """True once one ping gets through within `timeout` (a tunnel may need a handshake first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lb.run(ns, "ping", "-c1", "-W1", addr, check=False).returncode == 0:
            return True
    return False


def _wg_keys(d: Path, name: str) -> tuple[Path, str]:
    key = d / f"{name}.key"
    key.write_text(sh("wg", "genkey").stdout)
    key.chmod(0o600)
    return key, sh("wg", "pubkey", input=key.read_text()).stdout.strip()


def start_wireguard(lb: Lab, d: Path) -> tuple[str, str]:
    """A wireguard-go tunnel client -> server:51820 over IPv4; returns (client iface, server iface)."""
    d.mkdir(parents=True, exist_ok=True)
    skey, spub = _wg_keys(d, "server")
    ckey, cpub = _wg_keys(d, "client")
    ifaces = (f"{lb.prefix}wc", f"{lb.prefix}ws")
    for ns, iface in ((lb.client, ifaces[0]), (lb.server, ifaces[1])):
        lb.spawn(ns, ["wireguard-go", iface], f"wg-{iface}", env={"WG_PROCESS_FOREGROUND": "1"})
        lb.wait_until(ns, ["wg", "show", iface])
    lb.run(lb.server, "wg", "set", ifaces[1], "private-key", str(skey), "listen-port", str(WG_PORT),
           "peer", cpub, "allowed-ips", f"{WG_CLIENT_IP}/32")
    lb.run(lb.client, "wg", "set", ifaces[0], "private-key", str(ckey), "peer", spub,
           "allowed-ips", f"{WG_SERVER_IP}/32", "endpoint", f"{SERVER_IP}:{WG_PORT}")
    for ns, iface, ip in ((lb.client, ifaces[0], WG_CLIENT_IP), (lb.server, ifaces[1], WG_SERVER_IP)):
        lb.run(ns, "ip", "addr", "add", f"{ip}/24", "dev", iface)
        lb.run(ns, "ip", "link", "set", iface, "up")
    return ifaces


def wg_handshakes(lb: Lab, iface: str) -> int:
    """Number of peers of `iface` (client side) with a completed handshake."""
    out = lb.run(lb.client, "wg", "show", iface, "latest-handshakes").stdout
    return sum(1 for ln in out.splitlines() if ln.split()[-1:] not in (["0"], []))


def openvpn6_configs(d: Path, pki: Path) -> tuple[Path, Path]:
    """OpenVPN TLS over UDP/IPv6 to [SERVER_IP6]:1194, point-to-point; returns (server, client) configs."""
    common = (f"dev tun\nproto udp6\nca {pki}/ca.crt\ndh none\ncipher AES-256-GCM\n"
              "data-ciphers AES-256-GCM\nverb 3\nconnect-retry 1\nhand-window 60\npersist-tun\n")
    server, client = d / "server6.conf", d / "client6.conf"
    server.write_text(common + f"tls-server\nlocal {SERVER_IP6}\nport {OVPN_PORT}\n"
                      f"cert {pki}/server.crt\nkey {pki}/server.key\n"
                      f"ifconfig {OVPN6_TUN_SERVER_IP} {OVPN6_TUN_CLIENT_IP}\n")
    client.write_text(common + f"tls-client\nremote {SERVER_IP6} {OVPN_PORT}\nnobind\n"
                      f"cert {pki}/client.crt\nkey {pki}/client.key\nremote-cert-tls server\n"
                      f"ifconfig {OVPN6_TUN_CLIENT_IP} {OVPN6_TUN_SERVER_IP}\n")
    return server, client


_DNS_SERVER = f"""
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(({SERVER_IP!r}, 53))
print("dns ready", flush=True)
for _ in range(1000):
    q, peer = s.recvfrom(512)
    if len(q) < 12:
        continue
    end = q.index(0, 12) + 5  # question: name, type, class
    answer = b"\\xc0\\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton({DNS_ANSWER!r})
    s.sendto(q[:2] + b"\\x81\\x80" + q[4:6] + b"\\x00\\x01\\x00\\x00\\x00\\x00" + q[12:end] + answer, peer)
"""

_DNS_QUERY = f"""
import socket, struct, sys
name = b"".join(bytes([len(p)]) + p for p in b"lab.example".split(b".")) + b"\\x00"
q = b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00" + name + struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, ({SERVER_IP!r}, 53))
r = s.recv(512)
ok = r[:2] == b"\\x12\\x34" and r[3] & 0x0F == 0 and struct.unpack("!H", r[6:8])[0] == 1
print(socket.inet_ntoa(r[-4:]) if ok else "bad reply")
"""


def start_dns(lb: Lab) -> None:
    """A tiny UDP DNS responder on SERVER_IP:53 answering every A query with DNS_ANSWER."""
    lb.spawn(lb.server, [sys.executable, "-u", "-c", _DNS_SERVER], "dns")
    lb.wait_for_log("dns", "dns ready", timeout=10)


def dns_query(lb: Lab) -> str:
    """Ask the responder from the client; the answer address, or the error."""
    r = lb.run(lb.client, sys.executable, "-c", _DNS_QUERY, check=False, timeout=15)
    return r.stdout.strip() or r.stderr.strip()[-300:]


def start_sip_uas(lb: Lab) -> None:
    """SIPp's built-in UAS on SERVER_IP:5060 (answers every INVITE, then the BYE)."""
    lb.spawn(lb.server, ["sipp", "-sn", "uas", "-i", SERVER_IP, "-p", str(SIP_PORT), "-nostdin"], "sipp-uas")
    lb.wait_until(lb.server, ["sh", "-c", f"ss -lun | grep -q '{SERVER_IP}:{SIP_PORT} '"])


def sip_call(lb: Lab, stats: Path) -> tuple[int, str]:
    """One call with SIPp's built-in UAC (INVITE, 200, ACK, BYE); (exit code, final statistics csv)."""
    r = lb.run(lb.client, "sipp", "-sn", "uac", "-i", CLIENT_IP, "-p", "5070", "-m", "1", "-r", "1",
               "-nostdin", "-timeout", "20", "-trace_stat", "-stf", str(stats), f"{SERVER_IP}:{SIP_PORT}",
               check=False, timeout=40)
    return r.returncode, stats.read_text() if stats.exists() else r.stdout[-2000:] + r.stderr[-1000:]
