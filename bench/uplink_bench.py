"""Uplink throughput: spooled events through the HTTPS uplink into the reference collector on 127.0.0.1.

Two figures, each over N events (default 100k) of realistic flow_tagged events, with mutual TLS:
- live: a producer spools events in chunks while the uplink drains them; events/s end to end (spooled ->
  acknowledged by the collector);
- outage: the collector is down while N events pile up in the spool; then it comes up and the time to
  drain the backlog is measured from that moment (it includes the wait for the uplink's next retry, so
  it is bounded below by the backoff, here capped at --backoff-max).
The collector runs as its own process (`python -m tunnelwatch.isp.collector`), as an ISP would run it; the
stored JSONL is counted afterwards (zero lost, zero duplicated). A benchmark, not a test: prints figures
(and JSON with --json) and never fails on them. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tunnelwatch.report.events import make_event
from tunnelwatch.report.spool import Spool
from tunnelwatch.report.uplink import Uplink

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.pki import Pki, make_pki

DEVICE = "cpe-bench-1"


def _events(n: int) -> list[dict[str, Any]]:
    return [make_event("flow_tagged", device_id=DEVICE, src="192.0.2.10", sport=1024 + i % 60000,
                       dst="198.51.100.7", dport=443, transport="tcp", klass="benign", protocol="tls",
                       confidence="confirmed", action="allow", evidence=["ClientHello"], packets=12,
                       bytes=4200) for i in range(n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_collector(pki: Pki, store: Path, port: int) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-m", "tunnelwatch.isp.collector", "--listen", f"127.0.0.1:{port}",
                          "--cert", str(pki.server_cert), "--key", str(pki.server_key), "--client-ca",
                          str(pki.ca), "--any-device", "--store", str(store), "--log-level", "warning"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return p
        except OSError:
            if p.poll() is not None:
                raise RuntimeError("collector exited") from None
            threading.Event().wait(0.02)  # polling a real condition (the port listens), bounded
    p.kill()
    raise RuntimeError("collector did not listen within 10 s")


def _stop(p: subprocess.Popen[bytes]) -> None:
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def _stored(store: Path) -> tuple[int, int]:
    path = store / f"{DEVICE}.jsonl"
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()] if path.exists() else []
    return len(ids), len(ids) - len(set(ids))


def _uplink(sp: Spool, port: int, pki: Pki, a: argparse.Namespace) -> Uplink:
    return Uplink(sp, url=f"https://127.0.0.1:{port}", ca_file=str(pki.ca), client_cert=str(pki.client_cert),
                  client_key=str(pki.client_key), token=None, device_id=DEVICE, batch_size=a.batch,
                  max_rate=a.max_rate, timeout=30.0, backoff_max=a.backoff_max, backoff_base=0.5,
                  idle_poll=0.05)


def live(pki: Pki, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    """Producer and uplink at once; events/s from the first put to the last acknowledgement."""
    events = _events(a.events)
    store, port = work / "store-live", _free_port()
    coll = _start_collector(pki, store, port)
    sp = Spool(str(work / "live.db"))
    up = _uplink(sp, port, pki, a)
    try:
        t0 = time.perf_counter()
        up.start()
        for i in range(0, len(events), 500):
            sp.put_many(events[i:i + 500])
            up.kick()
        put_s = time.perf_counter() - t0
        ok = up.wait_for(lambda s: s["sent_events"] >= a.events and s["backlog"] == 0, 600)
        total = time.perf_counter() - t0
    finally:
        up.stop()
        sp.close()
        _stop(coll)
    n, dup = _stored(store)
    st = up.stats()
    return {"ok": ok, "events": a.events, "seconds": round(total, 2), "events_per_s": round(a.events / total),
            "spool_put_events_per_s": round(a.events / put_s), "batches": st["sent_batches"],
            "stored": n, "duplicated": dup, "lost": a.events - n + dup}


def outage(pki: Pki, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    """N events spooled while the collector is down; drain time once it is back."""
    store, port = work / "store-outage", _free_port()
    sp = Spool(str(work / "outage.db"))
    sp.put_many(_events(a.events))
    up = _uplink(sp, port, pki, a)
    coll = None
    try:
        up.start()
        up.wait_for(lambda s: s["failures"] >= 3, 60)
        t0 = time.perf_counter()
        coll = _start_collector(pki, store, port)
        t_up = time.perf_counter()
        first = up.wait_for(lambda s: s["sent_batches"] >= 1, 600)
        t_first = time.perf_counter()
        ok = first and up.wait_for(lambda s: s["backlog"] == 0, 600)
        t_end = time.perf_counter()
    finally:
        up.stop()
        sp.close()
        if coll is not None:
            _stop(coll)
    n, dup = _stored(store)
    return {"ok": ok, "events": a.events, "drain_s": round(t_end - t0, 2),
            "retry_wait_s": round(t_first - t_up, 2), "drain_after_first_ack_s": round(t_end - t_first, 2),
            "events_per_s_after_first_ack": round(a.events / max(t_end - t_first, 1e-9)),
            "failures_during_outage": up.stats()["failures"], "stored": n, "duplicated": dup,
            "lost": a.events - n + dup}


def main() -> int:
    """Run both measurements and print the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=500, help="events per POST (the Uplink default)")
    p.add_argument("--max-rate", type=float, default=50.0, help="batches/s bound (the Uplink default)")
    p.add_argument("--backoff-max", type=float, default=2.0, help="backoff cap during the outage")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="uplink-bench-") as tmp:
        work = Path(tmp)
        (work / "pki").mkdir()
        pki = make_pki(work / "pki")
        res = {"live": live(pki, work, a), "outage": outage(pki, work, a),
               "batch": a.batch, "max_rate": a.max_rate, "backoff_max": a.backoff_max}
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        lv, ou = res["live"], res["outage"]
        print(f"live:   {lv['events']} events in {lv['seconds']} s = {lv['events_per_s']} events/s "
              f"({lv['batches']} batches of <= {a.batch}; spool put alone {lv['spool_put_events_per_s']}/s); "
              f"stored {lv['stored']}, lost {lv['lost']}, duplicated {lv['duplicated']}")
        print(f"outage: {ou['events']} spooled events drained {ou['drain_s']} s after the collector came "
              "back "
              f"(first retry after {ou['retry_wait_s']} s, backoff cap {a.backoff_max} s; then "
              f"{ou['events_per_s_after_first_ack']} events/s); stored {ou['stored']}, lost {ou['lost']}, "
              f"duplicated {ou['duplicated']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
