"""Several NFQUEUE workers, one event stream: the workers forward their decisions to the main process, which
builds every event (docs/events.md). SIP OPTIONS exchanges from two client addresses (the rules give each
host one queue) reach both queues; every flow event in the spool must come from one stream with gapless
sequence numbers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from multiqueue_lab import HOSTS, add_addresses, queue_packets, two_workers_config

from support.netns import lab, require_tools
from support.spool import spool_events

pytestmark = pytest.mark.integration

QUEUE = 11
FLOWS = 12
SERVERS = [f"203.0.113.{20 + i}" for i in range(6)]
SIP_PORT = 5060
# A SIP responder: answers each OPTIONS with 200 OK echoing Via, From, To, Call-ID and CSeq.
RESPONDER = r"""
import selectors, socket, sys, time
sel = selectors.DefaultSelector()
for addr in sys.argv[1].split(","):  # one socket per address: each answer leaves from the address asked
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, int(sys.argv[2])))
    sel.register(s, selectors.EVENT_READ)
print("sip ready", flush=True)
end, n = time.monotonic() + 120, 0
while time.monotonic() < end and n < 1000:
    for key, _ in sel.select(0.5):
        data, peer = key.fileobj.recvfrom(4096)
        n += 1
        head = data.split(b"\r\n\r\n")[0].split(b"\r\n")
        names = (b"via", b"from", b"to", b"call-id", b"cseq")
        keep = [h for h in head[1:] if h.split(b":")[0].lower() in names]
        answer = b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b"\r\nContent-Length: 0\r\n\r\n"
        key.fileobj.sendto(answer, peer)
"""
# FLOWS OPTIONS requests, each from its own socket (its own flow), round robin over the client and the
# server addresses, each waiting for its answer.
CLIENT = r"""
import socket, sys
ok = 0
servers = sys.argv[1].split(",")
for i in range(int(sys.argv[3])):
    server = servers[i % len(servers)]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[4].split(",")[i % 2], 0))
    s.settimeout(3)
    call = "mq-%d@lab" % i
    msg = ("OPTIONS sip:probe@%s SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.2;branch=z9hG4bK%d\r\n"
           "From: <sip:lab@lab>;tag=%d\r\nTo: <sip:probe@lab>\r\nCall-ID: %s\r\nCSeq: 1 OPTIONS\r\n"
           "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n" % (server, i, i, call)).encode()
    s.sendto(msg, (server, int(sys.argv[2])))
    try:
        if call.encode() in s.recv(4096):
            ok += 1
    except OSError:
        pass
    s.close()
print(ok)
"""


def test_two_workers_report_through_one_stream(tmp_path: Path) -> None:
    require_tools("iptables", "ip6tables", "iptables-save", "iptables-restore")
    cfg = two_workers_config(tmp_path, QUEUE)
    with lab(tmp_path) as lb:
        (tmp_path / "responder.py").write_text(RESPONDER)
        (tmp_path / "client.py").write_text(CLIENT)
        add_addresses(lb, SERVERS)
        responder = [sys.executable, str(tmp_path / "responder.py"), ",".join(SERVERS), str(SIP_PORT)]
        lb.spawn(lb.server, responder, "sip")
        lb.wait_for_log("sip", "sip ready")
        lb.spawn(lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)], "daemon")
        lb.wait_for_log("daemon", "ready:", timeout=30)
        r = lb.run(lb.client, sys.executable, str(tmp_path / "client.py"), ",".join(SERVERS), str(SIP_PORT),
                   str(FLOWS), ",".join(HOSTS), timeout=90)
        assert int(r.stdout) == FLOWS, r.stdout + r.stderr
        seen = queue_packets(lb.run(lb.router, "cat", "/proc/net/netfilter/nfnetlink_queue").stdout)
        assert seen.get(QUEUE, 0) > 0 and seen.get(QUEUE + 1, 0) > 0, seen  # both workers had flows
        lb.stop("daemon")  # daemon_stopped is written after every forwarded decision
    events = spool_events(tmp_path / "state" / "spool.db")
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "daemon_started" and kinds[-1] == "daemon_stopped", kinds
    tagged = [e for e in events if e["kind"] == "flow_tagged" and e.get("protocol") == "sip"]
    assert len(tagged) == FLOWS, kinds
    assert len({e["stream"] for e in events}) == 1
    assert [e["seq"] for e in events] == list(range(len(events)))
