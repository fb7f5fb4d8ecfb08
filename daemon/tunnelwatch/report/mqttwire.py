"""The MQTT side of the uplink's wire contract (docs/uplink.md, MQTT), shared by the box's MQTT uplink and
anything on the ISP side that wants the same names: the topic layout, which device ids can be a topic
level, and what each PUBACK reason code means for the sender. No paho import here."""

from __future__ import annotations

from typing import Final

from tunnelwatch.report.wire import Outcome

TOPIC_ROOT: Final = "tunnelwatch/v1"
#: CONNECT's Maximum Packet Size: a broker must not send us anything bigger (a registry is well below)
MAX_PACKET: Final = 2 * 1024 * 1024
_NOT_AUTHORIZED: Final = frozenset({0x87, 0x90})  # Not authorized, Topic Name invalid: configuration


def events_topic(device_id: str) -> str:
    """The topic a box publishes its event batches on."""
    return f"{TOPIC_ROOT}/{device_id}/events"


def registry_topic(device_id: str) -> str:
    """The (retained) topic the ISP publishes a box's signed registry document on."""
    return f"{TOPIC_ROOT}/{device_id}/registry"


def topic_safe(device_id: str) -> bool:
    """Whether a device id can be one MQTT topic level (no wildcards, separators or NUL)."""
    return 0 < len(device_id) <= 128 and not any(c in device_id for c in "+#/\0") and device_id.isprintable()


def judge_puback(code: int, name: str, topic: str) -> Outcome:
    """Map a PUBACK reason code to the Outcome the sender settles the batch with."""
    if code < 0x80:  # 0x00 success, 0x10 no matching subscribers: the broker took it
        return Outcome("ok", f"PUBACK {name}")
    text = f"broker refused the batch: PUBACK 0x{code:02x} {name}"
    if code in _NOT_AUTHORIZED:
        return Outcome("permanent", f"{text} on {topic} (the broker ACL must let this box's certificate "
                                    "publish there: its CN is normally the device id)")
    if code == 0x95:  # Packet too large
        return Outcome("smaller", text)
    if code == 0x99:  # Payload format invalid: this batch, not the link
        return Outcome("reject", text)
    return Outcome("retry", text)  # unspecified, implementation specific, quota exceeded, ...
