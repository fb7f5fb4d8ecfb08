"""Fault injection in the namespace lab: the daemon under conditions it cannot prevent.

Each test provokes one fault against the real daemon in the router namespace and checks the three
promises: nothing crashes, the customer keeps connectivity, nothing reported is lost (or, where loss is
unavoidable, it is counted). docs/faults.md is the matrix with the outcome of each case.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from support.netns import SERVER_IP, Lab, lab, require_tools
from support.spool import spool_events
from tunnelwatch.appliance.statusweb import fetch_snapshot
from tunnelwatch.lab.peers import HTTP_PORT, fetch, openvpn_pair, start_openvpn, start_web, tunnel_ping
from tunnelwatch.report.spool import Spool

pytestmark = pytest.mark.integration

QUEUE = 11
TOOLS = ("iptables", "ip6tables", "iptables-save", "iptables-restore", "curl", "ss", "openssl")
FAKETIME_LIB = Path("/usr/lib") / subprocess.run(
    ["sh", "-c", "dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -dumpmachine"],
    capture_output=True, text=True).stdout.strip() / "faketime" / "libfaketime.so.1"

# A bounded UDP sender for the client namespace: one datagram to each port of a range.
UDP_SPRAY = """
import socket, sys
dst, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for port in range(first, first + count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"hello %d" % port, (dst, port))
    s.close()
print("sent", count, flush=True)
"""


def _config(tmp: Path, *, maxlen: int = 4096, fail_closed: bool = False, extra: str = "",
            policy: str = "policy: {klass: {vpn_tunnel: enforce}}\n") -> Path:
    (tmp / "registry.yaml").write_text("registrations: []\n")
    cfg = tmp / "tunnelwatch.yaml"
    cfg.write_text(f"queue: {{num: {QUEUE}, packets: 16, maxlen: {maxlen}, "
                   f"fail_closed: {str(fail_closed).lower()}}}\n"
                   "firewall: {hooks: [forward], ipv6: false, backend: iptables}\n"
                   "registry: registry.yaml\n" + policy +
                   f"status: {{socket: {tmp / 'status.sock'}}}\n"
                   "discovery: {interfaces: [], device_id: tw-faults}\n"
                   "log: {level: info, journal: false}\n" + extra)
    return cfg


def _start_daemon(lb: Lab, cfg: Path, name: str = "daemon", env: dict[str, str] | None = None
                  ) -> subprocess.Popen[bytes]:
    p = lb.spawn(lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)], name, env=env)
    lb.wait_for_log(name, "ready: queue", timeout=30)
    return p


def _queue(lb: Lab) -> tuple[int, int]:
    """(packets sent to userspace so far, packets waiting for a verdict now) of our queues, summed: with
    queue.count auto there is one per CPU, and the client's address picks which one its packets use."""
    text = lb.run(lb.router, "cat", "/proc/net/netfilter/nfnetlink_queue").stdout
    rows = [f for f in (line.split() for line in text.splitlines()) if f and int(f[0]) >= QUEUE]
    if not rows:
        raise AssertionError(f"queue {QUEUE} not bound:\n{text}")
    return sum(int(f[7]) for f in rows), sum(int(f[2]) for f in rows)


def _wait(pred: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _healthy(lb: Lab, p: subprocess.Popen[bytes], name: str = "daemon") -> None:
    """The daemon still runs, logged no traceback and no classifier failure, and plain web works."""
    assert p.poll() is None, lb.log(name)[-3000:]
    log = lb.log(name)
    assert "Traceback" not in log, log[-3000:]
    assert "classifier" not in log or " failed on " not in log, log[-3000:]
    r = fetch(lb, f"http://{SERVER_IP}:{HTTP_PORT}/index.html")
    assert r.stdout.startswith("200 "), r.stderr


def _http_ok(lb: Lab) -> bool:
    r = lb.run(lb.client, "curl", "-sS", "--max-time", "3", "-o", "/dev/null", "-w", "%{http_code}",
               f"http://{SERVER_IP}:{HTTP_PORT}/index.html", check=False, timeout=10)
    return r.stdout == "200"


@pytest.mark.parametrize("fail_closed", [False, True], ids=["fail_open", "fail_closed"])
def test_queue_overflow_fails_open_unless_the_operator_chose_fail_closed(tmp_path: Path,
                                                                         fail_closed: bool) -> None:
    """A stalled daemon (SIGSTOP) with a full kernel queue: new connections still pass when fail-open."""
    require_tools(*TOOLS)
    with lab(tmp_path, ipv6=False) as lb:
        start_web(lb, tmp_path / "www")
        p = _start_daemon(lb, _config(tmp_path, maxlen=16, fail_closed=fail_closed))
        assert _http_ok(lb)
        os.killpg(p.pid, signal.SIGSTOP)  # the daemon's whole process group: the queue workers too
        try:
            # 24 new UDP flows: their first packets wait in the queue for a daemon that does not read
            lb.run(lb.client, sys.executable, "-c", UDP_SPRAY, SERVER_IP, "30000", "24")
            _wait(lambda: _queue(lb)[1] >= 16, "the kernel queue to fill up")
            assert _http_ok(lb) is (not fail_closed)
        finally:
            os.killpg(p.pid, signal.SIGCONT)
        # the daemon catches up with the held packets and carries on
        _wait(lambda: _queue(lb)[1] == 0, "the held packets to get their verdicts")
        _healthy(lb, p)


def test_a_flood_of_new_flows_keeps_the_table_bounded_and_says_so(tmp_path: Path) -> None:
    """5,000 new UDP flows (fresh source and destination ports) against a 1,000-flow table: the table stays
    at its bound, the evictions are counted and logged once, a download during the flood still works."""
    require_tools(*TOOLS)
    with lab(tmp_path, ipv6=False) as lb:
        start_web(lb, tmp_path / "www")
        p = _start_daemon(lb, _flood_config(tmp_path))
        sock = str(tmp_path / "status.sock")
        lb.spawn(lb.client, [sys.executable, "-c", UDP_SPRAY, SERVER_IP, "20000", "5000"], "spray")
        assert _http_ok(lb)  # while the flood runs
        lb.wait_for_log("spray", "sent 5000", timeout=60)
        _wait(lambda: _queue(lb)[1] == 0, "the queue to drain")

        def flows() -> dict[str, int]:
            f = fetch_snapshot(sock).get("flows")
            return f if isinstance(f, dict) else {}

        _wait(lambda: flows().get("created", 0) >= 2000 and flows().get("evicted", 0) > 0,
              "the status to count the flood", timeout=30)
        f = flows()
        print(f"flood: {f}")  # the figures for docs/faults.md (pytest -s)
        # queue.flows bounds all queue workers together; the flood's host fills its own worker's share
        assert f["max"] == 1000 and f["tracked"] <= 1000, f
        assert f["evicted"] >= f["created"] - 1000 - f["expired"], f
        assert lb.log("daemon").count("flow table full (") == 1  # the warning once, not per eviction
        _healthy(lb, p)


def _flood_config(tmp: Path) -> Path:
    cfg = _config(tmp)
    # the per-host new-connection limit off: this test is about the daemon's table bound, the limit has
    # its own test (test_evasion_kernel.py)
    cfg.write_text(cfg.read_text().replace("maxlen: 4096,", "maxlen: 4096, flows: 1000, new_flow_rate: 0,"))
    return cfg


# Packets built in the client namespace with scapy: mutated real handshakes to the ports our classifiers
# watch, plus odd headers the kernel still forwards. Bounded: a fixed list, sent once.
MALFORMED = r"""
import json, random, sys
from scapy.all import IP, TCP, UDP, GRE, Raw, send, conf
conf.verb = 0
dst, seed, spec = sys.argv[1], int(sys.argv[2]), json.load(open(sys.argv[3]))
rnd = random.Random(seed)
pkts = []
for proto, dport, hexpay in spec:
    pay = bytes.fromhex(hexpay)
    sport = rnd.randrange(20000, 60000)
    if proto == "udp":
        pkts.append(IP(dst=dst) / UDP(sport=sport, dport=dport) / Raw(pay))
    else:
        pkts.append(IP(dst=dst) / TCP(sport=sport, dport=dport, flags="PA", seq=rnd.randrange(1 << 32),
                                      ack=rnd.randrange(1 << 32)) / Raw(pay))
# odd headers: IP options, an unknown IP protocol, GRE with junk, zero-length UDP payloads
for i in range(20):
    sport = rnd.randrange(20000, 60000)
    pkts.append(IP(dst=dst, options=b"\x01" * 4) / UDP(sport=sport, dport=1194) / Raw(b"\x38" * (i + 1)))
    pkts.append(IP(dst=dst, proto=253) / Raw(bytes(rnd.randrange(256) for _ in range(i * 7))))
    pkts.append(IP(dst=dst) / GRE(proto=0x880B) / Raw(bytes(rnd.randrange(256) for _ in range(i))))
    pkts.append(IP(dst=dst) / UDP(sport=sport, dport=5060))
send(pkts, inter=0)
print("sent", len(pkts), flush=True)
"""


def _mutations(seed: int, count: int) -> list[tuple[str, int, str]]:
    """Truncated and bit-flipped payloads of the golden captures' packets, to their real ports."""
    from tunnelwatch.classify.packet import TCP, UDP, parse_ip
    from tunnelwatch.offline.pcapfile import PcapReader, ip_offset

    base: list[tuple[str, int, bytes]] = []
    for pcap in sorted((Path(__file__).parents[1] / "data" / "captures").glob("*.pcap")):
        with pcap.open("rb") as fh:
            for ts, linktype, frame in PcapReader(fh, pcap.name):
                off = ip_offset(linktype, frame)
                pkt = parse_ip(frame[off:], ts) if off >= 0 else None
                if pkt is not None and pkt.payload and pkt.proto in (TCP, UDP) and pkt.dport < 49152:
                    base.append(("udp" if pkt.proto == UDP else "tcp", pkt.dport, bytes(pkt.payload)))
    assert base, "no golden captures"
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        proto, port, pay = rnd.choice(base)
        b = bytearray(pay[: rnd.randrange(0, len(pay) + 1)])  # truncated anywhere, empty included
        for _ in range(rnd.randrange(0, 4)):
            if b:
                b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        out.append((proto, port, bytes(b[:1400]).hex()))
    return out


def test_malformed_and_truncated_packets_through_the_queue(tmp_path: Path) -> None:
    require_tools(*TOOLS)
    spec = tmp_path / "malformed.json"
    spec.write_text(json.dumps(_mutations(7, 400)))
    with lab(tmp_path, ipv6=False) as lb:
        start_web(lb, tmp_path / "www")
        p = _start_daemon(lb, _config(tmp_path))
        before = _queue(lb)[0]
        r = lb.run(lb.client, sys.executable, "-c", MALFORMED, SERVER_IP, "7", str(spec), timeout=120)
        assert r.stdout.startswith("sent ")
        _wait(lambda: _queue(lb)[1] == 0, "every queued packet to get its verdict")
        queued = _queue(lb)[0] - before
        assert queued >= 300, f"only {queued} hostile packets reached userspace"
        _healthy(lb, p)
        snap = fetch_snapshot(str(tmp_path / "status.sock"))
        assert snap["health"] == "ok", snap


def test_disk_full_under_the_spool_loses_no_event(tmp_path: Path) -> None:
    """The state directory on a tiny tmpfs that fills up: traffic flows, events are held, none lost."""
    require_tools(*TOOLS, "mount", "umount", "dd")
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tw-faults", str(state)], check=True,
                   timeout=10)
    try:
        # the uplink points at a closed port of the server namespace: every event stays in the spool
        cfg = _config(tmp_path, extra=f"report:\n  state_dir: {state}\n  heartbeat: 1\n"
                                      f"  uplink: {{url: 'https://{SERVER_IP}:9'}}\n")
        with lab(tmp_path, ipv6=False) as lb:
            start_web(lb, tmp_path / "www")
            p = _start_daemon(lb, cfg)
            sock = str(tmp_path / "status.sock")
            _wait(lambda: sum(e["kind"] == "heartbeat" for e in spool_events(state / "spool.db")) >= 2,
                  "two heartbeats in the spool")
            # fill the file system (dd stops with ENOSPC: expected)
            subprocess.run(["dd", "if=/dev/zero", f"of={state / 'filler'}", "bs=64k"], capture_output=True,
                           timeout=30)
            lb.wait_for_log("daemon", "spool write failed", timeout=20)
            _wait(lambda: fetch_snapshot(sock)["health"] == "degraded", "health degraded")
            assert _http_ok(lb)  # the customer does not notice
            (state / "filler").unlink()
            lb.wait_for_log("daemon", "spool writable again", timeout=20)
            held = int(re.search(r"spool writable again: (\d+) held", lb.log("daemon")).group(1))  # type: ignore[union-attr]
            assert held >= 1
            _wait(lambda: fetch_snapshot(sock)["health"] == "ok", "health ok again")
            _healthy(lb, p)
            lb.stop("daemon", timeout=20)  # SIGTERM may spend STOP_WAIT trying the (absent) collector
            assert p.returncode == 0, lb.log("daemon")[-2000:]
        evs = spool_events(state / "spool.db")
        kinds = [e["kind"] for e in evs]
        assert kinds[0] == "daemon_started" and kinds[-1] == "daemon_stopped", kinds
        beats = [int(e["seq"]) for e in evs if e["kind"] == "heartbeat"]
        assert len(beats) >= 4 and beats == list(range(beats[0], beats[0] + len(beats))), beats  # no gap
        sp = Spool(str(state / "spool.db"), check=False)
        try:
            assert sp.dropped() == 0
        finally:
            sp.close()
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False, timeout=10)


def test_wall_clock_jumps_move_the_grace_deadline_but_break_nothing(tmp_path: Path) -> None:
    """libfaketime steps the running daemon's clock forward by three days, as NTP does on a box without a
    real-time clock: the grace period ends on time (a new tunnel is blocked), the daemon keeps working.

    libfaketime 0.9.10 moves the monotonic clock with the wall clock (faking the wall clock alone breaks
    time.sleep with EINVAL), so this is the harsher case: every timer fires at once. Backward steps are not
    injected here: they would move the monotonic clock backward, which no real clock does."""
    require_tools(*TOOLS, "openvpn", str(FAKETIME_LIB))
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = {"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_NO_CACHE": "1"}
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date().isoformat()
    policy = ("policy:\n  klass: {vpn_tunnel: enforce}\n"
              f"  protocol: {{openvpn: {{mode: grace, until: {tomorrow}}}}}\n")
    sock = str(tmp_path / "status.sock")
    with lab(tmp_path, ipv6=False) as lb:
        start_web(lb, tmp_path / "www")
        p = _start_daemon(lb, _config(tmp_path, policy=policy), env=env)
        pair = openvpn_pair(tmp_path / "ovpn")

        def phase(shift: str, expect: str, n: int) -> None:
            offset.write_text(shift + "\n")
            want = {"+0": 0.0, "+3d": 3 * 86400.0}[shift]
            _wait(lambda: abs(float(fetch_snapshot(sock)["now"]) - time.time() - want) < 3600,
                  f"the daemon's clock at {shift}")
            pat = f"decided vpn_tunnel openvpn confirmed {expect}"
            before = lb.log("daemon").count(pat)
            start_openvpn(lb, pair, f"ovpn{n}")
            _wait(lambda: lb.log("daemon").count(pat) > before,
                  f"a new openvpn flow decided '{expect}' after the clock moved {shift}", timeout=30)
            if expect == "block":
                assert not tunnel_ping(lb, count=1)
            lb.stop(f"ovpn{n}-client")
            lb.stop(f"ovpn{n}-server")

        phase("+0", "report", 0)  # within the grace period: reported, not blocked
        phase("+3d", "block", 1)  # the clock jumps past the grace date: a new tunnel is blocked
        up = float(fetch_snapshot(sock)["uptime_s"])
        _wait(lambda: float(fetch_snapshot(sock)["uptime_s"]) > up, "the status clock to keep moving")
        _healthy(lb, p)
