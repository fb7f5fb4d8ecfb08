"""Real peers for the enforcement tests: a throw-away EC PKI, an OpenVPN server/client pair, web servers.

Everything is generated under the test's tmp dir at test time (no key material in the repo) and runs
inside the lab's namespaces.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from support.netns import SERVER_IP, Lab, sh

TUN_SERVER_IP = "10.99.0.1"
TUN_CLIENT_IP = "10.99.0.2"
OPENVPN_PORT = 1194
HTTP_PORT = 8080
HTTPS_PORT = 8443


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


def openvpn_pair(d: Path, proto: str = "udp") -> OpenVPNPair:
    """Write server/client configs (TLS mode, certificates from make_pki) under `d`."""
    pki = make_pki(d / "pki")
    common = (f"dev tun\nproto {proto}{'-server' if proto == 'tcp' else ''}\n"
              f"ca {pki}/ca.crt\ndh none\ncipher AES-256-GCM\ndata-ciphers AES-256-GCM\n"
              "verb 3\nconnect-retry 1\nhand-window 60\npersist-tun\n")
    server = d / "server.conf"
    server.write_text(common + f"tls-server\nlocal {SERVER_IP}\nport {OPENVPN_PORT}\n"
                      f"cert {pki}/server.crt\nkey {pki}/server.key\n"
                      f"ifconfig {TUN_SERVER_IP} {TUN_CLIENT_IP}\n")
    client = d / "client.conf"
    client_common = common.replace("proto tcp-server", "proto tcp-client")
    client.write_text(client_common + f"tls-client\nremote {SERVER_IP} {OPENVPN_PORT}\nnobind\n"
                      f"cert {pki}/client.crt\nkey {pki}/client.key\nremote-cert-tls server\n"
                      f"ifconfig {TUN_CLIENT_IP} {TUN_SERVER_IP}\n")
    return OpenVPNPair(server, client)


def start_openvpn(lb: Lab, pair: OpenVPNPair) -> None:
    """Start the server (waiting until it listens) and the client."""
    lb.spawn(lb.server, ["openvpn", "--config", str(pair.server_conf)], "ovpn-server")
    flag = "-lun" if "proto udp" in pair.server_conf.read_text() else "-ltn"
    lb.wait_until(lb.server, ["sh", "-c", f"ss {flag} | grep -q ':{OPENVPN_PORT} '"])
    lb.spawn(lb.client, ["openvpn", "--config", str(pair.client_conf)], "ovpn-client")


def tunnel_ping(lb: Lab, count: int = 3) -> bool:
    """True when the client reaches the server's tunnel address through the tunnel."""
    r = lb.run(lb.client, "ping", "-c", str(count), "-i", "0.2", "-W", "1", TUN_SERVER_IP, check=False)
    return r.returncode == 0


def start_web(lb: Lab, root: Path) -> None:
    """An HTTP server (python) and an HTTPS server (openssl s_server) on the server namespace."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "big.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    (root / "index.html").write_text("hello from the server namespace\n")
    lb.spawn(lb.server, [sys.executable, "-m", "http.server", "--bind", SERVER_IP, "--directory", str(root),
                         str(HTTP_PORT)], "http")
    pki = make_pki(root.parent / "web-pki")
    lb.spawn(lb.server, ["openssl", "s_server", "-quiet", "-www", "-accept", f"{SERVER_IP}:{HTTPS_PORT}",
                         "-cert", str(pki / "server.crt"), "-key", str(pki / "server.key")], "https")
    for port in (HTTP_PORT, HTTPS_PORT):
        lb.wait_until(lb.server, ["sh", "-c", f"ss -ltn | grep -q ':{port} '"])


def fetch(lb: Lab, url: str, *, insecure: bool = False) -> subprocess.CompletedProcess[str]:
    """curl from the client namespace, bounded in time; stdout is the body."""
    args = ["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
    if insecure:
        args.append("-k")
    return lb.run(lb.client, *args, url, check=False, timeout=20)


__all__ = ["fetch", "make_pki", "openvpn_pair", "sh", "start_openvpn", "start_web", "tunnel_ping"]
