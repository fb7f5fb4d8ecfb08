"""Drive `tunnelwatch-ingest` in tests and the fleet bench: run it as a real process (so kill -9 is real),
read its counters, and simulate boxes that publish uplink batches with paho over mutual TLS.

Builds on support.mosquitto (the broker fixture) and support.postgres (the database fixture).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

import tunnelwatch
from support.mosquitto import INGEST_IDENTITY, Mosquitto
from tunnelwatch.report.events import make_event
from tunnelwatch.report.wire import batch_id_for, encode_batch

DAEMON_DIR = Path(tunnelwatch.__file__).resolve().parent.parent


def topic(device: str) -> str:
    """The events topic of a device."""
    return f"tunnelwatch/v1/{device}/events"


class IngestProc:
    """One `python -m tunnelwatch.isp.ingest` process with its own client id, log and stats file."""

    def __init__(self, d: Path, broker: Mosquitto, conninfo: str, client_id: str, *extra: str) -> None:
        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        cert, key = broker.device(INGEST_IDENTITY)
        self.stats_path = d / f"{client_id}.stats.json"
        self.log = d / f"{client_id}.log"
        self.argv = [sys.executable, "-m", "tunnelwatch.isp.ingest", "--broker", broker.url,
                     "--ca", str(broker.ca), "--cert", str(cert), "--key", str(key), "--client-id", client_id,
                     "--db", conninfo, "--stats-file", str(self.stats_path), "--retry-max", "2", *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process (the stats file is removed first, so `connected` means this run)."""
        self.stats_path.unlink(missing_ok=True)
        env = dict(os.environ, PYTHONPATH=f"{DAEMON_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)

    def stats(self) -> dict[str, Any]:
        """The counters last written (empty before the first write)."""
        try:
            doc = json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def wait(self, pred: str, timeout: float = 30.0) -> bool:
        """Poll until `pred` (a key whose value must be truthy) holds in the stats; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats().get(pred):
                return True
            if self.proc is not None and self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def log_text(self) -> str:
        """The process's log so far."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if it hangs."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


@contextlib.contextmanager
def ingests(d: Path, broker: Mosquitto, conninfo: str, n: int = 2) -> Any:
    """n started ingest processes `ingest-0` ...; always stopped on exit. The ids are the same in every
    test on purpose: mosquitto keeps an offline instance's persistent session in the shared group and
    queues its share of the messages there, so each test must bring back every instance a previous test
    used on that broker (as an operator restarts instances under their ids)."""
    procs = [IngestProc(d, broker, conninfo, f"ingest-{i}") for i in range(n)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            assert p.wait("connected", 30), f"{p.argv[-1]} did not connect: {p.log_text()[-2000:]}"
        yield procs
    finally:
        for p in procs:
            p.stop()


class Box:
    """A simulated box: one MQTT 5 client with its own certificate, publishing batches at QoS 1."""

    def __init__(self, broker: Mosquitto, device: str, *, cert_of: str | None = None) -> None:
        self.device = device
        cert, key = broker.device(cert_of or device)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"box-{device}",
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(broker.ca), certfile=str(cert), keyfile=str(key))
        self.reasons: dict[int, int] = {}  # mid -> PUBACK reason code
        self._cond = threading.Condition()
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", broker.port, keepalive=30)
        self.client.loop_start()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._cond:
            self.reasons[mid] = int(reason.value)
            self._cond.notify_all()

    def publish(self, payload: bytes, on: str | None = None) -> int:
        """Publish one batch (on its own topic unless `on` names another); return the message id."""
        info = self.client.publish(topic(on or self.device), payload, qos=1)
        return int(info.mid)

    def wait_acked(self, mids: list[int], timeout: float = 30.0) -> list[int]:
        """The PUBACK reason codes of mids, waiting until all arrived; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(m in self.reasons for m in mids):
                left = deadline - time.monotonic()
                assert left > 0, f"{self.device}: no PUBACK for {len(mids)} message(s)"
                self._cond.wait(left)
            return [self.reasons[m] for m in mids]

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def flows_batch(device: str, n: int, ts: float) -> tuple[str, bytes, list[str]]:
    """A batch of n events (blocked tunnels, VoIP flows some bulk, heartbeats) as the uplink encodes it:
    (batch id, gzip'd body, event ids)."""
    evs: list[dict[str, object]] = []
    for i in range(n):
        t = ts + i * 0.001
        if i % 3 == 0:
            ev = make_event("flow_blocked", device_id=device, ts=t, sport=40000 + i, dport=1194,
                            transport="udp", klass="vpn_tunnel", protocol=("openvpn", "wireguard")[i % 2],
                            confidence="confirmed", action="block")
        elif i % 3 == 1:
            ev = make_event("flow_tagged", device_id=device, ts=t, sport=5060, dport=5060, transport="udp",
                            klass="voip", protocol="sip", confidence="confirmed", action="report",
                            bulk=(i % 2 == 1))
        else:
            ev = make_event("heartbeat", device_id=device, ts=t, uptime_s=60.0,
                            flows_by_klass={"vpn_tunnel": 1}, packets_queued=10, queue_drops=0)
        evs.append(ev)
    bid = batch_id_for(device, evs)
    return bid, encode_batch(bid, device, evs), [str(e["id"]) for e in evs]
