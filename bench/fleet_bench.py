"""Fleet bench: thousands of simulated boxes publish uplink batches through a real mosquitto (mutual TLS,
one certificate and one connection per box, per-device ACL) into two tunnelwatch-ingest instances and a
real PostgreSQL 15, all on 127.0.0.1.

Prints: broker RSS per connected box (mosquitto's VmRSS before and after the boxes connect), events/s
published and stored (sustained, from the rows' received_at), ingest lag (the row's received_at minus the
event's ts, set when the box built the batch: p50/p99/max), and the stored bytes per event. Bounded: the
publishing phase stops after --seconds (60 at most) and the drain wait after --drain seconds. A
benchmark, not a test: it prints figures (JSON with --json) and never fails on them. Needs root (the
private PostgreSQL runs as the postgres user) and the Debian packages mosquitto and postgresql.

    python bench/fleet_bench.py --boxes 2000 --rate 4000 --seconds 30
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import selectors
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.ingest import flows_batch, ingests, topic
from support.mosquitto import Mosquitto, broker
from support.postgres import postgres


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _box_certs(mq: Mosquitto, names: list[str], d: Path) -> list[tuple[Path, Path]]:
    """A client certificate per box (CN = device id) signed by the broker's CA, made in-process (the
    openssl CLI takes ~20 ms a certificate; this takes ~1 ms)."""
    ca_key = serialization.load_pem_private_key((mq.dir / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate(mq.ca.read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    out = []
    d.mkdir(parents=True, exist_ok=True)
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (x509.CertificateBuilder().subject_name(subject)
                .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
                .sign(ca_key, hashes.SHA256()))
        cp, kp = d / f"{name}.pem", d / f"{name}.key"
        cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        out.append((cp, kp))
    return out


class Fleet:
    """N paho clients driven by one selector loop (paho's external-loop API: no thread per box)."""

    def __init__(self, mq: Mosquitto, names: list[str], certs: list[tuple[Path, Path]]) -> None:
        self.sel = selectors.DefaultSelector()
        self.clients: list[mqtt.Client] = []
        self.acked = 0
        self.refused = 0
        for name, (cert, key) in zip(names, certs, strict=True):
            ctx = ssl.create_default_context(cafile=str(mq.ca))
            ctx.load_cert_chain(str(cert), str(key))
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"box-{name}", protocol=mqtt.MQTTv5)
            c.tls_set_context(ctx)
            c.on_publish = self._on_publish
            c.connect("127.0.0.1", mq.port, keepalive=120)
            sock = c.socket()
            assert sock is not None
            self.sel.register(sock, selectors.EVENT_READ, c)
            self.clients.append(c)
            self.pump(0)

    def _on_publish(self, _c: Any, _u: Any, _mid: int, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.refused += 1
        else:
            self.acked += 1

    def pump(self, timeout: float) -> None:
        """One round: write what is queued, read what arrived."""
        for c in self.clients:
            if c.want_write():
                c.loop_write()
        for key, _ in self.sel.select(timeout):
            key.data.loop_read()

    def connected(self) -> int:
        """Boxes whose CONNACK arrived."""
        return sum(c.is_connected() for c in self.clients)

    def close(self) -> None:
        """Disconnect every box."""
        for c in self.clients:
            c.disconnect()
            c.loop_write()
        self.pump(0.1)


def run(a: argparse.Namespace, d: Path) -> dict[str, Any]:
    """The whole bench in d; returns the figures."""
    names = [f"fleet-{i:05d}" for i in range(a.boxes)]
    res: dict[str, Any] = {"boxes": a.boxes, "events_per_batch": a.events, "target_rate": a.rate}
    with postgres(d) as pg, broker(d / "mq") as mq:
        assert mq.proc is not None
        t = time.monotonic()
        certs = _box_certs(mq, names, d / "certs")
        res["cert_gen_s"] = round(time.monotonic() - t, 1)
        with ingests(d / "ingest", mq, pg.conninfo, n=2) as procs:
            rss0 = _rss_kib(mq.proc.pid)
            t = time.monotonic()
            fleet = Fleet(mq, names, certs)
            deadline = time.monotonic() + 120
            while fleet.connected() < a.boxes and time.monotonic() < deadline:
                fleet.pump(0.05)
            res["connected"] = fleet.connected()
            res["connect_s"] = round(time.monotonic() - t, 1)
            rss1 = _rss_kib(mq.proc.pid)
            res["broker_rss_kib_idle"] = rss0
            res["broker_rss_kib_connected"] = rss1
            res["broker_kib_per_box"] = round((rss1 - rss0) / max(1, fleet.connected()), 1)
            # paced publishing: batch k goes out at start + k / batches_per_s, round-robin over the boxes
            per_s = a.rate / a.events
            published = 0
            start = time.monotonic()
            end = start + a.seconds
            while time.monotonic() < end:
                due = int((time.monotonic() - start) * per_s)
                while published < due:
                    c = fleet.clients[published % a.boxes]
                    name = names[published % a.boxes]
                    _, body, _ = flows_batch(name, a.events, time.time())
                    c.publish(topic(name), body, qos=1)
                    published += 1
                fleet.pump(0.005)
            pub_s = time.monotonic() - start
            deadline = time.monotonic() + 30
            while fleet.acked + fleet.refused < published and time.monotonic() < deadline:
                fleet.pump(0.05)
            res["batches_published"] = published
            res["broker_acked"] = fleet.acked
            res["events_published"] = published * a.events
            res["publish_events_per_s"] = round(published * a.events / pub_s)
            rss2 = _rss_kib(mq.proc.pid)
            res["broker_rss_kib_after"] = rss2
            want = published * a.events
            deadline = time.monotonic() + a.drain
            stored = 0
            with psycopg.connect(pg.conninfo, autocommit=True) as conn:
                while time.monotonic() < deadline:
                    row = conn.execute("SELECT count(*) FROM events").fetchone()
                    stored = int(row[0]) if row else 0
                    if stored >= want:
                        break
                    fleet.pump(0.2)
                res["events_stored"] = stored
                res["drained"] = stored >= want
                row = conn.execute(
                    "SELECT extract(epoch FROM max(received_at) - min(received_at)),"
                    " percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP"
                    " (ORDER BY extract(epoch FROM received_at - ts)),"
                    " max(extract(epoch FROM received_at - ts)),"
                    " count(DISTINCT (device_id, event_id))"
                    " FROM events").fetchone()
                assert row is not None
                span, (p50, p99), lag_max, distinct = row
                res["stored_events_per_s"] = round(stored / float(span)) if span else None
                res["lag_p50_s"], res["lag_p99_s"] = round(float(p50), 3), round(float(p99), 3)
                res["lag_max_s"] = round(float(lag_max), 3)
                res["duplicates"] = stored - int(distinct)
                size = conn.execute("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i"
                                    " JOIN pg_class c ON c.oid = i.inhrelid"
                                    " WHERE i.inhparent = 'events'::regclass").fetchone()
                res["stored_bytes_per_event"] = round(int(size[0]) / stored) if size and stored else None
            res["ingest_stats"] = [p.stats() for p in procs]
            fleet.close()
    return res


def main() -> int:
    """Parse options, run, print."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--boxes", type=int, default=2000)
    p.add_argument("--events", type=int, default=10, help="events per batch")
    p.add_argument("--rate", type=float, default=4000.0, help="target events/s over the whole fleet")
    p.add_argument("--seconds", type=float, default=30.0, help="publishing phase (at most 60)")
    p.add_argument("--drain", type=float, default=60.0, help="longest wait for the ingest to catch up")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    a.seconds = min(a.seconds, 60.0)
    a.boxes = max(1, min(a.boxes, 10_000))
    with tempfile.TemporaryDirectory(prefix="tw-fleet-") as tmp:
        res = run(a, Path(tmp))
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    for k, v in res.items():
        if k != "ingest_stats":
            print(f"{k:28} {v}")
    for i, s in enumerate(res["ingest_stats"]):
        print(f"ingest-{i}: batches {s.get('batches_stored')} events {s.get('events_stored')} "
              f"duplicates {s.get('events_duplicate')} db_errors {s.get('db_errors')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
