"""IPFIX export decoded by real collectors: nfdump's nfcapd stores it (nfdump shows the flows and the
applicationId), tshark dissects every field including applicationName and the enterprise elements.

The flows are the engine's own verdicts on the golden captures (IKE over IPv4 and IPv6, SIP/RTP) plus an
OpenVPN verdict with an action, so the whole classify -> export path is exercised."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw
from scapy.utils import wrpcap

from tunnelwatch.report.ipfix import IpfixExporter

pytestmark = pytest.mark.integration

CAPTURES = Path(__file__).resolve().parents[1] / "data" / "captures"
PEN = 32473
OPENVPN: dict[str, object] = {
    "src": "192.168.1.10", "sport": 40000, "dst": "203.0.113.10", "dport": 1194, "transport": "udp",
    "klass": "vpn_tunnel", "protocol": "openvpn", "confidence": "confirmed", "action": "block",
    "packets": 12, "bytes": 3456, "first_seen": 1_795_000_000.25, "last_seen": 1_795_000_005.5,
}


def need(*tools: str) -> None:
    """Fail loudly (CI installs them): nfcapd/nfdump come from Debian's nfdump, tshark from tshark."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {missing}: apt-get install nfdump tshark")


def engine_flows() -> list[dict[str, object]]:
    """What `tunnelwatch classify` says about the golden captures, plus the OpenVPN verdict."""
    pcaps = [CAPTURES / n for n in ("strongswan-ikev2-psk-ipv4.pcap", "strongswan-ikev2-psk-ipv6.pcap",
                                     "baresip-call.pcap")]
    cmd = [sys.executable, "-m", "tunnelwatch", "classify", "--format", "jsonl", *map(str, pcaps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout
    flows: list[dict[str, object]] = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert {f["protocol"] for f in flows} >= {"ike", "sip", "rtp"}
    return [*flows, OPENVPN]


def _udp_port_state(port: int) -> list[int] | None:
    """rx_queue sizes of IPv4 UDP sockets bound to 127.0.0.1:port (None when nothing is bound)."""
    want = f"0100007F:{port:04X}"
    table = [line.split() for line in Path("/proc/net/udp").read_text().splitlines()[1:]]
    queues = [int(cols[4].split(":")[1], 16) for cols in table if cols[1] == want]
    return queues or None


def _wait(cond: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nfcapd_stores_the_export(tmp_path: Path) -> None:
    need("nfcapd", "nfdump")
    flows = engine_flows()
    store = tmp_path / "nf"
    store.mkdir()
    port, proc = 0, None
    for _ in range(3):  # the free port may be taken between probe and bind: try another
        port = _free_udp_port()
        cmd = ["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", str(store), "-t", "3600"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while proc.poll() is None and _udp_port_state(port) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None and _udp_port_state(port) is not None:
            break
        proc.kill()
        proc.wait(5)
    assert proc is not None and proc.poll() is None, "nfcapd did not start"
    try:
        exp = IpfixExporter(("127.0.0.1", port), observation_domain=42)
        exp.export(flows)
        exp.close()
        assert exp.stats["records"] == len(flows) and exp.stats["errors"] == 0
        # loopback queues each datagram during sendto; an empty queue means nfcapd has read them all
        _wait(lambda: _udp_port_state(port) == [0], "nfcapd to read the export")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert f"Flows: {len(flows)}" in err, err
    fmt = "fmt:%sa|%da|%sp|%dp|%pr|%pkt|%byt|%nbid"
    out = subprocess.run(["nfdump", "-q", "-N", "-R", str(store), "-o", fmt], check=True, capture_output=True,
                         text=True, timeout=30).stdout
    rows = {tuple(c.strip() for c in line.split("|")) for line in out.splitlines() if line.strip()}
    assert ("192.168.1.10", "203.0.113.10", "40000", "1194", "17", "12", "3456", f"20..{PEN}..1") in rows
    for f in flows:
        proto = {"udp": "17", "tcp": "6"}[str(f["transport"])]
        row = (str(f["src"]), str(f["dst"]), str(f["sport"]), str(f["dport"]), proto, str(f["packets"]),
               str(f["bytes"]))
        assert any(r[:7] == row for r in rows), (row, rows)
    assert {r[7] for r in rows} >= {f"20..{PEN}..3", f"20..{PEN}..10", f"20..{PEN}..11"}, "ike, sip, rtp ids"


def _tshark(pcap: Path, decode_as: str) -> list[dict[str, str]]:
    fields = ["cflow.srcaddr", "cflow.srcaddrv6", "cflow.dstport", "cflow.protocol", "cflow.packets",
              "cflow.octets", "cflow.appl_id.classification_engine_id", "cflow.appl_id.selector_id",
              "cflow.appl_name", "cflow.enterprise_private_entry", "cflow.od_id"]
    cmd = ["tshark", "-n", "-r", str(pcap), "-d", decode_as, "-T", "fields", "-E", "separator=\t",
           "-E", "occurrence=a", "-E", "aggregator=,"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout
    rows = [dict(zip(fields, line.split("\t"), strict=True)) for line in out.splitlines()]
    return [r for r in rows if r["cflow.appl_name"]]


def _hex(s: str) -> str:
    return s.encode().hex()


def _check_tshark(rows: list[dict[str, str]], flows: list[dict[str, object]]) -> None:
    names = ",".join(r["cflow.appl_name"] for r in rows).split(",")
    assert sorted(names) == sorted(str(f["protocol"]) for f in flows)
    pies = ",".join(r["cflow.enterprise_private_entry"] for r in rows)
    for word in ("vpn_tunnel", "voip", "confirmed", "block"):
        assert _hex(word) in pies, word
    engines = set(",".join(r["cflow.appl_id.classification_engine_id"] for r in rows).split(","))
    assert engines == {"20"}
    selectors = ",".join(r["cflow.appl_id.selector_id"] for r in rows)
    assert f"{PEN:08x}00000001" in selectors, "openvpn under our PEN"
    addrs = ",".join(r["cflow.srcaddr"] + "," + r["cflow.srcaddrv6"] for r in rows)
    for f in flows:
        assert str(f["src"]) in addrs


def test_tshark_decodes_udp_export(tmp_path: Path) -> None:
    need("tshark")
    flows = engine_flows()
    coll = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    coll.bind(("127.0.0.1", 0))
    coll.settimeout(5)
    port = coll.getsockname()[1]
    exp = IpfixExporter(("127.0.0.1", port), observation_domain=42)
    exp.export(flows)
    exp.close()
    grams = [coll.recvfrom(65535) for _ in range(exp.stats["messages"])]
    coll.close()
    # A pcap of exactly the datagrams the collector socket received, with their real ports, for tshark.
    wrpcap(str(tmp_path / "udp.pcap"), [IP(src="127.0.0.1", dst="127.0.0.1") / UDP(sport=a[1], dport=port)
                                        / Raw(g) for g, a in grams])
    _check_tshark(_tshark(tmp_path / "udp.pcap", f"udp.port=={port},cflow"), flows)


def test_tshark_decodes_tcp_export(tmp_path: Path) -> None:
    need("tshark")
    flows = engine_flows()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(10)
    port = srv.getsockname()[1]
    chunks: list[bytes] = []

    def collect() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(10)
            for _ in range(10_000):
                b = conn.recv(65536)
                if not b:
                    return
                chunks.append(b)

    t = threading.Thread(target=collect)
    t.start()
    exp = IpfixExporter(("127.0.0.1", port), transport="tcp", observation_domain=42)
    exp.export(flows)
    exp.close()
    t.join(15)
    srv.close()
    stream = b"".join(chunks)
    assert stream, "nothing received over TCP"
    # A pcap of the received byte stream as one TCP connection (handshake + data segments) for tshark.
    c, ip = 40001, IP(src="127.0.0.1", dst="127.0.0.1")
    pkts = [ip / TCP(sport=c, dport=port, flags="S", seq=100),
            ip / TCP(sport=port, dport=c, flags="SA", seq=500, ack=101),
            ip / TCP(sport=c, dport=port, flags="A", seq=101, ack=501)]
    seq = 101
    for i in range(0, len(stream), 1400):
        seg = stream[i:i + 1400]
        pkts.append(ip / TCP(sport=c, dport=port, flags="PA", seq=seq, ack=501) / Raw(seg))
        seq += len(seg)
    wrpcap(str(tmp_path / "tcp.pcap"), pkts)
    _check_tshark(_tshark(tmp_path / "tcp.pcap", f"tcp.port=={port},cflow"), flows)
