"""Which uplink a box reports through, by the scheme of report.uplink.url: https:// is the HTTPS collector
(report/uplink.py), mqtts:// an MQTT 5 broker (report/mqtt.py). Both drain the same spool with the same
batch ids and the same stats, so the reporter does not care which it got. paho-mqtt is imported only when
the MQTT uplink is configured."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tunnelwatch.config.reportconfig import UplinkConfig
from tunnelwatch.report.uplink import SpoolLike, Uplink


def build_uplink(spool: SpoolLike, up: UplinkConfig, device_id: str,
                 registry_sink: Callable[[bytes], None] | None = None, cut_file: Path | None = None
                 ) -> Uplink:
    """The configured uplink (not started); raise ValueError/OSError on a bad url, CA or client key.
    MQTT only: registry_sink receives the registry documents the broker pushes; cut_file keeps the cut
    of the batch in flight so that a restarted box re-sends it under the same batch id."""
    if up.url is None:
        raise ValueError("no report.uplink.url")
    if up.transport == "mqtt":
        from tunnelwatch.report.mqtt import MqttUplink

        return MqttUplink(spool, url=up.url, ca_file=_s(up.ca_file), client_cert=_s(up.client_cert),
                          client_key=_s(up.client_key), device_id=device_id, batch_size=up.batch_size,
                          max_rate=up.max_rate, keepalive=up.keepalive, session_expiry=up.session_expiry,
                          unrouted=up.unrouted, registry_sink=registry_sink, cut_file=_s(cut_file))
    return Uplink(spool, url=up.url, ca_file=_s(up.ca_file), client_cert=_s(up.client_cert),
                  client_key=_s(up.client_key), token=up.token, batch_size=up.batch_size,
                  max_rate=up.max_rate, device_id=device_id)


def _s(p: Path | None) -> str | None:
    return str(p) if p is not None else None
