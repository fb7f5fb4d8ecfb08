"""The MQTT uplink without a broker: PUBACK reason codes to outcomes, topic-safe device ids, what the
constructor refuses, the transport chosen from the config, check-config refusing a bad MQTT uplink, and
hostile broker messages that never raise. (Against a real mosquitto: tests/integration/test_mqtt_*.py.)"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from support.pki import Pki, make_pki
from tunnelwatch.cli import main
from tunnelwatch.config.runconfig import parse_config
from tunnelwatch.report.events import make_event
from tunnelwatch.report.links import build_uplink
from tunnelwatch.report.mqtt import MqttUplink
from tunnelwatch.report.mqttwire import events_topic, judge_puback, registry_topic, topic_safe
from tunnelwatch.report.spool import Spool
from tunnelwatch.report.uplink import Uplink
from tunnelwatch.report.wire import batch_id_for


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    sp = Spool(str(tmp_path / "spool.db"))
    try:
        yield sp
    finally:
        sp.close()


@pytest.mark.parametrize(("code", "kind"), [
    (0x00, "ok"), (0x10, "ok"),  # success; no matching subscribers (the broker still took it)
    (0x87, "permanent"), (0x90, "permanent"),  # not authorized, topic name invalid: configuration
    (0x95, "smaller"), (0x99, "reject"),  # packet too large; payload format invalid
    (0x80, "retry"), (0x83, "retry"), (0x97, "retry"),  # unspecified, implementation specific, quota
])
def test_puback_reason_codes(code: int, kind: str) -> None:
    out = judge_puback(code, "name", "tunnelwatch/v1/x/events")
    assert out.kind == kind
    if kind == "permanent":
        assert "tunnelwatch/v1/x/events" in out.message and f"0x{code:02x}" in out.message


def test_topics_and_device_ids() -> None:
    assert events_topic("cpe-1") == "tunnelwatch/v1/cpe-1/events"
    assert registry_topic("cpe-1") == "tunnelwatch/v1/cpe-1/registry"
    assert topic_safe("cpe-1") and topic_safe("0123456789abcdef")
    for bad in ("", "a/b", "+", "a#", "x\0", "line\nbreak", "x" * 129):
        assert not topic_safe(bad), bad


def test_constructor_refusals(pki: Pki, spool: Spool) -> None:
    ok = {"url": "mqtts://127.0.0.1:8883", "ca_file": str(pki.ca), "client_cert": str(pki.client_cert),
          "client_key": str(pki.client_key), "device_id": "cpe-1"}
    assert isinstance(MqttUplink(spool, **ok), Uplink)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs client_cert and client_key"):
        MqttUplink(spool, **{**ok, "client_cert": None, "client_key": None})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot be an MQTT topic level"):
        MqttUplink(spool, **{**ok, "device_id": "a/+"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be mqtts://"):
        MqttUplink(spool, **{**ok, "url": "https://127.0.0.1/"})  # type: ignore[arg-type]


def test_the_config_chooses_the_transport(pki: Pki, spool: Spool) -> None:
    pki.client_key.chmod(0o600)
    mq = parse_config(f"report: {{uplink: {{url: 'mqtts://127.0.0.1', ca_file: '{pki.ca}', "
                      f"client_cert: '{pki.client_cert}', client_key: '{pki.client_key}'}}}}\n").report.uplink
    https = parse_config("report: {uplink: {url: 'https://127.0.0.1'}}\n").report.uplink
    assert type(build_uplink(spool, mq, "cpe-1")) is MqttUplink
    assert type(build_uplink(spool, https, "cpe-1")) is Uplink


def test_check_config_refuses_a_bad_mqtt_uplink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "tunnelwatch.yaml"
    cfg.write_text("report:\n  uplink:\n    url: 'mqtts://broker.example'\n    keepalive: 1\n")
    assert main(["check-config", str(cfg)]) == 78
    err = capsys.readouterr().err
    assert f"{cfg}:3:10: report.uplink.url mqtts:// needs client_cert and client_key" in err
    assert f"{cfg}:4:16: report.uplink.keepalive must be" in err


def _message(topic: str, payload: bytes) -> mqtt.MQTTMessage:
    m = mqtt.MQTTMessage(topic=topic.encode())
    m.payload = payload
    return m


def test_hostile_broker_messages_never_raise(pki: Pki, spool: Spool, caplog: pytest.LogCaptureFixture
                                             ) -> None:
    got: list[bytes] = []

    def sink(body: bytes) -> None:
        got.append(body)
        if body == b"boom":
            raise RuntimeError("a bug in the sink")

    up = MqttUplink(spool, url="mqtts://127.0.0.1", ca_file=str(pki.ca), client_cert=str(pki.client_cert),
                    client_key=str(pki.client_key), device_id="cpe-1", registry_sink=sink)
    on_message = up._on_message
    with caplog.at_level(logging.ERROR):
        on_message(None, None, _message("tunnelwatch/v1/cpe-2/registry", b"other box"))  # type: ignore[arg-type]
        on_message(None, None, _message("tunnelwatch/v1/cpe-1/events", b"\x00" * 10))  # type: ignore[arg-type]
        on_message(None, None, _message("tunnelwatch/v1/cpe-1/registry", b""))  # type: ignore[arg-type]
        on_message(None, None, _message("tunnelwatch/v1/cpe-1/registry", b"boom"))  # type: ignore[arg-type]
        on_message(None, None, _message("tunnelwatch/v1/cpe-1/registry", b"\xff" * 5000))  # type: ignore[arg-type]
        broken = _message("tunnelwatch/v1/cpe-1/registry", b"x")
        broken.payload = None  # type: ignore[assignment]  # whatever paho hands over, nothing escapes
        on_message(None, None, broken)  # type: ignore[arg-type]
    assert got == [b"boom", b"\xff" * 5000]  # only this box's registry topic, not the empty clear
    assert "registry message from the MQTT broker not handled" in caplog.text
    assert up.stats()["registry_messages"] == 4



def test_a_restarted_sender_cuts_its_first_batch_where_the_lost_one_ended(pki: Pki, spool: Spool,
                                                                          tmp_path: Path) -> None:
    events = [make_event("daemon_stopped", device_id="cpe-1", reason=f"r{i}", uptime_s=1.0)
              for i in range(10)]
    spool.put_many(events[:4])
    cut = tmp_path / "spool.db.cut"

    def sender() -> MqttUplink:
        return MqttUplink(spool, url="mqtts://127.0.0.1", ca_file=str(pki.ca),
                          client_cert=str(pki.client_cert), client_key=str(pki.client_key),
                          device_id="cpe-1", cut_file=str(cut))

    first = sender()
    b1 = first._same_cut(Uplink._next_batch(first))  # type: ignore[arg-type]
    assert len(b1.events) == 4 and cut.read_text() == f"{b1.rowids[-1]}\n"
    # the process dies before the PUBACK; six more events are spooled before the restart
    spool.put_many(events[4:])
    again = sender()
    b2 = again._same_cut(Uplink._next_batch(again))  # type: ignore[arg-type]
    assert b2.batch_id == b1.batch_id == batch_id_for("cpe-1", events[:4]) and b2.body == b1.body
    spool.ack(b2.rowids)
    b3 = again._same_cut(Uplink._next_batch(again))  # type: ignore[arg-type]
    assert b3.events == events[4:]  # past the old cut: the whole rest
    cut.write_text("garbage")  # a damaged cut file costs nothing but the cut
    assert again._same_cut(Uplink._next_batch(again)).events == events[4:]  # type: ignore[arg-type]


def _varint(n: int) -> bytes:
    out = b""
    while True:
        n, byte = n >> 7, n & 0x7F
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _packet(head: int, body: bytes) -> bytes:
    return bytes([head]) + _varint(len(body)) + body


def _publish(topic: bytes, payload: bytes, props: bytes = b"\x00") -> bytes:
    return _packet(0x30, len(topic).to_bytes(2, "big") + topic + props + payload)


REG = b"tunnelwatch/v1/cpe-1/registry"
CONNACK = _packet(0x20, b"\x00\x00\x00")
HOSTILE = {
    "topic not UTF-8": _publish(b"tunnelwatch/v1/cpe-1/\xff\xfe", b"x"),
    "properties longer than the packet": _publish(REG, b"", props=b"\x64\x01"),
    "remaining length of five bytes": b"\x30\xff\xff\xff\xff\x7f" + b"\x00" * 16,
    "PUBACK for a message never sent, with junk": _packet(0x40, b"\x03\xe7\x00\x05\xff\xff\xff\xff\xff"),
    "reserved packet type": b"\xf0\x02\xff\xff" * 8,
    "a second CONNACK": CONNACK,
    "registry that is not JSON": _publish(REG, b"\xff{not json"),
    "packet longer than Maximum Packet Size": b"\x30" + _varint(3 * 1024 * 1024) + b"\x00" * 64,
    "SUBACK with junk": _packet(0x90, b"\x00\x01\x00\xfe\xfe"),
}


class HostileBroker:
    """A TLS listener on 127.0.0.1 that answers every CONNECT with a CONNACK and then one hostile packet."""

    def __init__(self, pki: Pki, packet: bytes) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.server_cert, pki.server_key)
        ctx.load_verify_locations(pki.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.sock = ctx.wrap_socket(socket.create_server(("127.0.0.1", 0)), server_side=True)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.packet = packet
        self.connects = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (OSError, ssl.SSLError):
                continue
            with conn:
                try:
                    conn.settimeout(2)
                    conn.recv(4096)  # CONNECT
                    self.connects += 1
                    conn.sendall(CONNACK + self.packet)
                    while not self.stop.is_set() and conn.recv(4096):  # until the client gives up
                        pass
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_broker_never_stops_the_uplink(name: str, pki: Pki, spool: Spool,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    spool.put_many([make_event("daemon_stopped", device_id="cpe-1", reason="x", uptime_s=1.0)])
    got: list[bytes] = []
    srv = HostileBroker(pki, HOSTILE[name])
    up = MqttUplink(spool, url=f"mqtts://127.0.0.1:{srv.port}", ca_file=str(pki.ca),
                    client_cert=str(pki.client_cert), client_key=str(pki.client_key), device_id="cpe-1",
                    timeout=0.5, backoff_base=0.01, backoff_max=0.05, idle_poll=0.05,
                    registry_sink=got.append)
    try:
        with caplog.at_level(logging.WARNING):
            up.start()
            # a second connection means the first one was dropped (or timed out) and the thread carried on
            assert up.wait_for(lambda s: s["attempts"] >= 3 and srv.connects >= 2, 20), \
                (up.stats(), srv.connects)
            assert up._thread is not None and up._thread.is_alive()
    finally:
        up.stop()
        srv.close()
    assert up._thread is not None and not up._thread.is_alive()
    assert spool.backlog() == 1 and up.stats()["sent_events"] == 0  # nothing acked without its PUBACK
    assert "unexpected error" not in caplog.text and "Traceback" not in caplog.text
    assert all(isinstance(b, bytes) for b in got)
    if name == "registry that is not JSON":  # handed on as it came: verifying it is the syncer's job
        assert b"\xff{not json" in got
