"""The real daemon in the lab router reporting over MQTT: mosquitto (TLS, client certificates, per-device
ACL) and an ingest subscriber in the server namespace, reached through the WAN. The daemon's events arrive
on its topic and the ISP's retained signed registry (published with mosquitto_pub) is applied; then kill -9
of the daemon while a PUBLISH waits for its PUBACK (the broker frozen with SIGSTOP), broker resumed,
daemon restarted: every spooled event arrives, duplicates only as a repeated batch id, and the spool ends
empty after SIGTERM."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from support.mosquitto import INGEST_IDENTITY, Mosquitto
from support.netns import SERVER_IP, Lab, lab, require_tools
from support.spool import spool_events
from tunnelwatch.policy.regsync import sign_document

pytestmark = pytest.mark.integration

TOOLS = ("iptables", "ip6tables", "iptables-save", "iptables-restore", "openssl", "mosquitto",
         "mosquitto_pub", "ss")
QUEUE = 9
DEVICE = "tw-lab-mqtt"
PORT = 8883
REG = "registrations:\n  - id: PTA-1\n    servers: [203.0.113.10]\n"
# The ISP's ingest in the server namespace: a persistent shared subscription; one JSON line per batch.
INGEST = """
import gzip, json, ssl, sys
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
host, port, ca, cert, key = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ingest-lab", protocol=MQTTProtocolVersion.MQTTv5)
c.tls_set_context(ctx)
c.reconnect_delay_set(0.05, 0.5)
def on_connect(c, u, f, rc, p):
    c.subscribe("$share/ingest/tunnelwatch/v1/+/events", qos=1)
def on_subscribe(c, u, mid, rcs, p):
    print("subscribed", [int(r.value) for r in rcs], flush=True)
def on_message(c, u, m):
    doc = json.loads(gzip.decompress(m.payload))
    print(json.dumps({"topic": m.topic, "batch_id": doc["batch_id"], "device_id": doc["device_id"],
                      "events": [[e["id"], e["kind"]] for e in doc["events"]]}), flush=True)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
props = Properties(PacketTypes.CONNECT)
props.SessionExpiryInterval = 3600
c.connect(host, int(port), 30, clean_start=False, properties=props)
c.loop_forever()
"""


def _publish_registry(lb: Lab, tmp: Path, mq: Mosquitto, key: Ed25519PrivateKey) -> None:
    """The ISP publishes the box's signed registry, retained, with mosquitto_pub from the server side."""
    doc = tmp / "registry-v1.json"
    doc.write_bytes(sign_document(key, 1, REG, device=DEVICE))
    cert, ckey = mq.device(INGEST_IDENTITY)
    lb.run(lb.server, "mosquitto_pub", "-h", SERVER_IP, "-p", str(PORT), "--cafile", str(mq.ca), "--cert",
           str(cert), "--key", str(ckey), "-V", "mqttv5", "-q", "1", "-r",
           "-t", f"tunnelwatch/v1/{DEVICE}/registry", "-f", str(doc))


def _config(tmp: Path, mq: Mosquitto, key: Ed25519PrivateKey) -> Path:
    cert, ckey = mq.device(DEVICE)
    ckey.chmod(0o600)
    pub = base64.b64encode(key.public_key().public_bytes(serialization.Encoding.Raw,
                                                         serialization.PublicFormat.Raw)).decode()
    cfg = tmp / "tunnelwatch.yaml"
    (tmp / "registry.yaml").write_text("registrations: []\n")
    cfg.write_text(f"queue: {{num: {QUEUE}, packets: 16}}\n"
                   "firewall: {hooks: [forward], ipv6: true, backend: iptables}\n"
                   "registry: registry.yaml\n"
                   "policy: {klass: {vpn_tunnel: enforce}}\n"
                   f"status: {{socket: {tmp / 'status.sock'}}}\n"
                   f"discovery: {{interfaces: [], device_id: {DEVICE}}}\n"
                   "log: {level: debug, journal: false}\n"
                   "report:\n"
                   "  state_dir: state\n"
                   "  heartbeat: 1\n"
                   f"  uplink: {{url: '{mq.url}', ca_file: {mq.ca},\n"
                   f"           client_cert: {cert}, client_key: {ckey}}}\n"
                   f"  registry_sync: {{public_key: '{pub}'}}\n")
    return cfg


def _batches(lb: Lab) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in lb.log("ingest").splitlines() if ln.startswith("{")]


def _wait_batches(lb: Lab, pred: Any, what: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = _batches(lb)
        if pred(got):
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: ingest has {len(_batches(lb))} batches\n"
                         f"{lb.log('daemon')[-2000:]}")


def _kinds(batches: list[dict[str, Any]]) -> list[str]:
    return [k for b in batches for _, k in b["events"]]


def _recv_q(lb: Lab) -> int:
    out = lb.run(lb.server, "ss", "-Htn", "state", "established", f"( sport = :{PORT} )").stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if line.split())


def _start_daemon(lb: Lab, cfg: Path, name: str) -> subprocess.Popen[bytes]:
    p = lb.spawn(lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)], name)
    lb.wait_for_log(name, "ready: queue", timeout=30)
    return p


def test_daemon_over_mqtt_survives_kill9_mid_publish(tmp_path: Path) -> None:
    require_tools(*TOOLS)
    with lab(tmp_path) as lb:
        mq = Mosquitto(tmp_path / "broker", port=PORT, host=SERVER_IP, netns=lb.server)
        frozen = False
        try:
            mq.start()
            icert, ikey = mq.device(INGEST_IDENTITY)
            lb.spawn(lb.server, [sys.executable, "-c", INGEST, SERVER_IP, str(PORT), str(mq.ca), str(icert),
                                 str(ikey)], "ingest")
            lb.wait_for_log("ingest", "subscribed [1]", timeout=15)
            key = Ed25519PrivateKey.generate()
            _publish_registry(lb, tmp_path, mq, key)  # before the box connects: it is retained
            cfg = _config(tmp_path, mq, key)
            _start_daemon(lb, cfg, "daemon")
            got = _wait_batches(lb, lambda b: "daemon_started" in _kinds(b)
                                and _kinds(b).count("heartbeat") >= 2, "daemon_started and two heartbeats")
            # the retained registry came down the same connection and the daemon applied it
            got = _wait_batches(lb, lambda b: "registry_changed" in _kinds(b), "registry_changed")
            assert (tmp_path / "registry.yaml").read_text() == REG
            lb.wait_for_log("daemon", "registry sync: version 1 applied")
            assert all(b["topic"] == f"tunnelwatch/v1/{DEVICE}/events" and b["device_id"] == DEVICE
                       for b in got)

            # freeze the broker: the next heartbeat batch goes out and waits for a PUBACK; kill -9 then
            assert mq.proc is not None
            os.kill(mq.proc.pid, signal.SIGSTOP)
            frozen = True
            deadline = time.monotonic() + 15
            while _recv_q(lb) == 0:
                assert time.monotonic() < deadline, "the daemon published nothing while the broker was frozen"
                time.sleep(0.05)
            lb.stop("daemon", signal.SIGKILL)
            pending = spool_events(tmp_path / "state" / "spool.db")
            assert pending, "nothing left in the spool after the kill"
            os.kill(mq.proc.pid, signal.SIGCONT)
            frozen = False

            _start_daemon(lb, cfg, "daemon2")
            want = {e["id"] for e in pending}
            _wait_batches(lb, lambda b: want <= {i for x in b for i, _ in x["events"]}
                          and _kinds(b).count("daemon_started") >= 2, "the spooled events and a restart")
            lb.stop("daemon2", signal.SIGTERM, timeout=15)
            got = _wait_batches(lb, lambda b: "daemon_stopped" in _kinds(b), "daemon_stopped")
        finally:
            if frozen and mq.proc is not None:
                os.kill(mq.proc.pid, signal.SIGCONT)
            mq.stop()
        assert spool_events(tmp_path / "state" / "spool.db") == []
        batch_of: dict[str, set[str]] = {}
        for b in got:
            for i, _ in b["events"]:
                batch_of.setdefault(i, set()).add(b["batch_id"])
        assert want <= set(batch_of), f"{len(want - set(batch_of))} spooled events lost"
        assert all(len(v) == 1 for v in batch_of.values()), "an event arrived under two batch ids"
        dup = len(got) - len({b["batch_id"] for b in got})
        print(f"daemon kill -9 mid-publish: {len(batch_of)} events in {len(got)} deliveries, "
              f"{dup} repeated batch id(s), {len(pending)} events spooled at the kill")
        assert dup <= 1
