"""Cost of the inline daemon on forwarded traffic: the lab's router without and with `tunnelwatch run`.

Builds the client / router / server namespace lab (tunnelwatch.lab.netlab) and measures, through the router,
first with no daemon and then with the daemon enforcing (vpn_tunnel: enforce, first N packets of each
connection queued): iperf3 TCP throughput client -> server, new TCP connections per second (sequential
connect, one 4-byte request echoed, close), the connect() time of a new flow (SYN -> SYN-ACK; SYN and
RST skip the queue) and the round trip of its first request and reply (both queued: the difference with
and without the daemon is twice the latency the daemon adds to a new flow's first payload packet),
p50/p99. A benchmark, not a test: it prints figures and never
fails on them. Every loop is bounded in count and time; all traffic stays inside the lab's namespaces.
Needs root (prints why and exits 0 otherwise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tunnelwatch.lab.netlab import SERVER_IP, Lab, can_run_lab, lab, missing_packages

TOOLS = ("ip", "ss", "sysctl", "iptables", "ip6tables", "iptables-save", "iptables-restore", "iperf3")
IPERF_PORT = 5201
ACCEPT_PORT = 9009

# Accepts, echoes the first request, closes: the cheapest peer that still makes the first payload
# packets of each connection cross the daemon both ways, so the figures are the network path's.
ACCEPT_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4096)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(2.0)
    try:
        data = c.recv(64)
        if data:
            c.sendall(data)
    except OSError:
        pass
    c.close()
"""

# Sequential connects, each timed from connect() to its return (the SYN-ACK arrived) and then from the
# first request to its echo, bounded in count
# and in time; prints one JSON object.
CONNECT_CLIENT = """
import json, socket, sys, time
host, port, n, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
times, rtts, failed = [], [], 0
start = time.perf_counter(); deadline = start + limit
while len(times) + failed < n and time.perf_counter() < deadline:
    s = socket.socket(); s.settimeout(2.0)
    t0 = time.perf_counter()
    try:
        s.connect((host, port)); t1 = time.perf_counter()
        s.sendall(b"ping"); reply = s.recv(64); t2 = time.perf_counter()
        if reply != b"ping":
            raise OSError("no echo")
        times.append(t1 - t0); rtts.append(t2 - t1)
    except OSError:
        failed += 1
    finally:
        s.close()
print(json.dumps({"ok": len(times), "failed": failed, "elapsed": time.perf_counter() - start,
                  "connect_us": [t * 1e6 for t in times], "rtt_us": [t * 1e6 for t in rtts]}))
"""


@dataclass
class Figures:
    """One pass through the router: throughput, connection rate and connect() latency."""

    gbps: float = 0.0
    conn_per_s: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    rtt50_us: float = 0.0
    rtt99_us: float = 0.0
    failed: int = 0
    notes: list[str] = field(default_factory=list)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def measure(lb: Lab, seconds: int, conns: int) -> Figures:
    """iperf3 for `seconds`, then `conns` sequential connections (at most 60 s)."""
    f = Figures()
    r = lb.run(lb.client, "iperf3", "-c", SERVER_IP, "-p", str(IPERF_PORT), "-t", str(seconds), "-J",
               check=False, timeout=seconds + 30)
    try:
        data = json.loads(r.stdout)
        f.gbps = data["end"]["sum_received"]["bits_per_second"] / 1e9
    except (ValueError, KeyError, TypeError):
        f.notes.append(f"iperf3 failed: {r.stdout[-300:]} {r.stderr[-300:]}")
    r = lb.run(lb.client, sys.executable, "-c", CONNECT_CLIENT, SERVER_IP, str(ACCEPT_PORT), str(conns), "60",
               check=False, timeout=90)
    try:
        c = json.loads(r.stdout)
    except ValueError:
        f.notes.append(f"connect loop failed: {r.stderr[-300:]}")
        return f
    f.conn_per_s = c["ok"] / c["elapsed"] if c["elapsed"] > 0 else 0.0
    f.p50_us, f.p99_us = _pct(c["connect_us"], 0.50), _pct(c["connect_us"], 0.99)
    f.rtt50_us, f.rtt99_us = _pct(c["rtt_us"], 0.50), _pct(c["rtt_us"], 0.99)
    f.failed = c["failed"]
    return f


def _daemon_config(work: Path, packets: int) -> Path:
    (work / "registry.yaml").write_text("registrations: []\n")
    cfg = work / "tunnelwatch.yaml"
    cfg.write_text(f"queue: {{num: 0, packets: {packets}}}\nfirewall: {{hooks: [forward], ipv6: true}}\n"
                   "registry: registry.yaml\npolicy:\n  klass: {vpn_tunnel: enforce}\nlog: {level: info}\n"
                   f"status: {{socket: {work / 'status.sock'}}}\n")
    return cfg


def _median(rounds: list[Figures], attr: str) -> float:
    return float(statistics.median(getattr(x, attr) for x in rounds))


def table(without: list[Figures], with_: list[Figures], packets: int) -> str:
    """The one table: metric, without daemon, with daemon, ratio (and the added latency)."""
    rows = [("iperf3 TCP throughput client->server (Gbit/s)", "gbps", 2),
            ("new TCP connections per second", "conn_per_s", 0),
            ("new flow connect() p50 (us)", "p50_us", 0),
            ("new flow connect() p99 (us)", "p99_us", 0),
            ("first request->reply p50 (us, 2 queued pkts)", "rtt50_us", 0),
            ("first request->reply p99 (us, 2 queued pkts)", "rtt99_us", 0)]
    out = [f"{'metric':<48} {'without daemon':>15} {'with daemon':>12} {'ratio':>7}  added",
           "-" * 96]
    for label, attr, digits in rows:
        a, b = _median(without, attr), _median(with_, attr)
        ratio = b / a if a else float("nan")
        added = f"+{b - a:.0f} us" if attr.endswith("_us") else ""
        out.append(f"{label:<48} {a:>15.{digits}f} {b:>12.{digits}f} {ratio:>7.2f}  {added}")
    out.append(f"(daemon: enforce, first {packets} packets of each connection queued; median of "
               f"{len(without)} round(s); figures on a shared machine are noisy)")
    return "\n".join(out)


def _say(msg: str) -> None:
    print(f"net bench: {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Build the lab, measure without and with the daemon, print the table."""
    with tempfile.TemporaryDirectory(prefix="tunnelwatch-bench-") as tmp, lab(Path(tmp), ipv6=False) as lb:
        work = Path(tmp)
        _say(f"lab {lb.prefix}-{{c,r,s}}")
        lb.spawn(lb.server, ["iperf3", "-s", "-B", SERVER_IP, "-p", str(IPERF_PORT)], "iperf3")
        lb.spawn(lb.server, [sys.executable, "-c", ACCEPT_SERVER, SERVER_IP, str(ACCEPT_PORT)], "accept")
        lb.wait_for_log("accept", "listening")
        lb.wait_until(lb.server, ["sh", "-c", f"ss -ltn | grep -q ':{IPERF_PORT} '"])
        cfg = _daemon_config(work, args.packets)
        without: list[Figures] = []
        with_: list[Figures] = []
        for rnd in range(args.rounds):
            _say(f"round {rnd + 1}/{args.rounds}: without the daemon ...")
            without.append(measure(lb, args.seconds, args.conns))
            _say(f"round {rnd + 1}/{args.rounds}: with the daemon (enforce) ...")
            name = f"daemon{rnd}"
            lb.spawn(lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)], name)
            lb.wait_for_log(name, "ready:", timeout=30)
            with_.append(measure(lb, args.seconds, args.conns))
            lb.stop(name)
            lb.wait_for_log(name, "rules removed", timeout=10)
            stats = [ln.split("INFO: ", 1)[-1] for ln in lb.log(name).splitlines() if "packets seen" in ln]
            _say(" ".join(stats))
        for label, figs in (("without", without), ("with", with_)):
            for f in figs:
                for note in f.notes:
                    _say(f"{label} daemon: {note}")
                if f.failed:
                    _say(f"{label} daemon: {f.failed} connects failed")
        print(table(without, with_, args.packets))
    return 0


def main() -> int:
    """Parse arguments, check root and tools, run."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--seconds", type=int, default=5, help="iperf3 duration per pass (default 5)")
    p.add_argument("--conns", type=int, default=2000, help="sequential connections per pass (default 2000)")
    p.add_argument("--packets", type=int, default=16, help="packets per connection queued (default 16)")
    p.add_argument("--rounds", type=int, default=1, help="without/with passes; medians are shown")
    args = p.parse_args()
    if not (1 <= args.seconds <= 60 and 1 <= args.conns <= 20000 and 1 <= args.rounds <= 5):
        p.error("bounds: --seconds 1..60, --conns 1..20000, --rounds 1..5")
    reason = can_run_lab()
    if reason:
        print(f"net bench: skipped: {reason} (run it as root)")
        return 0
    pkgs = missing_packages(*TOOLS)
    if pkgs:
        names = " ".join(pkgs)
        print(f"net bench: skipped: missing Debian packages: {names} (apt-get install {names})")
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
