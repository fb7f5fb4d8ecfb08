"""A real Mumble server (Debian's murmurd) answering the UDP ping, captured on the router's WAN side.

The ping request is crafted here (12 bytes: request type 0, an 8-byte identifier; the Mumble client is a
Qt desktop program), the answer is murmurd's own. pcap_facts first checks, independently of tunnelwatch,
that the server's 24-byte reply echoing the identifier is on the wire; then the flow must be classified
voip/mumble/confirmed and nothing else flagged.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pcap_facts import Seen, wait_for

from support.netns import SERVER_IP, lab, require_tools
from tunnelwatch.offline.classify import classify_file

pytestmark = pytest.mark.integration

PORT = 64738
IDENT = bytes.fromhex("0011223344556677")
# uname=root: murmurd would otherwise switch to the mumble-server user, which cannot reach the test's
# temporary directory
MURMUR_INI = """database={d}/murmur.sqlite
host={ip}
port={port}
users=100
bandwidth=72000
welcometext=tunnelwatch lab
logfile=
pidfile=
bonjour=false
uname=root
"""
# the client side: send the ping until the server answers (bounded), print the answer's length
PINGER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
for _ in range(10):
    s.sendto(bytes(4) + bytes.fromhex(sys.argv[2]), (sys.argv[1], {port}))
    try:
        data = s.recv(512)
    except TimeoutError:
        continue
    print("reply", len(data), data[4:12].hex())
    break
else:
    sys.exit("no reply from murmurd")
"""


def _reply(pkts: list[Seen]) -> bool:
    return any(p.transport == "udp" and p.sport == PORT and len(p.payload) == 24 and p.payload[4:12] == IDENT
               for p in pkts)


def test_murmurd_answers_the_ping(tmp_path: Path) -> None:
    require_tools("murmurd", "tcpdump", "ss")
    pcap = tmp_path / "mumble--wan0.pcap"
    (tmp_path / "murmur.ini").write_text(MURMUR_INI.format(d=tmp_path, ip=SERVER_IP, port=PORT))
    with lab(tmp_path) as lb, lb.capture(lb.router, "wan0", pcap):
        lb.spawn(lb.server, ["murmurd", "-fg", "-ini", str(tmp_path / "murmur.ini")], "murmurd")
        lb.wait_until(lb.server, ["sh", "-c", f"ss -lun | grep -q '{SERVER_IP}:{PORT} '"])
        r = lb.run(lb.client, sys.executable, "-c", PINGER.format(port=PORT), SERVER_IP, IDENT.hex(),
                   timeout=30)
        assert r.stdout.startswith(f"reply 24 {IDENT.hex()}"), r.stdout + r.stderr
        wait_for(pcap, _reply, "murmurd's 24-byte ping reply echoing the identifier")
    records = list(classify_file(str(pcap), progress=False))
    ping = [r for r in records if r["transport"] == "udp" and PORT in (r["sport"], r["dport"])]
    assert len(ping) == 1, ping
    assert (ping[0]["klass"], ping[0]["protocol"], ping[0]["confidence"]) == ("voip", "mumble", "confirmed")
    assert any("echoes the identifier" in e for e in ping[0]["evidence"]), ping[0]["evidence"]
    flagged = ("vpn_tunnel", "voip", "proxy_obfuscated")
    others = [r for r in records if r is not ping[0] and r["klass"] in flagged]
    assert not others, others
