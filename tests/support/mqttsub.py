"""A real MQTT 5 client (paho) for tests: the ISP side of the broker in support/mosquitto.py. It subscribes
with a persistent session (so messages published while it reconnects, e.g. across a broker restart, are
queued for it), records every message it gets, and publishes (retained registry documents)."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from support.mosquitto import INGEST_IDENTITY, Mosquitto
from tunnelwatch.report.uplink import client_context


@dataclass
class Message:
    """One message as the subscriber got it."""

    topic: str
    payload: bytes
    retain: bool
    user: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None

    def doc(self) -> dict[str, Any]:
        """The batch envelope: gzip'd JSON, as the HTTPS body."""
        out: dict[str, Any] = json.loads(gzip.decompress(self.payload))
        return out


class Client:
    """A paho client with a certificate from the broker's CA (`identity` is its CN = MQTT username)."""

    def __init__(self, b: Mosquitto, identity: str = INGEST_IDENTITY, client_id: str | None = None,
                 topics: tuple[str, ...] = ()) -> None:
        cert, key = b.device(identity)
        self.topics = topics
        self.messages: list[Message] = []
        self.suback = threading.Event()
        self.refused: list[int] = []  # PUBACK / SUBACK failure reason codes
        self._cond = threading.Condition()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{identity}",
                             protocol=MQTTProtocolVersion.MQTTv5)
        self.c.tls_set_context(client_context(str(b.ca), str(cert), str(key)))
        self.c.reconnect_delay_set(0.05, 0.5)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.port = b.port

    def start(self, timeout: float = 10.0) -> Client:
        """Connect (persistent session), subscribe and wait for the SUBACK (when there are topics)."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self.c.connect("127.0.0.1", self.port, 30, clean_start=False, properties=props)
        self.c.loop_start()
        if self.topics and not self.suback.wait(timeout):
            raise TimeoutError("no SUBACK from the broker")
        return self

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        self.c.disconnect()
        self.c.loop_stop()

    def publish(self, topic: str, payload: bytes, retain: bool = False, timeout: float = 10.0) -> int:
        """Publish at QoS 1 and wait for the PUBACK; its reason code (below 0x80 = accepted; 0x10: accepted,
        nobody subscribed)."""
        done = threading.Event()
        codes: list[int] = []

        def on_publish(_c: Any, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
            codes.append(int(rc.value))
            done.set()

        self.c.on_publish = on_publish
        self.c.publish(topic, payload, qos=1, retain=retain)
        if not done.wait(timeout):
            raise TimeoutError("no PUBACK from the broker")
        return codes[0]

    def wait(self, predicate: Callable[[list[Message]], bool], timeout: float) -> bool:
        """Block until predicate(messages so far) holds or timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self.messages)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def docs(self) -> list[dict[str, Any]]:
        """Every event batch received so far, decoded."""
        with self._cond:
            return [m.doc() for m in self.messages if m.topic.endswith("/events")]

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            for t in self.topics:  # again after every reconnect: harmless with a kept session
                c.subscribe(t, options=SubscribeOptions(qos=1))

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        self.refused.extend(int(rc.value) for rc in codes if rc.is_failure)
        self.suback.set()

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        props = getattr(m, "properties", None)
        user = dict(getattr(props, "UserProperty", []) or [])
        with self._cond:
            self.messages.append(Message(m.topic, bytes(m.payload), bool(m.retain), user,
                                         getattr(props, "ContentType", None)))
            self._cond.notify_all()

