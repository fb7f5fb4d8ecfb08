"""The MQTT 5 uplink: the event spool drained through an MQTT broker instead of HTTPS (docs/uplink.md, MQTT).

It is report/uplink.py's Uplink with the transport swapped, so spool peek/ack, content-derived batch ids,
pacing, jittered backoff, stats and logging are the same code. One batch per PUBLISH, QoS 1, on
`tunnelwatch/v1/<device id>/events`; the payload is byte for byte the HTTPS body (the gzip'd JSON envelope
with the same batch id). A batch leaves the spool only when the PUBACK for that very message arrives with a
success reason code. The session is persistent (clean start off, a session expiry) and the paho client
object lives as long as the uplink: a PUBLISH whose PUBACK was lost with the connection is re-sent by paho
(DUP, same message) after the reconnect instead of being published anew. paho's loop() is pumped in the
uplink's own thread only, so there is no paho thread and nothing here is shared between threads.

With a registry sink, the box also subscribes to `tunnelwatch/v1/<device id>/registry` (retained, QoS 1)
and hands each payload to the sink, which verifies it exactly like the HTTPS registry sync (the policy
side owns that). The CONNECT packet caps what the broker may send (Maximum Packet Size); nothing a broker
sends can raise out of a callback.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from tunnelwatch.report.mqttwire import MAX_PACKET, events_topic, judge_puback, registry_topic, topic_safe
from tunnelwatch.report.uplink import (
    _CLIENT_CERT_ALERTS,
    SpoolLike,
    Uplink,
    _Batch,
    backoff_delay,
    describe_error,
)
from tunnelwatch.report.wire import WIRE_SCHEMA, Outcome, batch_id_for, encode_batch

log = logging.getLogger(__name__)

SESSION_EXPIRY: Final = 7 * 86_400  # seconds the broker keeps our session (and queued registry) offline
KEEPALIVE: Final = 60
RegistrySink = Callable[[bytes], None]


class MqttUplink(Uplink):
    """A background thread draining a Spool to an MQTT 5 broker (QoS 1, persistent session, mutual TLS)."""

    SCHEME = "mqtts"
    DEFAULT_PORT = 8883

    def __init__(self, spool: SpoolLike, *, url: str, ca_file: str | None, client_cert: str | None,
                 client_key: str | None, device_id: str, batch_size: int = 500, max_rate: float = 50.0,
                 timeout: float = 30.0, backoff_max: float = 300.0, backoff_base: float = 1.0,
                 idle_poll: float = 1.0, keepalive: int = KEEPALIVE, session_expiry: int = SESSION_EXPIRY,
                 unrouted: str = "retry", registry_sink: RegistrySink | None = None,
                 cut_file: str | None = None, rng: random.Random | None = None) -> None:
        if not client_cert or not client_key:
            raise ValueError("the MQTT uplink needs client_cert and client_key: the broker knows a box by "
                             "its certificate (mutual TLS)")
        if not topic_safe(device_id):
            raise ValueError(f"device id {device_id!r} cannot be an MQTT topic level")
        super().__init__(spool, url=url, ca_file=ca_file, client_cert=client_cert, client_key=client_key,
                         token=None, batch_size=batch_size, max_rate=max_rate, timeout=timeout,
                         backoff_max=backoff_max, device_id=device_id, backoff_base=backoff_base,
                         idle_poll=idle_poll, rng=rng)
        self._topic = events_topic(device_id)
        self._reg_topic = registry_topic(device_id)
        self._keepalive = keepalive
        self._expiry = session_expiry
        self._keep_unrouted = unrouted != "accept"
        self._sink = registry_sink
        self._client: mqtt.Client | None = None
        self._up = False                          # CONNACK success seen, connection not lost since
        self._why = ""                            # what ended the last connection (refusal, alert, ...)
        self._acks: dict[int, tuple[int, str]] = {}  # mid -> PUBACK (reason code, name)
        self._pending: tuple[str, int] | None = None  # (batch id, mid) published and not acknowledged
        self._idle_attempt = 0
        self._next_idle_connect = 0.0
        self._cut_file = cut_file
        self._unrouted_run = False
        self._stats.update(connected=False, registry_messages=0, unrouted_batches=0)

    # -- the Uplink hooks ----------------------------------------------------------------------------------
    def _post(self, batch: _Batch) -> Outcome:
        self._update(attempts=1)
        down = self._connect()
        if down is not None:
            return down
        client = self._client
        assert client is not None
        if self._pending is not None and self._pending[0] != batch.batch_id:
            # a different batch now (split, or more events after a restart of the thread): the old message
            # must not be re-sent by paho behind our back, so start over with a fresh client and session
            self._drop_client()
            return Outcome("retry", "batch changed while one was in flight; reconnecting")
        if self._pending is None:
            info = client.publish(self._topic, batch.body, qos=1, properties=_publish_props(batch.batch_id))
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and info.rc != MQTTErrorCode.MQTT_ERR_NO_CONN:
                return Outcome("retry", f"publish failed: {mqtt.error_string(info.rc)}")
            self._pending = (batch.batch_id, info.mid)
        mid = self._pending[1]
        deadline = time.monotonic() + self._timeout
        while mid not in self._acks:
            if self._stop.is_set():
                return Outcome("retry", "stopping")
            if time.monotonic() > deadline:
                return Outcome("retry", f"no PUBACK from the MQTT broker within {self._timeout:g}s")
            if not self._pump(0.1):
                return Outcome("retry", self._lost())
        code, name = self._acks.pop(mid)
        self._pending = None
        self._note_unrouted(code == 0x10)
        if code == 0x10 and self._keep_unrouted:
            # nobody got it (after a broker restart mosquitto has not restored the ingest's shared
            # subscription yet): send it again later under the same batch id; the ingest stores it once
            return Outcome("retry", f"PUBACK 0x10 {name}: no subscriber matched {self._topic}; "
                                    "keeping the batch")
        return judge_puback(code, name, self._topic)

    def _note_unrouted(self, unrouted: bool) -> None:
        # 0x10 "no matching subscribers": the broker took the batch and will give it to nobody. By default
        # (unrouted: retry) the batch stays in the spool and goes again; a broker feeding a rule engine or a
        # bridge says 0x10 for every batch, so there the operator sets unrouted: accept (counted as sent)
        if unrouted:
            if not self._unrouted_run:
                what = ("kept in the spool and sent again (report.uplink.unrouted: retry)"
                        if self._keep_unrouted else "lost unless something else consumes them "
                        "(report.uplink.unrouted: accept)")
                log.warning("uplink: the MQTT broker took batches but no subscriber matched %s (PUBACK "
                            "0x10): %s; the ingest needs a persistent subscription", self._topic, what)
            self._unrouted_run = True
            self._update(unrouted_batches=self._stats["unrouted_batches"] + 1)
        else:
            self._unrouted_run = False

    def _next_batch(self) -> _Batch | None:
        # the idle loop also keeps the session alive: PINGs, the registry subscription, a reconnect
        if self._up:
            self._pump(0.0)
        elif time.monotonic() >= self._next_idle_connect:
            if self._connect() is None:
                self._idle_attempt = 0
            else:
                self._next_idle_connect = time.monotonic() + backoff_delay(
                    self._idle_attempt, base=self._backoff_base, cap=self._backoff_max, rng=self._rng)
                self._idle_attempt += 1
        batch = super()._next_batch()
        return self._same_cut(batch) if batch is not None and self._cut_file else batch

    def _same_cut(self, batch: _Batch) -> _Batch:
        """Cut the batch where the one in flight when the process died ended, so that a batch re-sent
        after a kill -9 carries its old batch id even when events were spooled since; then record the
        cut of this batch before it is published (a page-cache write: it must outlive the process)."""
        assert self._cut_file is not None
        try:
            last = int(Path(self._cut_file).read_text().strip() or "0")
        except (OSError, ValueError):
            last = 0
        if batch.rowids[0] <= last < batch.rowids[-1]:
            n = sum(1 for r in batch.rowids if r <= last)
            events = batch.events[:n]
            bid = batch_id_for(self._device, events)
            batch = _Batch(batch.rowids[:n], events, bid, encode_batch(bid, self._device, events))
        try:
            tmp = f"{self._cut_file}.tmp"
            Path(tmp).write_text(f"{batch.rowids[-1]}\n")
            os.replace(tmp, self._cut_file)
        except OSError as exc:  # only the batch id of a re-send is at stake, never an event
            log.debug("uplink: cannot record the batch cut in %s: %s", self._cut_file, exc)
        return batch

    def _abort_connection(self) -> None:
        pass  # the thread polls in 0.1 s steps and sees the stop flag itself

    def _close(self) -> None:
        self._drop_client(graceful=True)

    # -- the connection -----------------------------------------------------------------------------------
    def _connect(self) -> Outcome | None:
        """None when connected (CONNACK success), else the Outcome of the failed attempt."""
        if self._up and self._client is not None and self._client.is_connected():
            return None
        client = self._client or self._new_client()
        self._up, self._why = False, ""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._expiry
        props.MaximumPacketSize = MAX_PACKET
        try:
            client.connect(self._host, self._port, self._keepalive, clean_start=False, properties=props)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            return Outcome("retry", _broker_words(describe_error(exc, has_client_cert=True)))
        deadline = time.monotonic() + self._timeout
        while not self._up:
            if self._why.startswith("refused"):
                kind = "permanent" if "authori" in self._why or "identifier" in self._why else "retry"
                return Outcome(kind, f"MQTT broker {self._why}")
            if self._stop.is_set():
                return Outcome("retry", "stopping")
            if time.monotonic() > deadline:
                return Outcome("retry", f"no CONNACK from the MQTT broker within {self._timeout:g}s")
            rc = _loop(client, 0.1, self)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not self._up and not self._why.startswith("refused"):
                return Outcome("retry", self._lost(before_connack=True))
        return None

    def _new_client(self) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self._device,
                        protocol=MQTTProtocolVersion.MQTTv5)
        c.tls_set_context(self._ctx)
        c.connect_timeout = self._timeout
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_log = self._on_log
        self._client = c
        return c

    def _drop_client(self, graceful: bool = False) -> None:
        c, self._client = self._client, None
        self._up, self._pending = False, None
        self._acks.clear()
        if c is None:
            return
        try:
            c.disconnect()  # a DISCONNECT (the session stays: its expiry came with CONNECT), socket closed
            c.loop(0.1 if graceful else 0.0)
        except Exception:  # closing a dead connection must not fail stop()
            log.debug("uplink: MQTT close failed", exc_info=True)
        self._update(connected=False)

    def _pump(self, timeout: float) -> bool:
        """Run paho's network loop once; whether the connection is still up."""
        c = self._client
        if c is None:
            return False
        if _loop(c, timeout, self) != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._up = False
        return self._up

    def _lost(self, before_connack: bool = False) -> str:
        why = self._why or "connection lost"
        alert = next((a for a in _CLIENT_CERT_ALERTS if a in why), None)
        if alert is not None:
            return f"MQTT broker refused our client certificate: {alert}"
        if before_connack:
            # TLS 1.3 verifies the client certificate after the handshake: the broker's alert and its
            # close race our CONNECT, and often only the close is seen
            return ("MQTT broker closed the connection before CONNACK (our client certificate refused? "
                    f"the broker's log says): {why}")
        return f"MQTT broker: {why}"

    # -- paho callbacks (run inside client.loop(), in the uplink thread) -----------------------------------
    def _on_connect(self, client: mqtt.Client, _ud: Any, flags: mqtt.ConnectFlags, rc: ReasonCode,
                    _props: Properties | None) -> None:
        if rc.is_failure:
            self._why = f"refused the connection: CONNACK 0x{rc.value:02x} {rc.getName()}"
            return
        self._up = True
        self._update(connected=True)
        log.info("uplink: connected to the MQTT broker %s:%d (session present: %s)", self._host, self._port,
                 flags.session_present)
        if self._sink is not None:
            client.subscribe(self._reg_topic, options=SubscribeOptions(qos=1))

    def _on_disconnect(self, _c: mqtt.Client, _ud: Any, _flags: mqtt.DisconnectFlags, rc: ReasonCode,
                       _props: Properties | None) -> None:
        self._up = False
        if rc.is_failure and not self._why:
            self._why = f"disconnected: 0x{rc.value:02x} {rc.getName()}"
        self._update(connected=False)

    def _on_publish(self, _c: mqtt.Client, _ud: Any, mid: int, rc: ReasonCode, _props: Properties | None
                    ) -> None:
        if len(self._acks) < 64:  # only the one pending message matters; stale ones are dropped later
            self._acks[mid] = (rc.value, rc.getName())

    def _on_log(self, _c: mqtt.Client, _ud: Any, level: int, buf: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and not self._why:  # the first error says why; later ones echo it
            self._why = buf[:300]

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            try:
                topic = msg.topic
            except UnicodeDecodeError:  # MQTT requires UTF-8 topics; a broker that breaks it is ignored
                log.warning("uplink: the MQTT broker sent a message with a topic that is not UTF-8; ignored")
                return
            if topic != self._reg_topic or self._sink is None:
                return
            self._update(registry_messages=self._stats["registry_messages"] + 1)
            if not msg.payload:
                return  # an empty retained message only clears the retained document
            self._sink(bytes(msg.payload))
        except Exception:  # a broker's message, or a bug in the sink, must not end the uplink
            log.exception("uplink: registry message from the MQTT broker not handled")


def _loop(client: mqtt.Client, timeout: float, up: MqttUplink) -> MQTTErrorCode:
    """client.loop(), with whatever a malformed packet makes paho raise turned into a lost connection."""
    try:
        return client.loop(timeout)
    except Exception as exc:  # hostile or broken broker bytes: drop the connection, keep the thread
        up._why = up._why or f"malformed packet from the MQTT broker: {type(exc).__name__}: {str(exc)[:200]}"
        try:
            client.disconnect()
        except Exception:
            log.debug("uplink: MQTT disconnect after a malformed packet failed", exc_info=True)
        return MQTTErrorCode.MQTT_ERR_PROTOCOL


def _publish_props(batch_id: str) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = "application/json"
    props.UserProperty = [("content-encoding", "gzip"), ("batch-id", batch_id), ("schema", str(WIRE_SCHEMA))]
    return props


def _broker_words(text: str) -> str:
    return text.replace("collector", "MQTT broker")
