"""Spool throughput and size: the figures issue 4's acceptance asks for, measured on this machine.

- events/s sustained into the spool: single `put` (one fsync each) and `put_many` batches;
- spool size on disk per 100k events (main file + WAL after a checkpoint) and stored JSON bytes/event;
- time to drain 100k spooled events with peek + ack (what the uplink does, without the network).

Realistic flow_tagged events built with make_event (cost reported apart). Run on the filesystem that will
hold the state directory (--dir); a tmpfs gives meaningless fsync figures. A benchmark, not a test: it
prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import tempfile
import time

from tunnelwatch.report.events import make_event
from tunnelwatch.report.spool import Spool


def flow_event(i: int) -> dict[str, object]:
    """One typical decided-flow event."""
    return make_event("flow_tagged", device_id="bench-0001", src=f"192.168.{i >> 8 & 255}.{i & 255}",
                      sport=40000 + i % 20000, dst="203.0.113.7", dport=1194, transport="udp",
                      klass="vpn_tunnel", protocol="openvpn", confidence="confirmed", action="report",
                      reason="unregistered",
                      evidence=["P_CONTROL_HARD_RESET_CLIENT_V2", "reply P_CONTROL_HARD_RESET_SERVER_V2"],
                      packets=4, bytes=1480, first_seen=1_700_000_000.0 + i, last_seen=1_700_000_000.5 + i)


def fs_type(path: str) -> str:
    """The filesystem type holding `path` (longest mount point prefix in /proc/mounts)."""
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) > 2 and path.startswith(parts[1]) and len(parts[1]) > len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def disk_bytes(path: str) -> int:
    """Main file + WAL + shm after a truncating checkpoint (what the state directory really holds)."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return sum(os.path.getsize(path + s) for s in ("", "-wal", "-shm") if os.path.exists(path + s))


def bench_put(path: str, sync: str, seconds: float, cap: int) -> float:
    """Single puts for up to `seconds` (or `cap` events); events/s."""
    with Spool(path, synchronous=sync) as sp:  # type: ignore[arg-type]
        evs = [flow_event(i) for i in range(cap)]
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        for ev in evs:
            sp.put(ev)
            n += 1
            if time.perf_counter() > deadline:
                break
        return n / (time.perf_counter() - t0)


def bench_batches(path: str, sync: str, total: int, batch: int) -> tuple[float, int, int]:
    """put_many in batches; (events/s, bytes on disk, stored JSON bytes)."""
    evs = [flow_event(i) for i in range(total)]
    with Spool(path, synchronous=sync) as sp:  # type: ignore[arg-type]
        t0 = time.perf_counter()
        for i in range(0, total, batch):
            sp.put_many(evs[i:i + batch])
        rate = total / (time.perf_counter() - t0)
        stored = sp.stored_bytes()
    return rate, disk_bytes(path), stored


def bench_drain(path: str, batch: int) -> tuple[float, int]:
    """peek + ack until empty, as the uplink does; (seconds, events drained)."""
    with Spool(path) as sp:
        n = 0
        t0 = time.perf_counter()
        for _ in range(10_000_000):
            rows = sp.peek(batch)
            if not rows:
                break
            sp.ack([r for r, _ in rows])
            n += len(rows)
        return time.perf_counter() - t0, n


def main() -> None:
    """Run every measurement and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/var/tmp", help="where to create the spool (default /var/tmp)")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--put-seconds", type=float, default=5.0, help="time budget of the single-put run")
    ap.add_argument("--sync", choices=["FULL", "NORMAL", "both"], default="both")
    args = ap.parse_args()
    syncs = ["FULL", "NORMAL"] if args.sync == "both" else [args.sync]
    print(f"# {platform.node()} {platform.machine()} python {platform.python_version()} "
          f"sqlite {sqlite3.sqlite_version}; spool dir {args.dir} ({fs_type(os.path.realpath(args.dir))})")
    t0 = time.perf_counter()
    for i in range(10_000):
        flow_event(i)
    print(f"make_event: {10_000 / (time.perf_counter() - t0):,.0f} events/s built and validated")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="spool-bench-") as tmp:
        for sync in syncs:
            rate = bench_put(os.path.join(tmp, f"put-{sync}.db"), sync, args.put_seconds, args.events)
            print(f"synchronous={sync}: put (one transaction each): {rate:,.0f} events/s")
            for batch in (100, 1000):
                path = os.path.join(tmp, f"many-{sync}-{batch}.db")
                rate, disk, stored = bench_batches(path, sync, args.events, batch)
                print(f"synchronous={sync}: put_many({batch}): {rate:,.0f} events/s")
                if batch == 1000:
                    per100k = disk * 100_000 / args.events
                    print(f"  on disk: {disk / args.events:.0f} bytes/event = {per100k / 1e6:.1f} MB "
                          f"per 100k events (JSON {stored / args.events:.0f} bytes/event)")
                    for drain_batch in (500,):
                        secs, n = bench_drain(path, drain_batch)
                        print(f"  drain {n:,} events with peek({drain_batch}) + ack: {secs:.2f} s "
                              f"({n / secs:,.0f} events/s)")
                    print(f"  after drain: {disk_bytes(path) / 1e6:.1f} MB on disk "
                          "(space returned once the backlog is empty)")


if __name__ == "__main__":
    main()
