"""Real peers for the namespace lab: a throw-away EC PKI, OpenVPN and WireGuard tunnel pairs, web servers.

Used by `tunnelwatch lab` and the integration tests. Everything is generated under the caller's work
directory at run time (no key material in the repo) and runs inside the lab's namespaces. Run as
`python -m tunnelwatch.lab.peers https ADDR PORT DIR CERT KEY` it is the lab's HTTPS server.
"""

from __future__ import annotations

import functools
import http.server
import ssl
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tunnelwatch.lab.netlab import SERVER_IP, Lab

TUN_SERVER_IP: Final = "10.99.0.1"
TUN_CLIENT_IP: Final = "10.99.0.2"
OPENVPN_PORT: Final = 1194
WIREGUARD_PORT: Final = 51820
HTTP_PORT: Final = 8080
HTTPS_PORT: Final = 8443
# wireguard-go refuses to start on a kernel with the WireGuard module unless told otherwise
_WG_ENV: Final = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {r.stderr.strip()}")


def make_pki(d: Path) -> Path:
    """CA, server and client certificates with P-256 keys, in `d`."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=d)
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=tw-test-ca", "-days", "2",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-out", "ca.crt", cwd=d)
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=d)
        _openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN=tw-test-{name}", "-out", f"{name}.csr",
                 cwd=d)
        ext = d / f"{name}.ext"
        ext.write_text(f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                       f"extendedKeyUsage={usage}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.crt", cwd=d)
    return d


@dataclass
class OpenVPNPair:
    """Config files of a point-to-point TLS OpenVPN tunnel client -> server over UDP or TCP."""

    server_conf: Path
    client_conf: Path
    port: int = OPENVPN_PORT
    tun_server: str = TUN_SERVER_IP


def openvpn_pair(d: Path, proto: str = "udp", *, server_ip: str = SERVER_IP, port: int = OPENVPN_PORT,
                 tun: tuple[str, str] = (TUN_SERVER_IP, TUN_CLIENT_IP), pki: Path | None = None
                 ) -> OpenVPNPair:
    """Write server/client configs (TLS mode, certificates from make_pki) under `d`."""
    d.mkdir(parents=True, exist_ok=True)
    pki = pki or make_pki(d / "pki")
    common = (f"dev tun\nproto {proto}{'-server' if proto == 'tcp' else ''}\n"
              f"ca {pki}/ca.crt\ndh none\ncipher AES-256-GCM\ndata-ciphers AES-256-GCM\n"
              "verb 3\nconnect-retry 1\nhand-window 60\npersist-tun\n")
    server = d / "server.conf"
    server.write_text(common + f"tls-server\nlocal {server_ip}\nport {port}\n"
                      f"cert {pki}/server.crt\nkey {pki}/server.key\n"
                      f"ifconfig {tun[0]} {tun[1]}\n")
    client = d / "client.conf"
    client_common = common.replace("proto tcp-server", "proto tcp-client")
    client.write_text(client_common + f"tls-client\nremote {server_ip} {port}\nnobind\n"
                      f"cert {pki}/client.crt\nkey {pki}/client.key\nremote-cert-tls server\n"
                      f"ifconfig {tun[1]} {tun[0]}\n")
    return OpenVPNPair(server, client, port, tun[0])


def start_openvpn(lb: Lab, pair: OpenVPNPair, name: str = "ovpn") -> None:
    """Start the server `<name>-server` (waiting until it listens) and the client `<name>-client`."""
    lb.spawn(lb.server, ["openvpn", "--config", str(pair.server_conf)], f"{name}-server")
    flag = "-lun" if "proto udp" in pair.server_conf.read_text() else "-ltn"
    lb.wait_until(lb.server, ["sh", "-c", f"ss {flag} | grep -q ':{pair.port} '"])
    lb.spawn(lb.client, ["openvpn", "--config", str(pair.client_conf)], f"{name}-client")


def tunnel_ping(lb: Lab, count: int = 3, addr: str = TUN_SERVER_IP) -> bool:
    """True when the client reaches the server's tunnel address through the tunnel."""
    r = lb.run(lb.client, "ping", "-c", str(count), "-i", "0.2", "-W", "1", addr, check=False)
    return r.returncode == 0


def _wg_iface(lb: Lab, ns: str, iface: str, key: Path, addr: str, peer_args: Sequence[str]) -> None:
    lb.spawn(ns, ["wireguard-go", "-f", iface], iface, env=_WG_ENV)
    lb.wait_until(ns, ["wg", "show", iface], timeout=10)  # the UAPI socket exists
    lb.run(ns, "wg", "set", iface, "private-key", str(key), *peer_args)
    lb.run(ns, "ip", "addr", "add", f"{addr}/24", "dev", iface)
    lb.run(ns, "ip", "link", "set", iface, "up")


def start_wireguard(lb: Lab, d: Path, *, tun: tuple[str, str] = ("10.99.2.1", "10.99.2.2"),
                    port: int = WIREGUARD_PORT) -> tuple[str, str]:
    """A wireguard-go pair client -> server:port; returns (server, client) interface names.

    Interface names carry the lab prefix: wireguard-go's control sockets live in the shared
    /var/run/wireguard, so two labs (or a host wg0) must not collide.
    """
    d.mkdir(parents=True, exist_ok=True)
    keys: dict[str, tuple[Path, str]] = {}
    for side in ("server", "client"):
        priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True, timeout=10).stdout
        pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
        path = d / f"{side}.key"
        path.write_text(priv)
        path.chmod(0o600)
        keys[side] = (path, pub)
    s_if, c_if = f"{lb.prefix}ws", f"{lb.prefix}wc"
    _wg_iface(lb, lb.server, s_if, keys["server"][0], tun[0],
              ["listen-port", str(port), "peer", keys["client"][1], "allowed-ips", f"{tun[1]}/32"])
    _wg_iface(lb, lb.client, c_if, keys["client"][0], tun[1],
              ["peer", keys["server"][1], "allowed-ips", f"{tun[0]}/32", "endpoint", f"{SERVER_IP}:{port}"])
    return s_if, c_if


def start_web(lb: Lab, root: Path, *, pki: Path | None = None) -> None:
    """An HTTP server and an HTTPS server (both Python) on the server namespace."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "big.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    (root / "index.html").write_text("hello from the server namespace\n")
    lb.spawn(lb.server, [sys.executable, "-m", "http.server", "--bind", SERVER_IP, "--directory", str(root),
                         str(HTTP_PORT)], "http")
    pki = pki or make_pki(root.parent / "web-pki")
    lb.spawn(lb.server, [sys.executable, "-m", "tunnelwatch.lab.peers", "https", SERVER_IP, str(HTTPS_PORT),
                         str(root), str(pki / "server.crt"), str(pki / "server.key")], "https")
    for port in (HTTP_PORT, HTTPS_PORT):
        lb.wait_until(lb.server, ["sh", "-c", f"ss -ltn | grep -q ':{port} '"])


def fetch(lb: Lab, url: str, *, insecure: bool = False) -> subprocess.CompletedProcess[str]:
    """curl from the client namespace, bounded in time; stdout is "<status> <bytes>"."""
    args = ["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
    if insecure:
        args.append("-k")
    return lb.run(lb.client, *args, url, check=False, timeout=20)


def serve_https(addr: str, port: int, root: str, cert: str, key: str) -> None:
    """Serve `root` over HTTPS until killed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
    srv = http.server.ThreadingHTTPServer((addr, port), handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 7 or sys.argv[1] != "https":
        sys.exit("usage: python -m tunnelwatch.lab.peers https ADDR PORT DIR CERT KEY")
    serve_https(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
