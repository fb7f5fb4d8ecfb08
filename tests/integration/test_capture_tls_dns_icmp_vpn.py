"""Real tunnels over DNS, ICMP and DTLS between lab namespaces: iodine, ptunnel, ocserv + openconnect.

Each test brings the real Debian programs up (server side in the server namespace, client side in the
client namespace), proves the tunnel carries traffic, captures on the router's WAN side and classifies
the capture offline: the tunnel flow must carry the expected verdict and nothing else may be flagged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from support.captures import capture_classify, flow_table
from support.netns import CLIENT_IP, SERVER_IP, Lab, sh
from support.pki import leaf, make_pki

pytestmark = pytest.mark.integration

Record = dict[str, Any]
BENIGN = ("benign", "unknown")
IODINE_NET, IODINE_SERVER_TUN = "10.53.0.1/27", "10.53.0.1"
TOPDOMAIN = "t.lab.example"
PTUNNEL_LOCAL, WEB_PORT = 8000, 8080
OCSERV_NET, OCSERV_PORT = "10.66.0.0", 443
SECRET = "lab-only-secret"


def _assert_only(records: list[Record], transport: str, dport: int, protocol: str, confidence: str) -> Record:
    """Exactly one client->server flow of `transport`/`dport` with that verdict; no other flow flagged."""
    hits = [r for r in records if r["transport"] == transport and r["dport"] == dport
            and r["src"] == CLIENT_IP and r["dst"] == SERVER_IP]
    assert len(hits) == 1, f"expected one {transport}/{dport} flow from the client:\n{flow_table(records)}"
    rec = hits[0]
    assert (rec["klass"], rec["protocol"], rec["confidence"]) == ("vpn_tunnel", protocol, confidence), \
        f"tunnel flow mislabelled:\n{flow_table([rec])}"
    others = [r for r in records if r is not rec and r["klass"] not in BENIGN]
    assert not others, f"flows wrongly flagged:\n{flow_table(others)}\nall flows:\n{flow_table(records)}"
    return rec


def _ping(lb: Lab, dst: str, tries: int = 20) -> None:
    for _ in range(tries):
        if lb.run(lb.client, "ping", "-n", "-c1", "-W1", dst, check=False).returncode == 0:
            return
    state = lb.run(lb.client, "sh", "-c", "ip addr; ip route", check=False).stdout
    raise AssertionError(f"no ping reply from {dst} through the tunnel after {tries} tries:\n{state}")


def test_iodine_dns_tunnel(tmp_path: Path) -> None:
    def drive(lb: Lab) -> None:
        lb.spawn(lb.server, ["iodined", "-f", "-P", SECRET, "-l", SERVER_IP, "-p", "53", IODINE_NET,
                             TOPDOMAIN], "iodined")
        lb.wait_until(lb.server, ["sh", "-c", "ss -lun | grep -q ':53 '"])
        # -r: stay on DNS (no raw UDP shortcut), the path a resolver would carry
        lb.spawn(lb.client, ["iodine", "-f", "-r", "-P", SECRET, SERVER_IP, TOPDOMAIN], "iodine")
        lb.wait_for_log("iodine", "Connection setup complete", timeout=25)
        _ping(lb, IODINE_SERVER_TUN)

    records = capture_classify(tmp_path, ("iodine", "iodined"), drive, ipv6=False)
    rec = _assert_only(records, "udp", 53, "iodine", "confirmed")
    assert any("VACK" in e for e in rec["evidence"])


def test_ptunnel_icmp_tunnel(tmp_path: Path) -> None:
    def drive(lb: Lab) -> None:
        web = tmp_path / "web"
        web.mkdir()
        (web / "index.html").write_text("through the ping tunnel\n")
        lb.spawn(lb.server, ["python3", "-m", "http.server", str(WEB_PORT), "--bind", SERVER_IP,
                             "--directory", str(web)], "web")
        lb.wait_until(lb.server, ["sh", "-c", f"ss -ltn | grep -q ':{WEB_PORT} '"])
        # stdbuf: ptunnel's log is block-buffered into a file otherwise
        lb.spawn(lb.server, ["stdbuf", "-oL", "ptunnel", "-x", SECRET, "-v", "3"], "ptunnel-proxy")
        lb.wait_for_log("ptunnel-proxy", "Ping proxy is listening", timeout=10)
        lb.spawn(lb.client, ["stdbuf", "-oL", "ptunnel", "-x", SECRET, "-p", SERVER_IP,
                             "-lp", str(PTUNNEL_LOCAL),
                             "-da", SERVER_IP, "-dp", str(WEB_PORT), "-v", "3"], "ptunnel-client")
        lb.wait_until(lb.client, ["sh", "-c", f"ss -ltn | grep -q ':{PTUNNEL_LOCAL} '"])
        r = lb.run(lb.client, "curl", "-sS", "--max-time", "15", f"http://127.0.0.1:{PTUNNEL_LOCAL}/",
                   check=False, timeout=25)
        assert "through the ping tunnel" in r.stdout, f"curl through ptunnel: {r.stdout} {r.stderr}\n" \
            f"{lb.log('ptunnel-client')[-2000:]}"

    records = capture_classify(tmp_path, ("ptunnel", "stdbuf", "curl", "python3"), drive, ipv6=False)
    rec = _assert_only(records, "icmp", 0, "ptunnel", "confirmed")
    assert any("0xD5200880" in e for e in rec["evidence"])


# openconnect's own vpnc-script would rewrite the host's /etc/resolv.conf (shared by the namespaces):
# this one only configures the tunnel device inside the client namespace.
_VPNC_SCRIPT = """#!/bin/sh
if [ "$reason" = connect ]; then
    ip link set dev "$TUNDEV" up mtu "${INTERNAL_IP4_MTU:-1300}"
    ip addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
    ip route add %(net)s/24 dev "$TUNDEV"
fi
exit 0
"""


def _ocserv_config(d: Path) -> Path:
    pki = make_pki(d)
    cert, key = leaf(d, "ca", "ocserv", f"subjectAltName=IP:{SERVER_IP}\nextendedKeyUsage=serverAuth\n"
                                         "basicConstraints=CA:FALSE\n")
    hashed = sh("openssl", "passwd", "-6", SECRET).stdout.strip()
    (d / "ocpasswd").write_text(f"labuser:*:{hashed}\n")
    conf = d / "ocserv.conf"
    conf.write_text(
        f'auth = "plain[passwd={d}/ocpasswd]"\n'
        f"listen-host = {SERVER_IP}\ntcp-port = {OCSERV_PORT}\nudp-port = {OCSERV_PORT}\n"
        f"socket-file = {d}/ocserv.sock\npid-file = {d}/ocserv.pid\n"
        f"server-cert = {cert}\nserver-key = {key}\nca-cert = {pki.ca}\n"
        "isolate-workers = false\nmax-clients = 4\nmax-same-clients = 4\nkeepalive = 300\ndpd = 60\n"
        "mobile-dpd = 300\ntry-mtu-discovery = false\nauth-timeout = 60\ncookie-timeout = 300\n"
        "deny-roaming = false\nuse-occtl = false\ndevice = vpns\npredictable-ips = true\n"
        f"ipv4-network = {OCSERV_NET}\nipv4-netmask = 255.255.255.0\n"
        'tls-priorities = "NORMAL:%SERVER_PRECEDENCE"\n')
    script = d / "vpnc-script"
    script.write_text(_VPNC_SCRIPT % {"net": OCSERV_NET})
    script.chmod(0o755)
    return conf


def _openconnect(lb: Lab, d: Path, name: str) -> None:
    """One openconnect session: authenticate, wait for its DTLS channel, ping the gateway through it."""
    fd = os.open(d / "password", os.O_RDONLY)
    try:
        lb.spawn(lb.client, ["openconnect", "--protocol=anyconnect", "--user", "labuser", "--passwd-on-stdin",
                             "--non-inter", "--cafile", str(d / "ca.pem"), "--script", str(d / "vpnc-script"),
                             f"https://{SERVER_IP}:{OCSERV_PORT}/"], name, stdin=fd)
    finally:
        os.close(fd)
    lb.wait_for_log(name, "Established DTLS connection", timeout=25)
    lb.wait_until(lb.server, ["sh", "-c", "ip -4 -o addr show | grep -q ' vpns.* inet '"], timeout=10)
    line = lb.run(lb.server, "sh", "-c", "ip -4 -o addr show | grep ' vpns' | tail -1").stdout.split()
    _ping(lb, line[3].split("/")[0])


@pytest.mark.parametrize("sessions", [1, 2])
def test_ocserv_openconnect(tmp_path: Path, sessions: int) -> None:
    d = tmp_path / "ocserv"
    d.mkdir()

    def drive(lb: Lab) -> None:
        conf = _ocserv_config(d)
        (d / "password").write_text(SECRET + "\n")
        lb.spawn(lb.server, ["ocserv", "-f", "-d", "1", "-c", str(conf)], "ocserv")
        lb.wait_until(lb.server, ["sh", "-c", f"ss -lun | grep -q ':{OCSERV_PORT} '"])
        lb.wait_until(lb.server, ["sh", "-c", f"ss -ltn | grep -q ':{OCSERV_PORT} '"])
        for n in range(sessions):
            _openconnect(lb, d, f"openconnect{n}")
            if n + 1 < sessions:
                lb.stop(f"openconnect{n}")

    records = capture_classify(tmp_path, ("ocserv", "openconnect", "openssl"), drive, ipv6=False)
    records.sort(key=lambda r: float(r["first_seen"]))
    dtls = [r for r in records if r["transport"] == "udp" and r["dport"] == OCSERV_PORT]
    labels = [(r["klass"], r["protocol"], r["confidence"]) for r in dtls]
    assert labels == [("vpn_tunnel", "anyconnect", "confirmed")] * sessions, flow_table(records)
    tcp = [r for r in records if r["transport"] == "tcp" and r["dport"] == OCSERV_PORT]
    # The first session's CSTP (TLS) channel opens before any DTLS: ordinary-looking TLS, honestly not
    # flagged. Once a DTLS channel confirmed the gateway, later TLS connections to it are tagged.
    tagged = [r for r in tcp if r["protocol"] == "anyconnect"]
    assert all(r["protocol"] in ("tls", "anyconnect") for r in tcp), flow_table(tcp)
    assert tcp[0]["protocol"] == "tls", flow_table(tcp)
    if sessions == 1:
        assert not tagged, flow_table(tcp)
    else:
        assert tagged and all(r["confidence"] == "confirmed" for r in tagged), flow_table(tcp)
    others = [r for r in records if r not in dtls and r not in tagged and r["klass"] not in BENIGN]
    assert not others, f"flows wrongly flagged:\n{flow_table(others)}"
