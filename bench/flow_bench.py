"""The daemon's userspace per-packet path without the kernel: synthetic packets through the real Enforcer.

Two measurements, each in a fresh process so RSS figures are its own:
- `scale`: fill the flow table with N concurrent flows (each sees one first payload packet, as the first
  queued packet of a new TCP connection would), report RSS growth per flow and the CPU time per new flow
  as the table grows (per decade of table size), then the cost of one more packet on existing flows;
- `mix`: a bounded stream of new connections shaped like the router bench's (request + echo, both queued),
  reporting microseconds per queued packet (the figure to profile and optimise).
Prints one JSON object on stdout. Every loop is bounded in count; nothing touches the network.
"""

from __future__ import annotations

import argparse
import gc
import json
import struct
import sys
import time
import types
from typing import Any

from tunnelwatch.config.runconfig import parse_config
from tunnelwatch.inline.enforcer import Enforcer
from tunnelwatch.policy.registry import Registry

CONFIG = "queue: {num: 0, packets: 16}\npolicy:\n  klass: {vpn_tunnel: enforce}\nlog: {level: info}\n"


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_packet(src: bytes, sport: int, dst: bytes, dport: int, payload: bytes, flags: int = 0x18) -> bytes:
    """An IPv4/TCP packet with a valid IP checksum (the TCP checksum is not read by anyone here)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 65535, 0, 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + tcp


def udp_packet(src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> bytes:
    """An IPv4/UDP datagram with a valid IP checksum (no UDP checksum: 0 means none)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, src, dst)
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + udp


def client_addr(i: int) -> tuple[bytes, int]:
    """A distinct (address, port) for flow i: 10.x.y.z, ports 1024..65023."""
    host = 1 + i // 64000
    return struct.pack("!BBBB", 10, (host >> 16) & 0xFF, (host >> 8) & 0xFF, host & 0xFF), 1024 + i % 64000


SERVER = bytes([192, 0, 2, 1])


def set_gc(mode: str) -> None:
    """'daemon': the collector settings the daemon's packet path runs with (nfqueue.relax_gc); 'default':
    the interpreter's own."""
    if mode != "daemon":
        return
    try:
        import netfilterqueue  # noqa: F401
    except ImportError:
        # Without the kernel queue binding (an arm64 root built from Debian 12, which does not package it)
        # nfqueue.py still has to import for its relax_gc, which calls only the gc module: an empty
        # placeholder stands in for the binding; nothing here ever opens a queue.
        sys.modules["netfilterqueue"] = _placeholder_binding()
        print("flow_bench: netfilterqueue not installed: placeholder module, GC settings still the daemon's",
              file=sys.stderr)
    from tunnelwatch.inline.nfqueue import relax_gc

    relax_gc()


def _placeholder_binding() -> types.ModuleType:
    """A module with the two names nfqueue.py imports from netfilterqueue; using either raises."""
    mod = types.ModuleType("netfilterqueue")

    class Unavailable:
        def __init__(self, *_: object) -> None:
            raise RuntimeError("netfilterqueue is not installed (flow_bench placeholder)")

    mod.NetfilterQueue = Unavailable  # type: ignore[attr-defined]
    mod.Packet = Unavailable  # type: ignore[attr-defined]
    return mod


class PauseClock:
    """Every automatic collection's pause (gc.callbacks 'start' to 'stop'), by generation, as wall-clock
    time (what the packet path waits) and this thread's CPU time (the collector's own work, without the
    preemption a shared machine adds); explicit gc.collect() calls made inside `explicit()` are left out."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[tuple[float, float]]] = {0: [], 1: [], 2: []}
        self._t = (0.0, 0.0)
        self._skip = False

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if self._skip:
            return
        if phase == "start":
            self._t = (time.perf_counter(), time.thread_time())
        else:
            wall, cpu = self._t
            self.pauses[info["generation"]].append((time.perf_counter() - wall, time.thread_time() - cpu))

    def explicit(self) -> float:
        """One full collection we ask for ourselves (not counted): its duration in seconds."""
        self._skip = True
        t = time.perf_counter()
        gc.collect()
        took = time.perf_counter() - t
        self._skip = False
        return took

    def summary(self) -> dict[str, Any]:
        """Longest pause overall (wall, and CPU) and per generation, and how many collections ran."""
        every = [p for ps in self.pauses.values() for p in ps]
        return {"max_pause_s": max((w for w, _ in every), default=0.0),
                "max_pause_cpu_s": max((c for _, c in every), default=0.0), "collections": len(every),
                "by_generation": {g: {"count": len(ps), "max_s": max((w for w, _ in ps), default=0.0)}
                                  for g, ps in self.pauses.items()}}


def make_enforcer(max_flows: int) -> Enforcer:
    """The daemon's Enforcer (enforce mode, 16 packets queued) with room for `max_flows` flows."""
    enf = Enforcer(parse_config(CONFIG), Registry())
    enf.engine.table.max_flows = max_flows
    return enf


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/status."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def scale(flows: int, payload: bytes, limit: float) -> dict[str, Any]:
    """Fill the table with `flows` flows (bounded by `limit` seconds); RSS and CPU per flow by decade."""
    enf = make_enforcer(flows + 1)
    handle = enf.handle
    # Packets are built in chunks so their bytes do not count as flow state.
    clock = PauseClock()
    clock.explicit()
    base = rss_bytes()
    gc.callbacks.append(clock)
    marks = sorted({m for m in (10_000, 100_000, 1_000_000, flows) if m <= flows})
    steps: list[dict[str, Any]] = []
    done = 0
    cpu_in_flows = 0.0
    deadline = time.monotonic() + limit
    chunk = 10_000
    for m in marks:
        seg_cpu = 0.0
        seg_start = done
        while done < m and time.monotonic() < deadline:
            n = min(chunk, m - done)
            pkts = []
            for i in range(done, done + n):
                a, p = client_addr(i)
                pkts.append(tcp_packet(a, p, SERVER, 9009, payload))
            t = time.process_time()
            for b in pkts:
                handle(b)
            seg_cpu += time.process_time() - t
            done += n
        cpu_in_flows += seg_cpu
        if done < m:
            break
        clock.explicit()
        steps.append({"flows": done, "rss_bytes": rss_bytes() - base,
                      "us_per_new_flow": seg_cpu / max(1, done - seg_start) * 1e6,
                      "max_gc_pause_s": clock.summary()["max_pause_s"]})  # longest so far
    gc.callbacks.remove(clock)  # the fill's automatic collections only
    # One more packet (the echo, reply direction) on up to 10k existing flows: the lookup cost at this size.
    n = min(done, 10_000)
    pkts = []
    for i in range(0, done, max(1, done // max(1, n))):
        a, p = client_addr(i)
        pkts.append(tcp_packet(SERVER, 9009, a, p, payload))
    t = time.process_time()
    for b in pkts[:n]:
        handle(b)
    existing = (time.process_time() - t) / max(1, len(pkts[:n])) * 1e6
    # What one full collection stalls the packet path for (never automatic with the daemon's settings; the
    # Enforcer still runs one an hour).
    pause = clock.explicit()
    return {"flows": done, "full_gc_pause_s": pause, "fill_gc": clock.summary(),
            "table": len(enf.engine.table), "complete": done >= flows, "steps": steps,
            "us_per_existing_pkt": existing, "base_rss": base}


def churn(table: int, flows: int, payload: bytes, rate: float) -> dict[str, Any]:
    """A full table in steady state, as the daemon's queue loop sees it: `flows` new flows after the table
    (bounded at `table`) filled, each its request, the echo and the echo's retransmission (the lab's
    unknown TCP case), tick() after every packet, on a simulated clock of `rate` new flows/s (so the quiet
    rule decides each flow 2 s after its last packet and evicted flows are decided ones, as in the daemon).
    Returns the longest collection and the longest handle()+tick() stall, whatever caused it (a collection,
    the quiet rule, a dict grown or rebuilt), in real time."""
    now = [1.8e9]
    t0 = now[0]
    real_time, real_monotonic = time.time, time.monotonic
    time.time = lambda: now[0]  # type: ignore[assignment]
    time.monotonic = lambda: now[0] - t0 + 1000.0  # type: ignore[assignment]
    try:
        enf = make_enforcer(table)
        handle, tick = enf.handle, enf.tick
        clock = PauseClock()
        clock.explicit()
        stalls: list[float] = []
        done = 0
        cpu = 0.0
        step = 1.0 / rate / 3
        chunk = 10_000
        gc.callbacks.append(clock)
        try:
            while done < table + flows:
                n = min(chunk, table + flows - done)
                pkts = []
                for i in range(done, done + n):
                    a, port = client_addr(i)
                    reply = tcp_packet(SERVER, 9009, a, port, payload)
                    pkts += [tcp_packet(a, port, SERVER, 9009, payload), reply, reply]
                worst = 0.0
                c = time.process_time()
                for b in pkts:
                    t = time.perf_counter()
                    handle(b)
                    tick()
                    took = time.perf_counter() - t
                    if took > worst:
                        worst = took
                    now[0] += step
                if done >= table:  # the fill is not the steady state
                    cpu += time.process_time() - c
                    stalls.append(worst)
                elif done + n >= table:
                    clock.pauses = {0: [], 1: [], 2: []}  # from here on: the steady state only
                done += n
        finally:
            gc.callbacks.remove(clock)
        # what the young generations hold at the end, and what collecting them takes: the pause the next
        # automatic collection would cost (it starts on an allocation count that churn keeps low)
        young = len(gc.get_objects(0)) + len(gc.get_objects(1))
        t = time.perf_counter()
        gc.collect(1)
        young_pause = time.perf_counter() - t
    finally:
        time.time, time.monotonic = real_time, real_monotonic  # type: ignore[assignment]
    return {"table": table, "flows": flows, "rate": rate, "gc": clock.summary(), "young_objects": young,
            "young_collection_s": young_pause,
            "max_stall_s": max(stalls, default=0.0), "us_per_flow_cpu": cpu / max(1, flows) * 1e6,
            "evicted": enf.engine.table.evicted}


def mix(conns: int, payload: bytes) -> dict[str, Any]:
    """`conns` new connections: request then echo, both through the Enforcer; microseconds per packet."""
    enf = make_enforcer(262_144)
    handle = enf.handle
    pkts = []
    for i in range(conns):
        a, p = client_addr(i)
        pkts.append(tcp_packet(a, p, SERVER, 9009, payload))
        pkts.append(tcp_packet(SERVER, 9009, a, p, payload))
    t = time.perf_counter()
    c = time.process_time()
    for b in pkts:
        handle(b)
    cpu = time.process_time() - c
    wall = time.perf_counter() - t
    return {"packets": len(pkts), "us_per_pkt_cpu": cpu / len(pkts) * 1e6,
            "us_per_pkt_wall": wall / len(pkts) * 1e6}


def main() -> int:
    """Entry point: one measurement, one JSON object on stdout."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("mode", choices=("scale", "mix", "churn"))
    ap.add_argument("--flows", type=int, default=100_000, help="scale: concurrent flows (<= 2,000,000)")
    ap.add_argument("--conns", type=int, default=20_000, help="mix: new connections (<= 1,000,000)")
    ap.add_argument("--table", type=int, default=65_536, help="churn: the table's bound (queue.flows)")
    ap.add_argument("--rate", type=float, default=2000.0, help="churn: new flows per simulated second")
    ap.add_argument("--limit", type=float, default=300.0, help="scale: seconds at most (default 300)")
    ap.add_argument("--gc", choices=("daemon", "default"), default="daemon",
                    help="collector settings: the daemon's (default) or the interpreter's")
    ap.add_argument("--payload", default="ping", help="first request bytes (default 'ping', as net_bench)")
    a = ap.parse_args()
    if not (1 <= a.flows <= 2_000_000 and 1 <= a.conns <= 1_000_000 and 0 < a.limit <= 3600
            and 1_000 <= a.table <= 1_000_000 and 1 <= a.rate <= 100_000):
        ap.error("bounds: --flows 1..2e6, --conns 1..1e6, --limit 0..3600, --table 1000..1e6, --rate 1..1e5")
    payload = a.payload.encode()
    set_gc(a.gc)
    if a.mode == "scale":
        out = scale(a.flows, payload, a.limit)
    elif a.mode == "churn":
        out = churn(a.table, a.flows, payload, a.rate)
    else:
        out = mix(a.conns, payload)
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
