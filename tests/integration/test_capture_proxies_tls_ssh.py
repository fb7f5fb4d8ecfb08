"""Real TLS-in-TLS proxies and real OpenSSH between lab namespaces, captured on the router's WAN side.

v2ray's Trojan (and VMess over TLS) carries an HTTPS download from `openssl s_server` in the server
namespace: the proxy flow must be a heuristic tls_in_tls verdict and nothing else flagged. OpenSSH with
dynamic (-D, curl through it) and local (-L) forwarding must be heuristic ssh_forwarding, while an
interactive session (typed input on a pty) and an scp of 1 MB must stay plain benign ssh. The SSH flows
are classified with a deeper budget (SSH_BUDGET packets): channel traffic only starts after authentication.
Every capture is also classified as the daemon would see it (kernelview: no handshake, no pure ACKs, the
kernel's windows; port 2222 given the deep window an operator configures for SSH on a non-standard port),
and the same assertions hold there.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.captures import capture_classify, flow_table
from support.netns import CLIENT_IP, SERVER_IP, Lab
from support.pki import leaf, make_pki
from support.sshd import start_sshd
from tunnelwatch.classify.engine import INLINE_BUDGET
from tunnelwatch.classify.packet import Packet, parse_ip
from tunnelwatch.offline.kernelview import inline_records
from tunnelwatch.offline.pcapfile import PcapReader, ip_offset

pytestmark = pytest.mark.integration

Record = dict[str, Any]
HTTPS_PORT = 8443
PAYLOAD_BYTES = 200_000
PASSWORD = "tunnelwatch-lab-secret"
VMESS_ID = "b831381d-6324-4d53-ad4f-8cda48b30811"
SSH_BUDGET = 128


def _listening(lb: Lab, ns: str, port: int) -> None:
    lb.wait_until(ns, ["sh", "-c", f"ss -ltn | grep -q ':{port} '"])


def _https_server(lb: Lab, d: Path) -> Path:
    """openssl s_server serving d/www over TLS on 127.0.0.1 in the server namespace; returns the CA."""
    pki = make_pki(d)
    www = d / "www"
    www.mkdir()
    (www / "file.bin").write_bytes(os.urandom(PAYLOAD_BYTES))
    lb.spawn(lb.server, ["sh", "-c", f"cd {shlex.quote(str(www))} && exec openssl s_server -quiet -WWW "
                         f"-accept 127.0.0.1:{HTTPS_PORT} -cert {pki.server_cert} -key {pki.server_key} "
                         f"-cert_chain {pki.ca}"], "https")
    _listening(lb, lb.server, HTTPS_PORT)
    ca: Path = pki.ca
    return ca


def _download(lb: Lab, ca: Path, *curl_args: str) -> None:
    r = lb.run(lb.client, "curl", "-sS", "--max-time", "20", "--cacert", str(ca), "-o", "/dev/null", "-w",
               "%{size_download}", *curl_args, f"https://127.0.0.1:{HTTPS_PORT}/file.bin")
    assert r.stdout.strip() == str(PAYLOAD_BYTES), f"download through the proxy failed: {r.stdout} {r.stderr}"


def _capture(tmp_path: Path, tools: tuple[str, ...], drive: Callable[[Lab, Path], None],
             budget: int = 24) -> tuple[list[Record], list[Record]]:
    """The capture's records offline and inline (the daemon's view of the same capture)."""
    offline = capture_classify(tmp_path, ("curl", "openssl", *tools), lambda lb: drive(lb, tmp_path),
                               ipv6=False, budget=budget)
    return offline, _inline(tmp_path / "wan0.pcap")


def _inline(pcap: Path) -> list[Record]:
    pkts: list[Packet] = []
    with open(pcap, "rb") as fh:
        for ts, linktype, frame in PcapReader(fh, pcap.name):
            off = ip_offset(linktype, frame)
            p = parse_ip(frame, ts, off) if off >= 0 else None
            if p is not None:
                pkts.append(p)
    return inline_records(pcap.name, pkts, budget=INLINE_BUDGET,
                          deep={(6, 22): SSH_BUDGET, (6, 2222): SSH_BUDGET})


VIEWS = ("offline", "inline")


def _proxy_flows(records: list[Record], dport: int) -> list[Record]:
    hits = [r for r in records if r["transport"] == "tcp" and r["dport"] == dport and r["src"] == CLIENT_IP
            and r["dst"] == SERVER_IP]
    assert hits, f"no flow to port {dport}:\n{flow_table(records)}"
    return hits


def _assert_only(views: tuple[list[Record], list[Record]], dport: int, protocol: str) -> None:
    """In both views: the client's flow(s) to `dport` are heuristic `protocol`; no other flow is flagged."""
    for view, records in zip(VIEWS, views, strict=True):
        hits = _proxy_flows(records, dport)
        for r in hits:
            got = (r["klass"], r["protocol"], r["confidence"])
            assert got == ("proxy_obfuscated", protocol, "heuristic"), \
                f"{view}: proxy flow mislabelled:\n{flow_table([r])}"
            assert r["evidence"]
        others = [r for r in records if r not in hits and r["klass"] not in ("benign", "unknown")]
        assert not others, f"{view}: flows wrongly flagged:\n{flow_table(others)}"


def _v2ray(lb: Lab, d: Path, inbound: dict[str, Any], outbound: dict[str, Any]) -> None:
    """A v2ray server (inbound on SERVER_IP:10443 with TLS) and a client with a SOCKS inbound on 1081."""
    cert, key = leaf(d, "ca", "proxy", f"subjectAltName=IP:{SERVER_IP}\nextendedKeyUsage=serverAuth\n"
                     "basicConstraints=CA:FALSE\n")
    server = {"inbounds": [{"listen": SERVER_IP, "port": 10443, **inbound, "streamSettings": {
        "security": "tls", "tlsSettings": {"certificates": [{"certificateFile": str(cert),
                                                             "keyFile": str(key)}]}}}],
              "outbounds": [{"protocol": "freedom"}]}
    client = {"inbounds": [{"listen": "127.0.0.1", "port": 1081, "protocol": "socks",
                            "settings": {"udp": False}}],
              "outbounds": [{**outbound, "streamSettings": {"security": "tls", "tlsSettings": {
                  "serverName": SERVER_IP, "certificates": [{"usage": "verify",
                                                             "certificateFile": str(d / "ca.pem")}]}}}]}
    for name, cfg in (("server", server), ("client", client)):
        (d / f"v2ray-{name}.json").write_text(json.dumps({"log": {"loglevel": "warning"}, **cfg}))
    lb.spawn(lb.server, ["v2ray", "-config", str(d / "v2ray-server.json")], "v2ray-server")
    lb.spawn(lb.client, ["v2ray", "-config", str(d / "v2ray-client.json")], "v2ray-client")
    _listening(lb, lb.server, 10443)
    _listening(lb, lb.client, 1081)


def test_v2ray_trojan_is_tls_in_tls(tmp_path: Path) -> None:
    def drive(lb: Lab, d: Path) -> None:
        ca = _https_server(lb, d)
        _v2ray(lb, d, {"protocol": "trojan", "settings": {"clients": [{"password": PASSWORD}]}},
               {"protocol": "trojan", "settings": {"servers": [{"address": SERVER_IP, "port": 10443,
                                                                 "password": PASSWORD}]}})
        _download(lb, ca, "--socks5-hostname", "127.0.0.1:1081")

    _assert_only(_capture(tmp_path, ("v2ray",), drive), 10443, "tls_in_tls")


def test_v2ray_vmess_over_tls_is_tls_in_tls(tmp_path: Path) -> None:
    def drive(lb: Lab, d: Path) -> None:
        ca = _https_server(lb, d)
        _v2ray(lb, d, {"protocol": "vmess", "settings": {"clients": [{"id": VMESS_ID, "alterId": 0}]}},
               {"protocol": "vmess", "settings": {"vnext": [{"address": SERVER_IP, "port": 10443, "users": [
                   {"id": VMESS_ID, "alterId": 0, "security": "aes-128-gcm"}]}]}})
        _download(lb, ca, "--socks5-hostname", "127.0.0.1:1081")

    _assert_only(_capture(tmp_path, ("v2ray",), drive), 10443, "tls_in_tls")


def test_direct_https_is_plain_tls(tmp_path: Path) -> None:
    def drive(lb: Lab, d: Path) -> None:
        pki = make_pki(d)
        cert, key = leaf(d, "ca", "web", f"subjectAltName=IP:{SERVER_IP}\nextendedKeyUsage=serverAuth\n"
                         "basicConstraints=CA:FALSE\n")
        www = d / "www"
        www.mkdir()
        (www / "file.bin").write_bytes(os.urandom(PAYLOAD_BYTES))
        serve = (f"cd {shlex.quote(str(www))} && exec openssl s_server -quiet -WWW -accept "
                 f"{SERVER_IP}:{HTTPS_PORT} -cert {cert} -key {key} -cert_chain {pki.ca}")
        lb.spawn(lb.server, ["sh", "-c", serve], "https")
        _listening(lb, lb.server, HTTPS_PORT)
        for _ in range(3):
            # two downloads over one connection (HTTP/1.1 keep-alive), each body to /dev/null
            r = lb.run(lb.client, "curl", "-sS", "--max-time", "20", "--cacert", str(pki.ca), "-o",
                       "/dev/null", "-o", "/dev/null", "-w", "%{size_download}", f"https://{SERVER_IP}:{HTTPS_PORT}/file.bin",
                       f"https://{SERVER_IP}:{HTTPS_PORT}/file.bin")
            assert r.stdout.strip() == str(PAYLOAD_BYTES) * 2, r.stderr

    for view, records in zip(VIEWS, _capture(tmp_path, (), drive, budget=SSH_BUDGET), strict=True):
        for r in _proxy_flows(records, HTTPS_PORT):
            assert (r["klass"], r["protocol"]) == ("benign", "tls"), f"{view}:\n{flow_table([r])}"
        flagged = [r for r in records if r["klass"] not in ("benign", "unknown")]
        assert not flagged, f"{view}:\n{flow_table(flagged)}"


# ---------------------------------------------------------------- OpenSSH

def _ssh_flows(records: list[Record]) -> list[Record]:
    return [r for r in records if r["transport"] == "tcp" and r["dport"] == 2222]


def _web(lb: Lab, d: Path) -> None:
    www = d / "www"
    www.mkdir(exist_ok=True)
    (www / "file.bin").write_bytes(os.urandom(PAYLOAD_BYTES))
    for i in range(8):
        (www / f"page{i}.html").write_text("<html>" + "x" * (2000 + 3000 * i) + "</html>")
    lb.spawn(lb.server, ["python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(www),
                         "8000"], "web")
    _listening(lb, lb.server, 8000)


def _browse(lb: Lab, *proxy: str, base: str = "http://127.0.0.1:8000") -> None:
    """Fetch a few pages and the big file, each over its own connection (like a browser's first visit)."""
    for i in range(8):
        r = lb.run(lb.client, "curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
                   *proxy, f"{base}/page{i}.html")
        assert r.stdout.strip() == "200", r.stderr
    r = lb.run(lb.client, "curl", "-sS", "--max-time", "15", "-o", "/dev/null", "-w", "%{size_download}",
               *proxy, f"{base}/file.bin")
    assert r.stdout.strip() == str(PAYLOAD_BYTES), r.stderr


def test_ssh_dynamic_and_local_forwarding_are_flagged(tmp_path: Path) -> None:
    def drive(lb: Lab, d: Path) -> None:
        _web(lb, d)
        opts = start_sshd(lb, d)
        lb.spawn(lb.client, ["ssh", *opts, "-p", "2222", "-N", "-D", "127.0.0.1:1082", f"root@{SERVER_IP}"],
                 "ssh-D")
        _listening(lb, lb.client, 1082)
        _browse(lb, "--socks5-hostname", "127.0.0.1:1082")
        lb.stop("ssh-D")
        lb.spawn(lb.client, ["ssh", *opts, "-p", "2222", "-N", "-L", "127.0.0.1:8080:127.0.0.1:8000",
                             f"root@{SERVER_IP}"], "ssh-L")
        _listening(lb, lb.client, 8080)
        _browse(lb, base="http://127.0.0.1:8080")
        lb.stop("ssh-L")

    views = _capture(tmp_path, ("sshd", "ssh", "ssh-keygen", "python3"), drive, budget=SSH_BUDGET)
    for view, records in zip(VIEWS, views, strict=True):
        flows = _ssh_flows(records)
        assert len(flows) == 2, f"{view}:\n{flow_table(records)}"
        for r in flows:
            assert (r["klass"], r["protocol"], r["confidence"]) == \
                ("proxy_obfuscated", "ssh_forwarding", "heuristic"), f"{view}:\n{flow_table([r])}"
        others = [r for r in records if r not in flows and r["klass"] not in ("benign", "unknown")]
        assert not others, f"{view}:\n{flow_table(others)}"


# Types a few shell commands on a pty, one key at a time, waiting for each echo like a person would.
_TYPIST = r"""
import os, pty, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execvp("ssh", ["ssh", "-tt", *sys.argv[1:]])
out = b""
def wait_for(needle, timeout=15.0):
    global out
    end = time.monotonic() + timeout
    while needle not in out:
        assert time.monotonic() < end, f"timed out waiting for {needle!r}: {out[-500:]!r}"
        out += os.read(fd, 4096)
wait_for(b"#")
for cmd in ("echo typed-by-a-person", "ls /", "uname -a", "pwd", "exit"):
    for ch in cmd:
        os.write(fd, ch.encode())
        wait_for(ch.encode())
    os.write(fd, b"\r")
    if cmd != "exit":
        wait_for(b"#")
os.waitpid(pid, 0)
print("typed", out.count(b"typed-by-a-person"))
"""


def test_interactive_ssh_and_scp_are_not_flagged(tmp_path: Path) -> None:
    def drive(lb: Lab, d: Path) -> None:
        opts = start_sshd(lb, d)
        (d / "big.bin").write_bytes(os.urandom(1_000_000))
        r = lb.run(lb.client, "python3", "-c", _TYPIST, *opts, "-p", "2222", f"root@{SERVER_IP}",
                   "env PS1='# ' sh -i", timeout=60)
        assert "typed" in r.stdout, r.stdout + r.stderr
        lb.run(lb.client, "scp", *opts, "-P", "2222", f"root@{SERVER_IP}:{d / 'big.bin'}",
               str(d / "copy.bin"))
        assert (d / "copy.bin").stat().st_size == 1_000_000
        lb.run(lb.client, "scp", *opts, "-P", "2222", str(d / "big.bin"), f"root@{SERVER_IP}:{d / 'up.bin'}")
        r = lb.run(lb.client, "ssh", *opts, "-p", "2222", f"root@{SERVER_IP}", "echo", "hello-from-ssh")
        assert "hello-from-ssh" in r.stdout

    views = _capture(tmp_path, ("sshd", "ssh", "scp", "ssh-keygen", "python3"), drive, budget=SSH_BUDGET)
    for view, records in zip(VIEWS, views, strict=True):
        flows = _ssh_flows(records)
        assert len(flows) == 4, f"{view}:\n{flow_table(records)}"
        for r in flows:
            assert (r["klass"], r["protocol"]) == ("benign", "ssh"), f"{view}:\n{flow_table([r])}"
        flagged = [r for r in records if r["klass"] not in ("benign", "unknown")]
        assert not flagged, f"{view}:\n{flow_table(flagged)}"
