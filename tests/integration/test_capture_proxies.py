"""Real obfuscated proxies between lab namespaces, captured on the router's WAN side and classified offline
and as the daemon would see them (`classify --inline`: no handshake, no pure ACKs, the kernel's windows).

shadowsocks-libev, v2ray (VMess) and obfs4proxy (standalone, driven through the TOR_PT_* environment)
carry an HTTP download from a plain web server in the server namespace; the proxy flow must be reported
as a heuristic fully encrypted flow and nothing else in the capture may be flagged. OpenSSH (port
forwarding, a command session, scp) must stay plain benign SSH: the fully encrypted rule must not fire
on it. Both views must agree on every assertion.

Each proxy carries two downloads (two connections): the GFW's exemptions that the rule copies let about
0.3 % of random first packets through (six printable bytes first, for one), by design. A connection whose
first client or server packet is exempt must stay unflagged (the rule needs both non-exempt), every other
one must be flagged, and at least one must be (both connections exempt: about 1 in 25,000).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.captures import flow_table
from support.netns import CLIENT_IP, SERVER_IP, Lab, lab, require_tools
from support.sshd import start_sshd
from tunnelwatch.classify.engine import INLINE_BUDGET
from tunnelwatch.classify.fep import exemption
from tunnelwatch.offline.classify import classify_file

pytestmark = pytest.mark.integration

Record = dict[str, Any]
WEB_PORT = 8000
PAYLOAD_BYTES = 200_000
PASSWORD = "tunnelwatch-lab-secret"
VMESS_ID = "b831381d-6324-4d53-ad4f-8cda48b30811"


def _capture(tmp_path: Path, tools: tuple[str, ...], drive: Callable[[Lab, Path], None]
             ) -> tuple[list[Record], list[Record]]:
    """Start the web server, run `drive` while tcpdump records the router's WAN side; classify the capture
    offline and inline (the daemon's view)."""
    require_tools("tcpdump", "ss", "curl", "python3", *tools)
    pcap = tmp_path / "wan0.pcap"
    with lab(tmp_path, ipv6=False) as lb:
        web = tmp_path / "www"
        web.mkdir()
        (web / "file.bin").write_bytes(os.urandom(PAYLOAD_BYTES))
        lb.spawn(lb.server, ["python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(web),
                             str(WEB_PORT)], "web")
        _listening(lb, lb.server, WEB_PORT)
        with lb.capture(lb.router, "wan0", pcap):
            drive(lb, tmp_path)
    return list(classify_file(str(pcap))), list(classify_file(str(pcap), inline=True, budget=INLINE_BUDGET))


def _listening(lb: Lab, ns: str, port: int) -> None:
    lb.wait_until(ns, ["sh", "-c", f"ss -ltn | grep -q ':{port} '"])


def _download(lb: Lab, *curl_args: str) -> None:
    r = lb.run(lb.client, "curl", "-sS", "--max-time", "15", "-o", "/dev/null", "-w", "%{size_download}",
               *curl_args)
    assert r.stdout.strip() == str(PAYLOAD_BYTES), f"download through the proxy failed: {r.stdout} {r.stderr}"


def _assert_proxy(views: tuple[list[Record], list[Record]], dport: int, pcap: Path) -> None:
    """In both views: the client's flows to `dport` are heuristic fully_encrypted unless their first packet
    is exempt (then unflagged), at least one is flagged, and no other flow is flagged."""
    # the rule needs both first data packets non-exempt: the client's and the server's
    exempt = {sport: " / ".join(filter(None, map(exemption, firsts)))
              for sport, firsts in _first_payloads(pcap, dport).items()}
    for view, records in zip(("offline", "inline"), views, strict=True):
        _assert_proxy_in(records, dport, view, exempt)


def _first_payloads(pcap: Path, dport: int) -> dict[int, tuple[bytes, bytes]]:
    """The first data packet of each client connection to `dport` and of its server, by client port."""
    from scapy.layers.inet import IP, TCP
    from scapy.utils import PcapReader

    first: dict[tuple[int, int], bytes] = {}
    with PcapReader(str(pcap)) as rd:
        for pkt in rd:
            if IP not in pkt or TCP not in pkt or dport not in (pkt[TCP].sport, pkt[TCP].dport):
                continue
            up = pkt[IP].src == CLIENT_IP and pkt[TCP].dport == dport
            key = (pkt[TCP].sport if up else pkt[TCP].dport, 0 if up else 1)
            data = bytes(pkt[TCP].payload)
            if data and key not in first:
                first[key] = data
    return {port: (data, first.get((port, 1), b"")) for (port, d), data in first.items() if d == 0}


def _assert_proxy_in(records: list[Record], dport: int, view: str, exempt: dict[int, str]) -> None:
    hits = [r for r in records if r["transport"] == "tcp" and r["dport"] == dport and r["src"] == CLIENT_IP
            and r["dst"] == SERVER_IP]
    assert len(hits) >= 2, f"{view}: fewer than two flows to port {dport}:\n{flow_table(records)}"
    for r in hits:
        why = exempt.get(r["sport"], "no data packet captured")
        if why:  # what the GFW rules let through by design: it must not be flagged either
            assert r["klass"] in ("benign", "unknown"), \
                f"{view}: exempt ({why}) yet flagged:\n{flow_table([r])}"
            continue
        assert (r["klass"], r["protocol"], r["confidence"]) == \
            ("proxy_obfuscated", "fully_encrypted", "heuristic"), \
            f"{view}: proxy flow mislabelled:\n{flow_table([r])}"
        assert r["evidence"]
    assert any(r["klass"] == "proxy_obfuscated" for r in hits), \
        f"{view}: no proxy flow flagged (first packets exempt: {exempt}):\n{flow_table(hits)}"
    others = [r for r in records if r not in hits and r["klass"] not in ("benign", "unknown")]
    assert not others, f"{view}: flows wrongly flagged:\n{flow_table(others)}"


def test_shadowsocks_libev(tmp_path: Path) -> None:
    def drive(lb: Lab, d: Path) -> None:
        common = ["-k", PASSWORD, "-m", "chacha20-ietf-poly1305"]
        lb.spawn(lb.server, ["ss-server", "-s", SERVER_IP, "-p", "8388", *common], "ss-server")
        lb.spawn(lb.client, ["ss-local", "-s", SERVER_IP, "-p", "8388", "-b", "127.0.0.1", "-l", "1080",
                             *common], "ss-local")
        _listening(lb, lb.server, 8388)
        _listening(lb, lb.client, 1080)
        for _ in range(2):
            _download(lb, "--socks5-hostname", "127.0.0.1:1080", f"http://127.0.0.1:{WEB_PORT}/file.bin")

    _assert_proxy(_capture(tmp_path, ("ss-server", "ss-local"), drive), 8388, tmp_path / "wan0.pcap")


def _v2ray_config(path: Path, cfg: dict[str, Any]) -> str:
    path.write_text(json.dumps({"log": {"loglevel": "warning"}, **cfg}))
    return str(path)


def test_v2ray_vmess(tmp_path: Path) -> None:
    def drive(lb: Lab, d: Path) -> None:
        server = _v2ray_config(d / "server.json", {
            "inbounds": [{"listen": SERVER_IP, "port": 10086, "protocol": "vmess",
                          "settings": {"clients": [{"id": VMESS_ID, "alterId": 0}]}}],
            "outbounds": [{"protocol": "freedom"}]})
        client = _v2ray_config(d / "client.json", {
            "inbounds": [{"listen": "127.0.0.1", "port": 1081, "protocol": "socks",
                          "settings": {"udp": False}}],
            "outbounds": [{"protocol": "vmess", "settings": {"vnext": [{
                "address": SERVER_IP, "port": 10086,
                "users": [{"id": VMESS_ID, "alterId": 0, "security": "aes-128-gcm"}]}]}}]})
        lb.spawn(lb.server, ["v2ray", "-config", server], "v2ray-server")
        lb.spawn(lb.client, ["v2ray", "-config", client], "v2ray-client")
        _listening(lb, lb.server, 10086)
        _listening(lb, lb.client, 1081)
        for _ in range(2):
            _download(lb, "--socks5-hostname", "127.0.0.1:1081", f"http://127.0.0.1:{WEB_PORT}/file.bin")

    _assert_proxy(_capture(tmp_path, ("v2ray",), drive), 10086, tmp_path / "wan0.pcap")


# A minimal SOCKS5 client for obfs4proxy's client side: the bridge's cert travels as the SOCKS5
# username/password (pt-spec: arguments in the username, a single NUL as the password), which curl
# cannot send. It fetches the web page through the tunnel and prints how many body bytes came back.
_PT_SOCKS_CLIENT = r"""
import socket, struct, sys
port, args, dst, dport = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3], int(sys.argv[4])
s = socket.create_connection(("127.0.0.1", port), timeout=15)
s.sendall(b"\x05\x01\x02")
assert s.recv(2) == b"\x05\x02"
s.sendall(b"\x01" + bytes([len(args)]) + args + b"\x01\x00")
assert s.recv(2)[1] == 0, "obfs4 client refused the arguments"
s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(dst) + struct.pack("!H", dport))
rep = s.recv(10)
assert rep[1] == 0, f"connect failed {rep!r}"
s.sendall(b"GET /file.bin HTTP/1.0\r\nHost: x\r\n\r\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
print(len(data.split(b"\r\n\r\n", 1)[1]))
"""


def test_obfs4proxy_standalone(tmp_path: Path) -> None:
    def drive(lb: Lab, d: Path) -> None:
        pt = {"TOR_PT_MANAGED_TRANSPORT_VER": "1", "TOR_PT_EXIT_ON_STDIN_CLOSE": "0"}
        (d / "srv").mkdir()
        (d / "cli").mkdir()
        lb.spawn(lb.server, ["obfs4proxy", "-enableLogging", "-logLevel", "INFO"], "obfs4-server", env={
            **pt, "TOR_PT_STATE_LOCATION": str(d / "srv"), "TOR_PT_SERVER_TRANSPORTS": "obfs4",
            "TOR_PT_SERVER_BINDADDR": f"obfs4-{SERVER_IP}:9443", "TOR_PT_ORPORT": f"127.0.0.1:{WEB_PORT}"})
        lb.wait_for_log("obfs4-server", "SMETHODS DONE")
        line = next(x for x in lb.log("obfs4-server").splitlines() if x.startswith("SMETHOD obfs4 "))
        args = line.split("ARGS:", 1)[1].strip().replace(",", ";")
        lb.spawn(lb.client, ["obfs4proxy"], "obfs4-client", env={
            **pt, "TOR_PT_STATE_LOCATION": str(d / "cli"), "TOR_PT_CLIENT_TRANSPORTS": "obfs4"})
        lb.wait_for_log("obfs4-client", "CMETHODS DONE")
        cline = next(x for x in lb.log("obfs4-client").splitlines() if x.startswith("CMETHOD obfs4 "))
        socks_port = cline.split()[-1].rsplit(":", 1)[1]
        for _ in range(2):
            r = lb.run(lb.client, "python3", "-c", _PT_SOCKS_CLIENT, socks_port, args, SERVER_IP, "9443")
            assert r.stdout.strip() == str(PAYLOAD_BYTES), f"obfs4 download failed: {r.stdout} {r.stderr}"

    _assert_proxy(_capture(tmp_path, ("obfs4proxy",), drive), 9443, tmp_path / "wan0.pcap")


def test_openssh_sessions_are_not_flagged_as_fully_encrypted(tmp_path: Path) -> None:
    def drive(lb: Lab, d: Path) -> None:
        opts = start_sshd(lb, d)
        ssh = ["ssh", *opts, "-p", "2222"]
        # dynamic forwarding (-D) with a download through it
        lb.spawn(lb.client, [*ssh, "-N", "-D", "127.0.0.1:1082", f"root@{SERVER_IP}"], "ssh-D")
        _listening(lb, lb.client, 1082)
        _download(lb, "--socks5-hostname", "127.0.0.1:1082", f"http://127.0.0.1:{WEB_PORT}/file.bin")
        # a command session and scp
        r = lb.run(lb.client, *ssh, f"root@{SERVER_IP}", "echo", "hello-from-ssh")
        assert "hello-from-ssh" in r.stdout
        lb.run(lb.client, "scp", *opts, "-P", "2222", f"root@{SERVER_IP}:{d / 'www' / 'file.bin'}",
               str(d / "copy.bin"))
        assert (d / "copy.bin").stat().st_size == PAYLOAD_BYTES

    for view, records in zip(("offline", "inline"), _capture(tmp_path, ("sshd", "ssh", "scp", "ssh-keygen"),
                                                              drive), strict=True):
        ssh_flows = [r for r in records if r["transport"] == "tcp" and r["dport"] == 2222]
        assert len(ssh_flows) == 3, f"{view}:\n{flow_table(records)}"
        for r in ssh_flows:
            assert (r["klass"], r["protocol"]) == ("benign", "ssh"), f"{view}:\n{flow_table([r])}"
        flagged = [r for r in records if r["klass"] not in ("benign", "unknown")]
        assert not flagged, f"{view}:\n{flow_table(flagged)}"
