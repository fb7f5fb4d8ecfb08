"""Real VPN peers for the capture tests: OpenVPN (TLS and static-key) and wireguard-go pairs, HTTPS and DNS.

Owns the configuration of each peer pair and bringing it up inside the lab until a ping crosses the
tunnel. Key material is generated under the test's tmp dir at test time; nothing secret lives in the repo.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from enforce_peers import make_pki

from support.netns import SERVER_IP, Lab, sh

OPENVPN_PORT = 1194
WG_PORT = 51820
HTTPS_PORT = 8443
DNS_PORT = 53
OVPN_NET = "10.8.0.0"
OVPN_SERVER_TUN_IP = "10.8.0.1"
P2P_SERVER_TUN_IP = "10.99.0.1"
P2P_CLIENT_TUN_IP = "10.99.0.2"
WG_SERVER_TUN_IP = "10.77.0.1"
WG_CLIENT_TUN_IP = "10.77.0.2"
READY = "Initialization Sequence Completed"


@dataclass(frozen=True)
class Peers:
    """Server and client config files of one OpenVPN pair and the server's tunnel address."""

    server_conf: Path
    client_conf: Path
    proto: str
    server_tun_ip: str


def openvpn_tls(d: Path, proto: str = "udp", wrap: str = "") -> Peers:
    """A multi-client (`server` directive) TLS OpenVPN pair; wrap is "", "tls-auth" or "tls-crypt"."""
    d.mkdir(parents=True, exist_ok=True)
    pki = make_pki(d / "pki")
    server_extra = client_extra = ""
    if wrap:
        key = d / f"{wrap}.key"
        sh("openvpn", "--genkey", "secret", str(key))
        # tls-auth needs opposite key directions on the two ends; tls-crypt has none.
        server_extra = f"{wrap} {key}{' 0' if wrap == 'tls-auth' else ''}\n"
        client_extra = f"{wrap} {key}{' 1' if wrap == 'tls-auth' else ''}\n"
    common = (f"dev tun\nca {pki}/ca.crt\ndata-ciphers AES-256-GCM\nverb 3\n"
              "persist-tun\npersist-key\n")
    server = d / "server.conf"
    server.write_text(common + server_extra +
                      f"proto {proto}{'-server' if proto == 'tcp' else ''}\nlocal {SERVER_IP}\n"
                      f"port {OPENVPN_PORT}\nserver {OVPN_NET} 255.255.255.0\ntopology subnet\n"
                      f"dh none\ncert {pki}/server.crt\nkey {pki}/server.key\n")
    client = d / "client.conf"
    client.write_text(common + client_extra +
                      f"client\nproto {proto}{'-client' if proto == 'tcp' else ''}\n"
                      f"remote {SERVER_IP} {OPENVPN_PORT}\nnobind\nconnect-retry 1\n"
                      f"cert {pki}/client.crt\nkey {pki}/client.key\nremote-cert-tls server\n")
    return Peers(server, client, proto, OVPN_SERVER_TUN_IP)


def openvpn_static(d: Path) -> Peers:
    """A point-to-point static-key (`secret`) OpenVPN pair over UDP with AES-256-CBC + HMAC-SHA1."""
    d.mkdir(parents=True, exist_ok=True)
    key = d / "static.key"
    sh("openvpn", "--genkey", "secret", str(key))
    common = f"dev tun\nproto udp\ncipher AES-256-CBC\nauth SHA1\nverb 3\nport {OPENVPN_PORT}\nping 1\n"
    server = d / "server.conf"
    server.write_text(common + f"secret {key} 0\nlocal {SERVER_IP}\n"
                      f"ifconfig {P2P_SERVER_TUN_IP} {P2P_CLIENT_TUN_IP}\n")
    client = d / "client.conf"
    client.write_text(common + f"secret {key} 1\nremote {SERVER_IP}\nnobind\n"
                      f"ifconfig {P2P_CLIENT_TUN_IP} {P2P_SERVER_TUN_IP}\n")
    return Peers(server, client, "udp", P2P_SERVER_TUN_IP)


def start_openvpn(lb: Lab, peers: Peers, timeout: float = 20.0) -> None:
    """Start server then client; return once both report the tunnel up."""
    lb.spawn(lb.server, ["openvpn", "--config", str(peers.server_conf)], "ovpn-server")
    flag = "-lun" if peers.proto == "udp" else "-ltn"
    lb.wait_until(lb.server, ["sh", "-c", f"ss {flag} | grep -q ':{OPENVPN_PORT} '"])
    lb.spawn(lb.client, ["openvpn", "--config", str(peers.client_conf)], "ovpn-client")
    lb.wait_for_log("ovpn-client", READY, timeout=timeout)
    lb.wait_for_log("ovpn-server", READY, timeout=timeout)


def ping_through(lb: Lab, dst: str, *, sizes: tuple[int, ...] = (56,), tries: int = 20) -> None:
    """Wait until one ping to `dst` from the client succeeds (bounded), then send one of each size."""
    for _ in range(tries):
        if lb.run(lb.client, "ping", "-n", "-c1", "-W1", dst, check=False).returncode == 0:
            break
    else:
        raise AssertionError(f"no ping reply from {dst} through the tunnel after {tries} tries")
    for size in sizes:
        r = lb.run(lb.client, "ping", "-n", "-c1", "-W2", "-s", str(size), dst, check=False)
        assert r.returncode == 0, f"ping -s {size} {dst} failed: {r.stdout}{r.stderr}"


def _wg_up(lb: Lab, ns: str, dev: str, key: Path, peer_pub: str, addr: str, peer_addr: str,
           endpoint: str = "") -> None:
    # wireguard-go's control socket is a file (/var/run/wireguard/<dev>.sock) shared by all namespaces,
    # so each end needs a name unique on the host: the lab prefix provides that.
    lb.spawn(ns, ["wireguard-go", dev], f"wg-{dev}", env={"WG_PROCESS_FOREGROUND": "1"})
    lb.wait_until(ns, ["ip", "link", "show", dev], timeout=10)
    lb.wait_until(ns, ["wg", "show", dev], timeout=10)
    args = ["wg", "set", dev, "private-key", str(key), "peer", peer_pub, "allowed-ips", f"{peer_addr}/32"]
    if endpoint:
        args += ["endpoint", endpoint]
    else:
        args[3:3] = ["listen-port", str(WG_PORT)]
    lb.run(ns, *args)
    lb.run(ns, "ip", "addr", "add", f"{addr}/24", "dev", dev)
    lb.run(ns, "ip", "link", "set", dev, "up")


def start_wireguard(lb: Lab, d: Path, server_ip: str = SERVER_IP) -> None:
    """wireguard-go on server (listening) and client (endpoint = server_ip); keys from `wg genkey`."""
    d.mkdir(parents=True, exist_ok=True)
    pubs = {}
    for side in ("server", "client"):
        priv = sh("wg", "genkey").stdout.strip()
        (d / f"{side}.key").write_text(priv + "\n")
        (d / f"{side}.key").chmod(0o600)
        pubs[side] = sh("wg", "pubkey", input=priv + "\n").stdout.strip()
    _wg_up(lb, lb.server, f"{lb.prefix}ws", d / "server.key", pubs["client"], WG_SERVER_TUN_IP,
           WG_CLIENT_TUN_IP)
    host = f"[{server_ip}]" if ":" in server_ip else server_ip
    _wg_up(lb, lb.client, f"{lb.prefix}wc", d / "client.key", pubs["server"], WG_CLIENT_TUN_IP,
           WG_SERVER_TUN_IP, endpoint=f"{host}:{WG_PORT}")


def start_https(lb: Lab, d: Path) -> None:
    """openssl s_server -www on the server namespace, listening on HTTPS_PORT."""
    pki = make_pki(d / "web-pki")
    lb.spawn(lb.server, ["openssl", "s_server", "-quiet", "-www", "-accept", f"{SERVER_IP}:{HTTPS_PORT}",
                         "-cert", str(pki / "server.crt"), "-key", str(pki / "server.key")], "https")
    lb.wait_until(lb.server, ["sh", "-c", f"ss -ltn | grep -q ':{HTTPS_PORT} '"])


# A stub DNS responder: answers every A query with 192.0.2.1, enough for a real query/response exchange.
_DNS_SERVER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("dns ready", flush=True)
while True:
    q, peer = s.recvfrom(512)
    if len(q) < 12:
        continue
    end = q.index(b"\0", 12) + 5
    ans = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1])
    s.sendto(q[:2] + b"\x81\x80" + q[4:6] + b"\x00\x01\x00\x00\x00\x00" + q[12:end] + ans, peer)
"""

_DNS_CLIENT = r"""
import socket, struct, sys
name = b"".join(bytes([len(p)]) + p for p in sys.argv[3].encode().split(b".")) + b"\0"
q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(q, (sys.argv[1], int(sys.argv[2])))
r = s.recv(512)
print(".".join(str(b) for b in r[-4:]) if r[:2] == q[:2] and r[7] == 1 else "bad answer")
"""


def start_dns(lb: Lab) -> None:
    """The stub DNS responder on the server namespace (UDP DNS_PORT)."""
    lb.spawn(lb.server, [sys.executable, "-c", _DNS_SERVER, SERVER_IP, str(DNS_PORT)], "dns")
    lb.wait_for_log("dns", "dns ready", timeout=10)


def dns_query(lb: Lab, name: str = "example.test") -> str:
    """Resolve `name` from the client through the stub responder; returns the answered address."""
    r = lb.run(lb.client, sys.executable, "-c", _DNS_CLIENT, SERVER_IP, str(DNS_PORT), name,
               check=False, timeout=10)
    return r.stdout.strip()


__all__ = ["Peers", "dns_query", "openvpn_static", "openvpn_tls", "ping_through", "start_dns",
           "start_https", "start_openvpn", "start_wireguard"]
