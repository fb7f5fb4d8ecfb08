"""The daemon's reporter configured with an mqtts:// uplink, against a real mosquitto: its events arrive on
the box's topic, and the ISP's signed registry published retained on tunnelwatch/v1/<device>/registry is
applied through the same verification as the HTTPS sync; tampered, unsigned, other-device and replayed
documents are refused and reported as registry_rejected; another box cannot publish this box's registry."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from support.mosquitto import Mosquitto, broker
from support.mqttsub import Client
from tunnelwatch.appliance.state import StatusState
from tunnelwatch.config.runconfig import parse_config
from tunnelwatch.policy.regsync import sign_document
from tunnelwatch.policy.syncer import RegistrySyncer
from tunnelwatch.report.mqtt import MqttUplink
from tunnelwatch.report.mqttwire import registry_topic
from tunnelwatch.report.reporter import Reporter

pytestmark = pytest.mark.integration

DEVICE = "cpe-reg-1"
OTHER = "cpe-reg-2"
REG_V1 = "registrations:\n  - id: PTA-1\n    servers: [203.0.113.10]\n"
REG_V2 = REG_V1 + "  - id: PTA-2\n    servers: [192.0.2.0/28]\n"


class Box:
    """A Reporter + RegistrySyncer wired as inline/daemon.py wires them, with what they report."""

    def __init__(self, mq: Mosquitto, tmp: Path, key: Ed25519PrivateKey) -> None:
        cert, ckey = mq.device(DEVICE)
        ckey.chmod(0o600)
        pub = base64.b64encode(key.public_key().public_bytes(serialization.Encoding.Raw,
                                                             serialization.PublicFormat.Raw)).decode()
        self.registry = tmp / "registry.yaml"
        self.registry.write_text("registrations: []\n")
        self.cfg = parse_config(
            f"registry: {self.registry}\n"
            f"report:\n  state_dir: {tmp / 'state'}\n  heartbeat: 3600\n"
            f"  uplink: {{url: '{mq.url}', ca_file: '{mq.ca}', client_cert: '{cert}', client_key: '{ckey}',"
            f" keepalive: 10}}\n"
            f"  registry_sync: {{public_key: '{pub}'}}\n")
        self.state = StatusState(device_id=DEVICE, version="0", mode="enforce")
        self.reports: list[tuple[str, dict[str, Any]]] = []
        self.changed = threading.Event()
        self.rejected = threading.Event()
        self.reporter = Reporter(self.cfg, self.state, DEVICE)
        self.syncer = RegistrySyncer(self.state, DEVICE, self._report, self.changed.set)
        self.reporter.registry_sink = self.syncer.offer

    def _report(self, kind: str, **fields: Any) -> None:
        self.reports.append((kind, fields))
        self.reporter.event(kind, **fields)
        if kind == "registry_rejected":
            self.rejected.set()

    def start(self) -> None:
        """In the daemon's order: the reporter (and its uplink) first, then the syncer."""
        self.reporter.start()
        self.syncer.start(self.cfg)

    def stop(self) -> None:
        """As the daemon stops."""
        self.syncer.stop()
        self.reporter.stop("test")

    def expect_rejected(self, want: str) -> dict[str, Any]:
        """Wait for the next registry_rejected report; its fields."""
        assert self.rejected.wait(20), self.reports
        self.rejected.clear()
        kind, fields = self.reports[-1]
        assert kind == "registry_rejected" and want in fields["reason"], fields
        return fields


@pytest.fixture
def mq(tmp_path: Path) -> Iterator[Mosquitto]:
    with broker(tmp_path / "broker") as b:
        yield b


def _tampered(doc: bytes) -> bytes:
    env = json.loads(doc)
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["registry"] = payload["registry"].replace("203.0.113.10", "0.0.0.0/0")
    env["payload"] = base64.b64encode(json.dumps(payload, sort_keys=True).encode()).decode()
    return json.dumps(env).encode()


def test_reporter_over_mqtt_and_the_retained_registry(mq: Mosquitto, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    isp = Client(mq, topics=("tunnelwatch/v1/+/events",), client_id="isp").start()
    box = Box(mq, tmp_path, key)
    try:
        # published before the box ever connects: retained, it arrives when the box subscribes
        assert isp.publish(registry_topic(DEVICE), sign_document(key, 1, REG_V1, device=DEVICE),
                           retain=True) < 0x80
        box.start()
        assert isinstance(box.reporter.uplink, MqttUplink)
        assert box.changed.wait(20), (box.reports, box.state.snapshot())
        assert box.registry.read_text() == REG_V1
        res = box.syncer.take()
        assert res is not None and res.version == 1 and box.syncer.current_version() == 1
        # the reporter's own events reach the ISP over the same connection
        assert isp.wait(lambda m: any(e["kind"] == "daemon_started" for x in m for e in x.doc()["events"])
                        if m else False, 20), len(isp.messages)
        assert all(x.topic == f"tunnelwatch/v1/{DEVICE}/events" for x in isp.messages)

        # a tampered document: refused, reported, the registry file untouched
        assert isp.publish(registry_topic(DEVICE), _tampered(sign_document(key, 2, REG_V2, device=DEVICE)),
                           retain=True) < 0x80
        box.expect_rejected("bad signature")
        # signed by someone else, not JSON at all, for another box, or an old version replayed
        other_key = Ed25519PrivateKey.generate()
        for doc, why in ((sign_document(other_key, 3, REG_V2, device=DEVICE), "bad signature"),
                         (b"\xff{not json", "not complete JSON"),
                         (sign_document(key, 4, REG_V2, device=OTHER), "is for device"),
                         (sign_document(key, 1, REG_V2, device=DEVICE), "not newer")):
            assert isp.publish(registry_topic(DEVICE), doc, retain=True) < 0x80
            box.expect_rejected(why)
        assert box.registry.read_text() == REG_V1 and box.syncer.current_version() == 1
        assert box.state.snapshot()["registry_sync_error"]

        # another box's certificate may not publish this box's registry (the ACL lets boxes only read it)
        other = Client(mq, identity=OTHER, client_id="other").start()
        try:
            assert other.publish(registry_topic(DEVICE), sign_document(key, 9, REG_V2, device=DEVICE),
                                 retain=True) == 0x87
        finally:
            other.stop()

        # and a good, newer document still goes through after all that
        box.changed.clear()
        assert isp.publish(registry_topic(DEVICE), sign_document(key, 5, REG_V2, device=DEVICE),
                           retain=True) < 0x80
        assert box.changed.wait(20), box.reports
        assert box.registry.read_text() == REG_V2 and box.syncer.current_version() == 5
        assert box.reporter.uplink is not None
        st = box.reporter.uplink.stats()
        assert st["registry_messages"] == 7 and st["connected"], st
        # registry_rejected went upward like every other event
        assert isp.wait(lambda m: sum(e["kind"] == "registry_rejected" for x in m
                                      for e in x.doc()["events"]) >= 5, 20), len(isp.messages)
    finally:
        box.stop()
        isp.stop()
