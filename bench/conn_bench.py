"""Per-flow cost of the inline daemon (issue 13): new connections/s through the lab's router namespace
without and with `tunnelwatch run`, driven by a C load generator (bench/loadgen.c, compiled here with gcc).

Cases (client namespace -> router namespace -> server namespace, each connection a new 5-tuple):
- http:    TCP, one HTTP/1.0 GET and a 2-byte body; benign HTTP, confirmed on request and response;
- unknown: TCP, 16 random bytes and their echo: no classifier decides it, both directions' first payload
           packets are queued and the flow stays undecided in the daemon's table (the expensive case);
- udp:     one 16-byte random datagram and its echo (both queued), a new socket (source port) each.
Load points per case: fixed offered loads (open loop, default 2,000/s and 10,000/s) and saturation (as fast
as CONCURRENCY connections in flight allow). Per point: achieved conn/s, failures, request->reply p50/p99,
and with the daemon its CPU (utime+stime of its processes from /proc/PID/stat) per new flow, the packets it
was handed (the queue's id sequence) per flow, and the kernel's fail-open counters (tw:bypassed_packets /
tw:bypassed_flows, tw:flood_dropped) and nfqueue drops over the point. Then memory: the daemon's RSS growth
over N undecided flows (after a warm-up), and optionally a py-spy profile under the unknown load.
With --floor, the same points again with a consumer that accepts every packet at once under the daemon's
own rules (bench/nfq_floor.py: `c` is bench/nfq_floor.c, `python` the daemon's Queue class with an empty
handler): the part of the daemon's figures that the NFQUEUE round trip costs before any classification.

Every load is bounded in count and time and stops by itself; traffic stays inside the lab's namespaces,
which are removed on exit with their processes and rules, on failure too. Root only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import conn_rows

from tunnelwatch.lab.netlab import SERVER_IP, Lab, can_run_lab, lab, missing_packages

HERE = Path(__file__).resolve().parent
TOOLS = ("ip", "sysctl", "iptables", "iptables-save", "gcc")
SRC_BASE = "198.51.100.10"  # client source addresses SRC_BASE .. +NSRC-1 (inside the client namespace)
NSRC = 64
PROFILE_HZ = 500
PORTS = {"http": 80, "unknown": 40000, "udp": 40001}
# (client transport, client payload, server transport, server reply, packets queued on the request->reply
# path)
CASES: dict[str, tuple[str, str, str, str, int]] = {
    # benign HTTP is confirmed only with the response (both queued); the flow is ALLOW after that
    "http": ("tcp", "http", "tcp", "http", 2),
    "unknown": ("tcp", "random", "tcp", "echo", 2),
    "udp": ("udp", "random", "udp", "echo", 2),
}
# The lab's conntrack: short timeouts for closed flows, so a run of a few hundred thousand connections
# never fills the (host-wide) conntrack table; the daemon's behaviour does not depend on them.
ROUTER_SYSCTLS = ("net.netfilter.nf_conntrack_tcp_timeout_time_wait=2",
                  "net.netfilter.nf_conntrack_tcp_timeout_close=2",
                  "net.netfilter.nf_conntrack_tcp_timeout_last_ack=2",
                  "net.netfilter.nf_conntrack_tcp_timeout_fin_wait=2",
                  "net.netfilter.nf_conntrack_tcp_timeout_close_wait=2",
                  "net.netfilter.nf_conntrack_udp_timeout=3",
                  "net.netfilter.nf_conntrack_udp_timeout_stream=3")


def say(msg: str) -> None:
    """A progress line on stderr."""
    print(f"conn bench: {msg}", file=sys.stderr, flush=True)


FLOORS = ("c", "python")


def build_floor(out_dir: Path) -> Path:
    """Compile bench/nfq_floor.c (links libnetfilter_queue) into out_dir; the binary's path."""
    exe = out_dir / "nfq_floor"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(HERE / "nfq_floor.c"), "-lnetfilter_queue"],
                   check=True, capture_output=True, text=True, timeout=120)
    return exe


def build_loadgen(out_dir: Path) -> Path:
    """Compile bench/loadgen.c with gcc -O2 into out_dir; the binary's path."""
    exe = out_dir / "loadgen"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(HERE / "loadgen.c")], check=True,
                   capture_output=True, text=True, timeout=120)
    return exe


@dataclass
class Point:
    """One load point of one case, without or with the daemon."""

    case: str
    load: str  # "2000/s", "sat"
    daemon: bool
    mode: str = "none"  # "none", "daemon", or a floor: "floor-c", "floor-python"
    res: dict[str, Any] = field(default_factory=dict)  # the load generator's JSON
    cpu_s: float = 0.0
    user_s: float = 0.0
    queued: int = 0
    bypassed_packets: int = 0
    bypassed_flows: int = 0
    flood_dropped: int = 0
    nfq_dropped: int = 0
    ct_drops: int = 0
    machine_busy: float = 0.0  # share of all CPUs busy during the point (0..1)

    @property
    def ok(self) -> int:
        return int(self.res.get("ok", 0))

    @property
    def rate(self) -> float:
        return float(self.res.get("rate", 0.0))


def _proc_tree(root: int) -> list[int]:
    """root and its descendants (the daemon's worker processes, if any)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def cpu_seconds(root: int) -> tuple[float, float]:
    """(utime, stime) summed over a process and its descendants, in seconds."""
    tck = os.sysconf("SC_CLK_TCK")
    u = s = 0.0
    for pid in _proc_tree(root):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        u += int(f[11]) / tck
        s += int(f[12]) / tck
    return u, s


def rss_bytes(root: int) -> int:
    """VmRSS summed over a process and its descendants."""
    total = 0
    for pid in _proc_tree(root):
        try:
            with open(f"/proc/{pid}/status") as fh:
                for ln in fh:
                    if ln.startswith("VmRSS:"):
                        total += int(ln.split()[1]) * 1024
        except OSError:
            pass
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat (busy = everything but idle and iowait)."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    return float(sum(f) - f[3] - f[4]), float(sum(f))


def kernel_counts(lb: Lab) -> dict[str, int]:
    """The router's fail-open and flood counters (our rules), nfqueue's packet sequence and drops, and
    conntrack's drop counters: cumulative, read with iptables-save -c / procfs inside the namespace."""
    from tunnelwatch.inline.firewall import parse_counters

    out = {"bypassed_packets": 0, "bypassed_flows": 0, "flood_dropped": 0}
    for table in ("mangle", "filter"):
        r = lb.run(lb.router, "iptables-save", "-c", "-t", table, check=False)
        for k, n in parse_counters(r.stdout).items():
            out[k] = out.get(k, 0) + n
    # /proc/net/netfilter/nfnetlink_queue: queue, portid, waiting, mode, range, queue_dropped, user_dropped,
    # id_sequence, 1
    r = lb.run(lb.router, "cat", "/proc/net/netfilter/nfnetlink_queue", check=False)
    out["queued"] = out["nfq_dropped"] = 0
    for ln in r.stdout.splitlines():
        f = ln.split()
        if len(f) >= 8:
            out["nfq_dropped"] += int(f[5]) + int(f[6])
            out["queued"] += int(f[7])
    r = lb.run(lb.router, "conntrack", "-S", check=False) if shutil.which("conntrack") else None
    out["ct_drops"] = 0
    if r is not None:
        for ln in r.stdout.splitlines():
            for tok in ln.split():
                k, _, v = tok.partition("=")
                if k in ("drop", "early_drop", "insert_failed") and v.isdigit():
                    out["ct_drops"] += int(v)
    return out


class Bench:
    """The lab with its servers, the load generator, and (optionally) the daemon."""

    def __init__(self, lb: Lab, work: Path, exe: Path, a: argparse.Namespace) -> None:
        self.lb, self.work, self.exe, self.a = lb, work, exe, a
        self.daemon_pid: int | None = None  # the daemon's, or a floor consumer's
        self.mode = "none"
        self.floor_exe: Path | None = None
        # first source index of the next load: every connection of the run gets a 5-tuple of its own, since
        # the daemon keeps a closed connection's flow (and decision) for its 5-tuple until it idles out
        self.next_k = 0

    def setup(self) -> None:
        lb = self.lb
        for i in range(NSRC):
            last = int(SRC_BASE.rsplit(".", 1)[1]) + i
            lb.run(lb.client, "ip", "addr", "add", f"198.51.100.{last}/24", "dev", "eth0")
        lb.run(lb.server, "sysctl", "-qw", "net.core.somaxconn=65535", "net.ipv4.tcp_max_syn_backlog=65535")
        r = lb.run(lb.router, "sysctl", "-qw", *ROUTER_SYSCTLS, check=False)
        if r.returncode:
            say(f"router conntrack timeouts not set ({r.stderr.strip()[:200]}); long runs may fill conntrack")
        for case, (_, _, stype, reply, _) in CASES.items():
            lb.spawn(lb.server, [str(self.exe), "server", stype, SERVER_IP, str(PORTS[case]), reply],
                     f"server-{case}")
            lb.wait_for_log(f"server-{case}", "listening")

    def config(self) -> Path:
        (self.work / "registry.yaml").write_text("registrations: []\n")
        cfg = self.work / "tunnelwatch.yaml"
        # new_flow_rate 0: the per-host flood limit would otherwise cap our one client host at 500/s
        cfg.write_text(f"queue: {{num: 0, count: {self.a.queues}, packets: 16, new_flow_rate: 0}}\n"
                       "firewall: {hooks: [forward], ipv6: false}\n"
                       "registry: registry.yaml\npolicy:\n  klass: {vpn_tunnel: enforce}\n"
                       "log: {level: info}\n"
                       f"status: {{socket: {self.work / 'status.sock'}}}\n")
        return cfg

    def start_daemon(self, name: str) -> int:
        p = self.lb.spawn(self.lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config",
                                           str(self.config())], name)
        self.lb.wait_for_log(name, "ready:", timeout=60)
        self.daemon_pid = p.pid
        return p.pid

    def start_floor(self, kind: str, name: str) -> int:
        """The daemon's rules with a consumer that accepts every packet at once (nfq_floor.py)."""
        cmd = [sys.executable, str(HERE / "nfq_floor.py"), "--config", str(self.config()), kind]
        if kind == "c":
            if self.floor_exe is None:
                self.floor_exe = build_floor(self.work)
            cmd += ["--exe", str(self.floor_exe)]
        p = self.lb.spawn(self.lb.router, cmd, name)
        self.lb.wait_for_log(name, "ready:", timeout=60)
        self.daemon_pid = p.pid
        return p.pid

    def stop_daemon(self, name: str) -> None:
        self.lb.stop(name)
        self.daemon_pid = None
        try:
            self.lb.wait_for_log(name, "rules removed", timeout=10)
        except AssertionError:
            say(f"{name}: no 'rules removed' line; the lab's teardown removes the namespace anyway")

    def status(self) -> dict[str, Any]:
        """The daemon's status snapshot (tunnelwatch status --json), {} when it cannot be read."""
        r = self.lb.run(self.lb.router, sys.executable, "-m", "tunnelwatch", "status", "--json", "--socket",
                        str(self.work / "status.sock"), check=False, timeout=20)
        try:
            return dict(json.loads(r.stdout))
        except ValueError:
            return {}

    def load(self, case: str, rate: float, count: int, seconds: float, conc: int) -> dict[str, Any]:
        ctype, payload, _, _, _ = CASES[case]
        args = [str(self.exe), "client", ctype, SERVER_IP, str(PORTS[case]), payload, str(count),
                str(seconds), str(rate), str(conc), SRC_BASE, str(NSRC), str(self.next_k)]
        self.next_k = (self.next_k + count + 64) % (NSRC * 50_000)
        r = self.lb.run(self.lb.client, *args, check=False, timeout=seconds + 30)
        try:
            res = dict(json.loads(r.stdout))
            self.next_k = int(res.get("next_k", self.next_k)) % (NSRC * 50_000)
            return res
        except ValueError:
            say(f"loadgen failed: {r.stdout[-200:]} {r.stderr[-300:]}")
            return {}

    def point(self, case: str, load: str) -> Point:
        a = self.a
        if load == "sat":
            rate, count, conc = 0.0, a.max_count, a.concurrency
        else:
            rate = float(load.split("/")[0])
            count, conc = min(a.max_count, int(rate * a.seconds)), a.rate_concurrency
        pt = Point(case, load, self.mode == "daemon", self.mode)
        k0 = kernel_counts(self.lb)
        c0 = cpu_seconds(self.daemon_pid) if self.daemon_pid else (0.0, 0.0)
        m0 = machine_busy()
        pt.res = self.load(case, rate, count, a.seconds, conc)
        m1 = machine_busy()
        c1 = cpu_seconds(self.daemon_pid) if self.daemon_pid else (0.0, 0.0)
        pt.machine_busy = (m1[0] - m0[0]) / max(1.0, m1[1] - m0[1])
        time.sleep(0.3)  # the last verdicts' packets reach the filter chain's counters
        k1 = kernel_counts(self.lb)
        pt.user_s = c1[0] - c0[0]
        pt.cpu_s = pt.user_s + c1[1] - c0[1]
        for k in ("queued", "bypassed_packets", "bypassed_flows", "flood_dropped", "nfq_dropped", "ct_drops"):
            setattr(pt, k, k1.get(k, 0) - k0.get(k, 0))
        r = pt.res
        say(f"{case:8s} {load:8s} {pt.mode if self.daemon_pid else 'no daemon'}: {pt.rate:,.0f} conn/s "
            f"(ok {r.get('ok')}, failed {r.get('failed')}, timeouts {r.get('timeouts')}), "
            f"rtt p50 {r.get('rtt_p50_us')} p99 {r.get('rtt_p99_us')} us, CPUs {pt.machine_busy:.0%} busy"
            + (f", cpu {pt.cpu_s:.2f} s, {pt.queued} pkts queued, bypassed {pt.bypassed_flows} flows"
               if self.daemon_pid else ""))
        return pt

    def memory(self, flows: int) -> dict[str, Any]:
        """The daemon's RSS growth over `flows` new undecided TCP flows (after a 2,000-flow warm-up)."""
        assert self.daemon_pid is not None
        self.load("unknown", 2000.0, 2000, 5.0, 256)
        time.sleep(1.5)  # the status's flow figures are refreshed once a second
        st0, rss0 = self.status(), rss_bytes(self.daemon_pid)
        rate = min(5000.0, flows / 2.0)
        res = self.load("unknown", rate, flows, flows / rate + 10, 1024)
        time.sleep(1.5)
        st1, rss1 = self.status(), rss_bytes(self.daemon_pid)

        def tracked(st: dict[str, Any]) -> int | None:
            f = st.get("flows")
            return int(f["tracked"]) if isinstance(f, dict) and "tracked" in f else None

        t0, t1 = tracked(st0), tracked(st1)
        grown = (t1 - t0) if t0 is not None and t1 is not None else int(res.get("ok", 0))
        return {"flows_ok": res.get("ok", 0), "tracked_before": t0, "tracked_after": t1, "rss_before": rss0,
                "rss_after": rss1, "bytes_per_flow": (rss1 - rss0) / grown if grown > 0 else None}

    def profile(self, out: Path, seconds: float) -> tuple[Path, int] | None:
        """py-spy (whole process, --native, idle samples kept) over the unknown case at saturation."""
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(pyspy).exists():
            say("profile skipped: py-spy not installed (pip install py-spy, or the bench extra)")
            return None
        assert self.daemon_pid is not None
        raw = out / "profile.txt"
        cmd = [pyspy, "record", "--pid", str(self.daemon_pid), "--rate", str(PROFILE_HZ),
               "--duration", str(int(seconds)), "--format", "raw", "--idle", "--threads", "--nonblocking",
               "--output", str(raw)]
        if self.a.queues != "1":  # the packet path runs in the worker processes
            cmd.append("--subprocesses")
        if self.a.native:  # py-spy must pause the process to unwind C frames: no --nonblocking then
            cmd.remove("--nonblocking")
            cmd.insert(2, "--native")
        res: dict[str, Any] = {}
        prof = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            time.sleep(1.0)  # py-spy attached
            res = self.load("unknown", 0.0, self.a.max_count, seconds - 2, self.a.concurrency)
            prof.wait(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            prof.kill()
            prof.wait()
        finally:
            if prof.poll() is None:
                prof.kill()
                prof.wait()
        if not raw.exists():
            say(f"py-spy wrote nothing: {(prof.stdout.read() if prof.stdout else '')[-500:]}")
            return None
        return raw, int(res.get("ok", 0))


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Build the lab, run every case and load point without and then with the daemon; the figures."""
    loads = [f"{int(r)}/s" for r in a.rates] + ["sat"]
    result: dict[str, Any] = {"points": [], "memory": None, "profile": None, "loads": loads,
                              "seconds": a.seconds, "concurrency": a.concurrency}
    with tempfile.TemporaryDirectory(prefix="tunnelwatch-connbench-") as tmp, \
            lab(Path(tmp), ipv6=False) as lb:
        work = Path(tmp)
        exe = build_loadgen(work)
        b = Bench(lb, work, exe, a)
        b.setup()
        for rnd in range(a.rounds):
            for mode in ("none", "daemon", *(f"floor-{k}" for k in a.floor)):
                with_daemon = mode == "daemon"
                name = f"{mode}{rnd}"
                b.mode = mode
                if with_daemon:
                    say(f"round {rnd + 1}/{a.rounds}: starting the daemon (enforce, {a.queues} queue(s)) ...")
                    b.start_daemon(name)
                elif mode != "none":
                    say(f"round {rnd + 1}/{a.rounds}: starting the {mode} consumer ({a.queues} queue(s)) ...")
                    b.start_floor(mode.removeprefix("floor-"), name)
                try:
                    for case in a.cases:
                        for load in loads:
                            pt = b.point(case, load)
                            result["points"].append({**pt.__dict__, "round": rnd})
                    if with_daemon and rnd == a.rounds - 1:
                        b.stop_daemon(name)  # a fresh daemon for the memory figure
                        b.start_daemon(name + "m")
                        name += "m"
                        if a.mem_flows:
                            say(f"memory: RSS over {a.mem_flows:,} undecided flows ...")
                            result["memory"] = b.memory(a.mem_flows)
                            say(f"memory: {result['memory']}")
                        result["status"] = b.status()
                        if a.profile_seconds:
                            say(f"profile: py-spy {a.profile_seconds} s, unknown case at saturation ...")
                            got = b.profile(work, a.profile_seconds)
                            if got is not None:
                                import profile_summary

                                raw, nflows = got
                                result["profile"] = profile_summary.summarise(raw.read_text(), 15, PROFILE_HZ,
                                                                              nflows)
                                if a.profile_out:
                                    shutil.copy(raw, a.profile_out)
                finally:
                    if mode != "none":
                        b.stop_daemon(name)
                        log = lb.log(name)
                        for ln in log.splitlines():
                            if any(w in ln for w in ("packets seen", "packets handled", "Traceback",
                                                     "ERROR")):
                                say(ln.split("INFO: ", 1)[-1][:300])
    return result


def table_rows(result: dict[str, Any]) -> list[conn_rows.Row]:
    """The table's rows for a run's result (conn_rows.py)."""
    return conn_rows.table_rows(result, {case: spec[4] for case, spec in CASES.items()})


def main() -> int:
    """Parse arguments, check root and tools, run, print JSON (the table is run_all.py's)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    add_arguments(p)
    a = p.parse_args()
    err = check_bounds(a)
    if err:
        p.error(err)
    reason = can_run_lab() or " ".join(missing_packages(*TOOLS))
    if reason:
        print(f"conn bench: skipped: {reason}")
        return 0
    result = run(a)
    json.dump(result, sys.stdout, indent=1, default=str)
    print()
    for r in table_rows(result):
        print(r)
    return 0


def _queues(text: str) -> str:
    if text != "auto" and not (text.isdigit() and 1 <= int(text) <= 64):
        raise argparse.ArgumentTypeError("auto or 1-64")
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options (run_all.py passes them through --conn-args)."""
    p.add_argument("--cases", type=lambda s: s.split(","), default=list(CASES),
                   help="comma-separated: http,unknown,udp")
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[2000.0, 10000.0],
                   help="fixed offered loads, conn/s (default 2000,10000)")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per load point (default 4)")
    p.add_argument("--max-count", type=int, default=200_000, help="connections per point at most")
    p.add_argument("--concurrency", type=int, default=64, help="in flight at saturation (default 64)")
    p.add_argument("--rate-concurrency", type=int, default=4096,
                   help="in flight at most at a fixed offered load (default 4096: open loop unless the "
                        "router stalls for longer than that many connections)")
    p.add_argument("--rounds", type=int, default=1, help="without/with rounds (default 1)")
    p.add_argument("--queues", type=_queues, default="auto",
                   help="queue.count of the daemon: auto (the product's default, one per CPU) or 1-64")
    p.add_argument("--mem-flows", type=int, default=20_000, help="undecided flows for RSS (0: skip)")
    p.add_argument("--profile-seconds", type=float, default=10.0, help="py-spy seconds (0: skip)")
    p.add_argument("--profile-out", default="", help="keep py-spy's raw output here")
    p.add_argument("--floor", type=lambda s: [k for k in s.split(",") if k], default=["c"],
                   help="floor consumers to measure too, comma-separated: c,python (default c; '' for none)")
    p.add_argument("--native", action="store_true",
                   help="py-spy --native (C frames too; pauses the daemon for each sample)")


def check_bounds(a: argparse.Namespace) -> str:
    """An error message when a bound is exceeded, else ''."""
    if not (1 <= a.seconds <= 60 and 1 <= a.max_count <= 1_000_000 and 1 <= a.concurrency <= 4096
            and 1 <= a.rate_concurrency <= 16384
            and 1 <= a.rounds <= 5 and (a.queues == "auto" or 1 <= int(a.queues) <= 8)
            and 0 <= a.mem_flows <= 60_000
            and 0 <= a.profile_seconds <= 120 and all(0 < r <= 100_000 for r in a.rates)
            and all(c in CASES for c in a.cases) and all(k in FLOORS for k in a.floor)):
        return ("bounds: seconds 1..60, max-count 1..1M, concurrency 1..4096, rate-concurrency 1..16384, "
                "rounds 1..5, queues 1..8, "
                "mem-flows 0..60000, profile-seconds 0..120, rates 1..100000, cases http,unknown,udp, "
                "floor c,python")
    return ""


if __name__ == "__main__":
    sys.exit(main())
