"""The event model reported upward: kinds, fields, validation and the versioned JSON schema.

One table (`KIND_SPECS`) is the single source of truth: `make_event` validates against it with plain Python
(cheap, no jsonschema at run time) and `schema()` renders it as the JSON Schema checked in as
docs/events.schema.json. Events carry metadata only: unknown fields, bytes values, control characters
and long strings are refused, so packet payload cannot ride along by accident.

Ordering: every process is one *stream* (a random id, renewed after fork) numbering its events with
`seq` from 0, so (stream, seq) orders and de-duplicates events per source even with several workers.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from tunnelwatch.config.runconfig import MODES
from tunnelwatch.verdict import CONFIDENCES, KLASSES

SCHEMA_VERSION: Final = 1
KINDS: Final[tuple[str, ...]] = (
    "flow_tagged", "flow_blocked", "registered_tunnel_used", "policy_changed", "config_changed",
    "config_rejected", "registry_changed", "registry_rejected", "daemon_started", "daemon_stopped",
    "heartbeat", "new_flow_limit", "registry_stale",
)
ACTIONS: Final[tuple[str, ...]] = ("allow", "report", "block")
MAX_INT: Final = 2**63 - 1

# Patterns are written so that Python's re and ECMA-262 (JSON Schema) read them the same way.
_TEXT = "^[^\\u0000-\\u001f\\u007f]*$"  # any text without control characters
_TOKEN = "^[!-~]+$"  # printable ASCII, no spaces: addresses (or their pseudonyms), ids, paths' names
_NAME = "^[a-z0-9][a-z0-9_.+-]*$"
KEY_PATTERN = "^[a-z][a-z0-9_]{0,31}$"
_MAX_FLOAT: Final = sys.float_info.max
TIME_PATTERN = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z$"


class EventError(ValueError):
    """An event that does not fit the schema (unknown kind or field, wrong type, payload-like value)."""


@dataclass(frozen=True, slots=True)
class Field:
    """One field's type and bounds; `type` is one of str, int, num, bool, time, strs, counts, nums, modes
    (a map of short names to one of `enum`)."""

    type: str
    doc: str
    max_len: int = 0
    pattern: str = ""
    enum: tuple[str, ...] = ()
    items: int = 0  # max entries of a list or map
    minimum: int = 0
    maximum: int = MAX_INT
    rx: re.Pattern[str] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.pattern:
            object.__setattr__(self, "rx", re.compile(self.pattern))


def _text(doc: str, n: int) -> Field:
    return Field("str", doc, max_len=n, pattern=_TEXT)


def _count(doc: str) -> Field:
    return Field("int", doc)


FIELD_SPECS: Final[dict[str, Field]] = {
    # envelope
    "schema": Field("int", "schema version of this event", minimum=SCHEMA_VERSION, maximum=SCHEMA_VERSION),
    "id": Field("str", "unique event id (uuid4, 32 hex digits)", max_len=32, pattern="^[0-9a-f]{32}$"),
    "kind": Field("str", "event kind", enum=KINDS),
    "stream": Field("str", "emitting process incarnation (random, 16 hex digits)", max_len=16,
                     pattern="^[0-9a-f]{16}$"),
    "seq": Field("int", "position in the stream, from 0 without gaps"),
    "device_id": Field("str", "the reporting box", max_len=128, pattern=_TOKEN),
    "ts": Field("time", "when it happened, RFC 3339 UTC with microseconds"),
    # flows: metadata only
    "src": Field("str", "initiator address (or its pseudonym); absent when omitted by privacy settings",
                  max_len=64, pattern=_TOKEN),
    "dst": Field("str", "responder address (or its pseudonym)", max_len=64, pattern=_TOKEN),
    "sport": Field("int", "initiator port (0 when the transport has none)", maximum=65535),
    "dport": Field("int", "responder port", maximum=65535),
    "transport": Field("str", "tcp, udp, icmp, esp, gre, proto-N ...", max_len=16, pattern=_NAME),
    "klass": Field("str", "coarse class", enum=KLASSES),
    "protocol": Field("str", "detected protocol (openvpn, wireguard, sip ...)", max_len=32, pattern=_NAME),
    "confidence": Field("str", "confirmed, heuristic, list or port", enum=CONFIDENCES),
    "evidence": Field("strs", "short protocol facts, never payload", max_len=128, pattern=_TEXT, items=16),
    "action": Field("str", "what the policy did", enum=ACTIONS),
    "reason": _text("why the policy did it", 256),
    "bulk": Field("bool", "a bulk-VoIP decision"),
    "packets": _count("packets seen by the daemon (both directions)"),
    "bytes": _count("IP bytes seen by the daemon (both directions)"),
    "registration_id": Field("str", "the registry entry that covers the flow", max_len=64, pattern=_TOKEN),
    "first_seen": Field("time", "the flow's first packet"),
    "last_seen": Field("time", "the flow's last packet seen by the daemon"),
    # configuration, policy, registry
    "path": _text("file concerned", 256),
    "digest": Field("str", "sha256 of the file, hex", max_len=64, pattern="^[0-9a-f]{64}$"),
    "summary": _text("one-line human summary", 256),
    "changes": Field("strs", "what changed, one short line each", max_len=128, pattern=_TEXT, items=32),
    "errors": Field("strs", "file:line:col: message, one per problem", max_len=256, pattern=_TEXT, items=32),
    "source": Field("str", "where the registry came from", enum=("file", "sync")),
    "version": Field("int", "registry document version"),
    "current_version": Field("int", "registry version kept in force"),
    "entries": _count("registrations in force"),
    "expires": Field("time", "when the registry in force stops being valid (its signed document says)"),
    # daemon life
    "software": Field("str", "tunnelwatch version", max_len=64, pattern=_TOKEN),
    "mode": Field("str", "capture mode (nfqueue, pcap ...)", max_len=32, pattern=_NAME),
    "queues": Field("int", "NFQUEUE workers", maximum=65535),
    "warnings": Field("strs", "conditions met at start (e.g. a corrupt spool moved aside)", max_len=256,
                       pattern=_TEXT, items=16),
    "uptime_s": Field("num", "seconds since the daemon started"),
    # the configuration in force (daemon_started, heartbeat): the ISP sees a box switched to monitor
    "config_digest": Field("str", "sha256 (hex) of the effective configuration after drop-ins, canonical "
                           "JSON; secrets enter it only hashed", max_len=64, pattern="^[0-9a-f]{64}$"),
    "policy_default": Field("str", "policy mode of a klass or protocol without a rule of its own",
                            enum=MODES),
    "policy_modes": Field("modes", "policy mode in force per klass", enum=MODES, items=16),
    "protocol_modes": Field("modes", "policy mode per protocol that has a rule of its own", enum=MODES,
                            items=64),
    # heartbeat: cumulative since start, so a lost heartbeat loses no counts
    "flows_by_klass": Field("counts", "decided flows per klass", items=16),
    "flows_by_action": Field("counts", "decided flows per action", items=8),
    "packets_queued": _count("packets received from NFQUEUE"),
    "queue_drops": _count("packets the kernel dropped or bypassed for a full queue"),
    "verdict_latency_ms": Field("nums", "verdict latency summary: p50, p99, max", items=8),
    "backlog": _count("events waiting in the spool"),
    "spool_dropped": _count("events dropped because the spool was full"),
    "spool_expired": _count("events deleted unsent by the retention limit"),
    "classifier_errors": _count("classifier calls that raised"),
    # accountable fail-open (kernel counters, cumulative since the rules were installed)
    "bypassed_packets": _count("packets sent to the queue that passed without a verdict (fail-open)"),
    "bypassed_flows": _count("connections with at least one packet passed without a verdict"),
    "flood_dropped": _count("new connections dropped by the per-host new-connection limit"),
    "flows_evicted": _count("flows forgotten because the daemon's flow table was full"),
    "flows_unreported": _count("tagged flows below report.min_confidence: counted, not reported one by one"),
    # the new-connection limit
    "dropped": _count("new connections dropped since the previous event of this kind"),
    "limit": Field("int", "new connections per second allowed per host", maximum=1_000_000),
    "hosts": Field("int", "hosts over the limit when it was read", maximum=1_000_000),
}

ENVELOPE: Final = ("schema", "id", "kind", "stream", "seq", "device_id", "ts")
_FLOW_REQ: Final = ("sport", "dport", "transport", "klass", "protocol", "confidence", "action")
_FLOW_OPT: Final = ("src", "dst", "evidence", "reason", "bulk", "packets", "bytes", "registration_id",
                    "first_seen", "last_seen")

_CONFIG_OPT: Final = ("config_digest", "policy_default", "policy_modes", "protocol_modes")


@dataclass(frozen=True, slots=True)
class _Kind:
    doc: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    enums: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # narrower enums for this kind


KIND_SPECS: Final[dict[str, _Kind]] = {
    "flow_tagged": _Kind("a flow was classified and the policy decided", _FLOW_REQ, _FLOW_OPT),
    "flow_blocked": _Kind("a flow was blocked", _FLOW_REQ, _FLOW_OPT, {"action": ("block",)}),
    "registered_tunnel_used": _Kind(
        "a tunnel covered by a registration was used", (*_FLOW_REQ, "registration_id"),
        tuple(f for f in _FLOW_OPT if f != "registration_id"), {"action": ("allow", "report")}),
    "policy_changed": _Kind("the policy in force changed", ("summary",), ("digest", "changes")),
    "config_changed": _Kind("a new configuration was applied", ("path", "digest"), ("summary", "changes")),
    "config_rejected": _Kind("a configuration was refused; the previous one stays", ("path", "errors"),
                             ("digest",)),
    "registry_changed": _Kind("a new registry was applied", ("source", "entries"), ("version", "digest")),
    "registry_rejected": _Kind("a registry was refused; the previous one stays", ("source", "reason"),
                               ("version", "current_version", "digest")),
    "daemon_started": _Kind("the daemon started", ("software", "mode"),
                            ("queues", "warnings", *_CONFIG_OPT)),
    "daemon_stopped": _Kind("the daemon stopped", ("reason", "uptime_s"), ()),
    "heartbeat": _Kind("periodic counters", ("uptime_s", "flows_by_klass", "packets_queued", "queue_drops"),
                       ("flows_by_action", "verdict_latency_ms", "backlog", "spool_dropped", "spool_expired",
                        "classifier_errors", "bypassed_packets", "bypassed_flows", "flood_dropped",
                        "flows_evicted", "flows_unreported", *_CONFIG_OPT)),
    "new_flow_limit": _Kind("one LAN host opened new connections faster than the limit: the excess was "
                            "dropped before the queue", ("dropped", "limit"), ("src", "hosts")),
    "registry_stale": _Kind("the synced registry in force is near or past the expiry its document set: "
                            "the ISP has not sent a newer one", ("reason", "expires"), ("version",)),
}


class _Stream:
    """This process's stream id and next seq; renewed in a forked child so streams never share seqs."""

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        self.lock = threading.Lock()
        self.id = os.urandom(8).hex()
        self.counter = itertools.count()

    def next(self) -> tuple[str, int]:
        with self.lock:
            return self.id, next(self.counter)


_stream: Final = _Stream()
os.register_at_fork(after_in_child=_stream.renew)


def rfc3339(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC with microseconds (the form every event time uses)."""
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise EventError(f"time must be unix seconds, not {type(ts).__name__}")
    try:
        ts = float(ts)  # an int too large for a float raises here, not in isfinite()
    except OverflowError as e:
        raise EventError("time is out of range") from e
    if not math.isfinite(ts) or ts < 0:
        raise EventError(f"time {ts!r} is not a finite non-negative number")
    try:
        return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except (OverflowError, OSError, ValueError) as e:
        raise EventError(f"time {ts!r} is out of range") from e


def _check_str(name: str, f: Field, v: object) -> None:
    if not isinstance(v, str):
        raise EventError(f"{name}: expected a string, got {type(v).__name__}")
    if f.enum:
        if v not in f.enum:
            raise EventError(f"{name}: {v[:40]!r} is not one of {', '.join(f.enum)}")
        return
    if not v or (f.max_len and len(v) > f.max_len):
        raise EventError(f"{name}: length {len(v)} outside 1..{f.max_len}")
    # fullmatch: with match(), "$" also matches before a trailing newline, letting "\n" through
    if f.rx is not None and f.rx.fullmatch(v) is None:
        raise EventError(f"{name}: {v[:40]!r} has characters not allowed here")


def _check_int(name: str, f: Field, v: object) -> None:
    # bool is an int in Python but not in JSON Schema
    if not isinstance(v, int) or isinstance(v, bool):
        raise EventError(f"{name}: expected an integer, got {type(v).__name__}")
    if not f.minimum <= v <= f.maximum:
        raise EventError(f"{name}: {v} outside {f.minimum}..{f.maximum}")


def _check_num(name: str, v: object) -> None:
    # an int beyond float range is refused too: math.isfinite() would raise OverflowError on it
    if not isinstance(v, int | float) or isinstance(v, bool) or v < 0 or v > _MAX_FLOAT \
            or not math.isfinite(v):
        raise EventError(f"{name}: expected a finite non-negative number, got {v!r:.40}")


def _check(name: str, f: Field, v: object) -> object:
    """Validate one value; return it normalised (times to RFC 3339, lists and maps copied)."""
    if isinstance(v, bytes | bytearray | memoryview):
        raise EventError(f"{name}: bytes are never reported (events carry metadata, not payload)")
    t = f.type
    if t == "str":
        _check_str(name, f, v)
        return v
    if t == "int":
        _check_int(name, f, v)
        return v
    if t == "num":
        _check_num(name, v)
        return v
    if t == "bool":
        if not isinstance(v, bool):
            raise EventError(f"{name}: expected true or false, got {type(v).__name__}")
        return v
    if t == "time":
        if isinstance(v, str):
            if len(v) != 27 or re.fullmatch(TIME_PATTERN, v) is None:
                raise EventError(f"{name}: {v[:40]!r} is not RFC 3339 UTC with microseconds")
            return v
        if isinstance(v, int | float) and not isinstance(v, bool):
            return rfc3339(v)
        raise EventError(f"{name}: expected unix seconds or an RFC 3339 string, got {type(v).__name__}")
    if t == "strs":
        if not isinstance(v, list | tuple):
            raise EventError(f"{name}: expected a list of strings, got {type(v).__name__}")
        if len(v) > f.items:
            raise EventError(f"{name}: {len(v)} entries, at most {f.items}")
        for i, s in enumerate(v):
            _check(f"{name}[{i}]", Field("str", "", max_len=f.max_len, rx=f.rx), s)
        return list(v)
    if t in ("counts", "nums"):
        if not isinstance(v, Mapping):
            raise EventError(f"{name}: expected a map, got {type(v).__name__}")
        if len(v) > f.items:
            raise EventError(f"{name}: {len(v)} entries, at most {f.items}")
        for k, x in v.items():
            if not isinstance(k, str) or re.fullmatch(KEY_PATTERN, k) is None:
                raise EventError(f"{name}: key {k!r:.40} is not a short lowercase name")
            if t == "counts":
                _check_int(f"{name}.{k}", FIELD_SPECS["packets"], x)
            else:
                _check_num(f"{name}.{k}", x)
        return dict(v)
    if t == "modes":
        if not isinstance(v, Mapping):
            raise EventError(f"{name}: expected a map, got {type(v).__name__}")
        if len(v) > f.items:
            raise EventError(f"{name}: {len(v)} entries, at most {f.items}")
        for k, x in v.items():
            if not isinstance(k, str) or re.fullmatch(KEY_PATTERN, k) is None:
                raise EventError(f"{name}: key {k!r:.40} is not a short lowercase name")
            if x not in f.enum:
                raise EventError(f"{name}.{k}: {str(x)[:40]!r} is not one of {', '.join(f.enum)}")
        return dict(v)
    raise AssertionError(f"unknown field type {t}")  # pragma: no cover - the table is static


def _check_fields(kind: str, fields: Mapping[str, object], out: dict[str, object]) -> None:
    spec = KIND_SPECS[kind]
    allowed = set(spec.required) | set(spec.optional)
    for name, v in fields.items():
        if name not in allowed:
            raise EventError(f"{kind}: field {name!r:.40} is not allowed in this kind")
        if v is None:
            continue  # None = absent, so privacy "omit" can pass src=None
        f = FIELD_SPECS[name]
        narrow = spec.enums.get(name)
        if narrow is not None:
            f = Field(f.type, f.doc, enum=narrow)
        out[name] = _check(name, f, v)
    missing = [n for n in spec.required if n not in out]
    if missing:
        raise EventError(f"{kind}: missing field(s) {', '.join(missing)}")


def make_event(kind: str, *, device_id: str, ts: float | None = None, **fields: object) -> dict[str, object]:
    """A new validated event: adds schema version, id, stream, seq, device_id and ts; raises EventError."""
    if kind not in KIND_SPECS:
        raise EventError(f"unknown event kind {kind!r:.40}")
    _check("device_id", FIELD_SPECS["device_id"], device_id)
    stream, seq = _stream.next()
    ev: dict[str, object] = {
        "schema": SCHEMA_VERSION, "id": uuid.uuid4().hex, "kind": kind, "stream": stream, "seq": seq,
        "device_id": device_id, "ts": rfc3339(time.time() if ts is None else ts),
    }
    _check_fields(kind, fields, ev)
    return ev


def validate_event(ev: object) -> None:
    """Check a complete event (e.g. read back or received); raise EventError when it does not fit."""
    if not isinstance(ev, Mapping):
        raise EventError(f"an event is a JSON object, not {type(ev).__name__}")
    kind = ev.get("kind")
    if not isinstance(kind, str) or kind not in KIND_SPECS:
        raise EventError(f"unknown event kind {kind!r:.40}")
    for name in ENVELOPE:
        if name not in ev:
            raise EventError(f"{kind}: missing field {name}")
        _check(name, FIELD_SPECS[name], ev[name])
        if FIELD_SPECS[name].type == "time" and not isinstance(ev[name], str):
            raise EventError(f"{name}: must be an RFC 3339 string in a complete event")
    rest = {k: v for k, v in ev.items() if k not in ENVELOPE}
    for k, v in rest.items():
        if v is None or (k in FIELD_SPECS and FIELD_SPECS[k].type == "time" and not isinstance(v, str)):
            raise EventError(f"{kind}: field {k!r:.40} must be a value of its type in a complete event")
    _check_fields(kind, rest, {})
