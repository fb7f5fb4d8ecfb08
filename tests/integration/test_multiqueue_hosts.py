"""Several queue workers, one host's state in one place: the rules send every connection of a host (its
initiator address) to the same queue, so a name a host looked up in DNS is known to the worker that sees
that host's next flow, whatever server that flow goes to. With --queue-balance (a hash of the address
pair) the DNS answer and the flow would land on different workers for about half the servers.

Also checked end to end across workers: the heartbeat's verdict latency (the samples live in the worker
processes), its per-action flow counts (allowed flows are only counted in the workers), and both queues
serving traffic (two client addresses of different parity).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
from multiqueue_lab import HOSTS, add_addresses, queue_packets, two_workers_config

from support.netns import SERVER_IP, lab, require_tools
from support.spool import spool_events
from tunnelwatch.appliance.statussock import fetch_snapshot

pytestmark = pytest.mark.integration

QUEUE = 21
SERVERS = [f"203.0.113.{40 + n}" for n in range(4)]  # named h0..h3.vpnlab.test
PORT = 4000
# A DNS server answering A queries for hN.vpnlab.test with SERVERS[N], and a UDP echo on every server.
SERVE = r"""
import selectors, socket, struct, sys, time
servers = sys.argv[2].split(",")
sel = selectors.DefaultSelector()
dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dns.bind((sys.argv[1], 53))
sel.register(dns, selectors.EVENT_READ, "dns")
for addr in servers:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, int(sys.argv[3])))
    sel.register(s, selectors.EVENT_READ, "echo")
print("serve ready", flush=True)
end = time.monotonic() + 120
while time.monotonic() < end:
    for key, _ in sel.select(0.5):
        data, peer = key.fileobj.recvfrom(4096)
        if key.data == "echo":
            key.fileobj.sendto(data, peer)
            continue
        pos, labels = 12, []
        while pos < len(data) and data[pos]:
            labels.append(data[pos + 1:pos + 1 + data[pos]].decode())
            pos += 1 + data[pos]
        question = data[12:pos + 5]
        n = int(labels[0][1:])
        answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + socket.inet_aton(servers[n])
        key.fileobj.sendto(data[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + answer, peer)
"""
# From each host: look hN.vpnlab.test up, then exchange three datagrams of random bytes with its address.
CLIENT = r"""
import os, socket, struct, sys
ok = 0
dns_server, hosts, port = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
for host in hosts:
    for n in range(int(sys.argv[4])):
        q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        q.bind((host, 0))
        q.settimeout(3)
        name = b"".join(bytes([len(p)]) + p for p in (b"h%d" % n, b"vpnlab", b"test")) + b"\0"
        q.sendto(struct.pack("!HHHHHH", n + 1, 0x100, 1, 0, 0, 0) + name + b"\0\1\0\1", (dns_server, 53))
        addr = socket.inet_ntoa(q.recv(512)[-4:])
        q.close()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, 0))
        s.settimeout(3)
        for _ in range(3):
            data = os.urandom(16)
            s.sendto(data, (addr, port))
            ok += s.recv(64) == data
        s.close()
print(ok)
"""
LIST = """name: lab-vpn
provider: lab
klass: vpn_tunnel
protocol: vpn_app
description: the lab's VPN service, known by name only
entries:
  - {domain: "*.vpnlab.test", provider: Lab VPN, source: "this test"}
"""


def _named(events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e.get("src", ""), e.get("dst", "")): e for e in events
            if e["kind"] == "flow_tagged" and e.get("dst") in SERVERS}


def _by_action(snapshot: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in snapshot.get("counters", []):
        if c.get("name") == "flows":
            action = c.get("labels", {}).get("action", "")
            out[action] = out.get(action, 0) + int(c.get("value", 0))
    return out


def _latency_beats(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == "heartbeat" and "verdict_latency_ms" in e]


def test_a_hosts_dns_names_reach_the_worker_of_its_flows(tmp_path: Path) -> None:
    require_tools("iptables", "ip6tables", "iptables-save", "iptables-restore")
    (tmp_path / "lab-vpn.yaml").write_text(LIST)
    cfg = two_workers_config(tmp_path, QUEUE, extra="endpoints: {lists: [lab-vpn.yaml]}\n",
                             report="heartbeat: 1, min_confidence: list")
    with lab(tmp_path) as lb:
        (tmp_path / "serve.py").write_text(SERVE)
        (tmp_path / "client.py").write_text(CLIENT)
        add_addresses(lb, SERVERS)
        lb.spawn(lb.server, [sys.executable, str(tmp_path / "serve.py"), SERVER_IP, ",".join(SERVERS),
                             str(PORT)], "serve")
        lb.wait_for_log("serve", "serve ready")
        lb.spawn(lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)], "daemon")
        lb.wait_for_log("daemon", "ready:", timeout=30)
        r = lb.run(lb.client, sys.executable, str(tmp_path / "client.py"), SERVER_IP, ",".join(HOSTS),
                   str(PORT), str(len(SERVERS)), timeout=90)
        assert int(r.stdout) == 3 * len(HOSTS) * len(SERVERS), r.stdout + r.stderr
        seen = queue_packets(lb.run(lb.router, "cat", "/proc/net/netfilter/nfnetlink_queue").stdout)
        assert seen.get(QUEUE, 0) > 0 and seen.get(QUEUE + 1, 0) > 0, seen  # one host per queue
        spool = tmp_path / "state" / "spool.db"
        # the flows to the servers are decided by the quiet rule (2 s without a packet); heartbeats come
        # every second and carry the workers' latency samples
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            events = spool_events(spool)
            if len(_named(events)) == len(HOSTS) * len(SERVERS) and _latency_beats(events):
                break
            time.sleep(0.2)
        deadline = time.monotonic() + 10  # the workers send their counts once a second
        while time.monotonic() < deadline:
            by_action = _by_action(fetch_snapshot(str(tmp_path / "status.sock")))
            if by_action.get("allow", 0) >= len(HOSTS) * len(SERVERS):
                break
            time.sleep(0.2)
        lb.stop("daemon")  # daemon_stopped is written after every forwarded decision
    events = spool_events(tmp_path / "state" / "spool.db")
    named = _named(events)
    for host in HOSTS:
        for n, server in enumerate(SERVERS):
            ev = named.get((host, server))
            assert ev is not None, (host, server, sorted(named))
            assert any(f"h{n}.vpnlab.test" in line for line in ev.get("evidence", [])), ev
    beats = _latency_beats(events)
    assert beats and beats[-1]["verdict_latency_ms"]["p50"] > 0, beats[-1:]
    # the DNS lookups are allowed and only counted in the workers (no record each): the counts still
    # reach the status, next to the reported flows
    assert by_action.get("allow", 0) >= len(HOSTS) * len(SERVERS), by_action
    assert by_action.get("report", 0) == len(HOSTS) * len(SERVERS), by_action
