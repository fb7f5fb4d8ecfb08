"""The status snapshot as Prometheus metrics (text exposition 0.0.4), named and documented by convention.

Counters end in `_total`, times are `_seconds` / `_timestamp_seconds`, every family has a help text that
says what it counts, labels carry only bounded identifiers (a display string such as the registry's
version text is not a label). `promtool check metrics` finds nothing to say about the output (tested).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Final

KNOWN_HEALTH: Final = ("starting", "ok", "degraded", "stopping")
_METRIC_NAME: Final = re.compile(r"[^a-zA-Z0-9_]")

#: snapshot section -> (key, metric, type, help): the figures every NOC dashboard wants
_SECTIONS: Final = {
    "flows": (
        ("tracked", "flow_table_flows", "gauge", "Flows in the daemon's flow table now."),
        ("max", "flow_table_capacity_flows", "gauge", "The flow table's bound (queue.flows)."),
        ("created", "flows_tracked_total", "counter", "Flows the daemon started tracking."),
        ("expired", "flows_expired_total", "counter", "Flows forgotten after going idle."),
        ("evicted", "flow_table_evictions_total", "counter",
         "Flows forgotten because the table was full (raise queue.flows, or a flood)."),
        ("classifier_errors", "classifier_errors_total", "counter",
         "Classifier calls that raised (see the log)."),
        ("unparsed_packets", "unparsed_packets_total", "counter", "Queued packets that could not be parsed."),
        ("reopened", "flows_reopened_total", "counter", "Decided flows looked at again in a later window."),
        ("late_blocks", "late_blocks_total", "counter",
         "Flows blocked after first being let through watched."),
        ("reused", "reused_tuples_total", "counter",
         "New connections on the 5-tuple of a decided flow, classified afresh."),
        ("retransmits", "tcp_retransmits_total", "counter",
         "Exact TCP retransmissions answered with the flow's decision, not classified again."),
        ("decoys", "decoy_packets_total", "counter",
         "LAN hosts' packets with a TTL too low to reach their server (DPI-evasion fakes), not classified."),
    ),
    "kernel": (
        ("bypassed_packets", "failopen_packets_total", "counter",
         "Packets the kernel let through without a verdict (queue full or no daemon)."),
        ("bypassed_flows", "failopen_connections_total", "counter",
         "Connections with at least one packet let through without a verdict."),
        ("flood_dropped", "flood_dropped_connections_total", "counter",
         "New connections dropped by the per-host new-connection limit."),
        ("queue_packets", "queue_packets_total", "counter", "Packets the kernel handed to our queues."),
        ("queue_dropped", "queue_dropped_packets_total", "counter",
         "Packets our queues dropped (queue full, or too slow to read)."),
    ),
}
#: top-level snapshot numbers: key -> (metric, type, help)
_GAUGES: Final = {
    "uplink_backlog": ("uplink_backlog_events", "gauge", "Events in the spool waiting for the uplink."),
    "uplink_sent_events": ("uplink_sent_events_total", "counter", "Events the collector accepted."),
    "spool_max_events": ("spool_capacity_events", "gauge", "The spool's bound (report.spool.max_events)."),
    "ipfix_records": ("ipfix_records_total", "counter", "IPFIX flow records exported."),
    "ipfix_errors": ("ipfix_errors_total", "counter", "IPFIX exports that failed."),
    "queues": ("queues", "gauge", "NFQUEUE queues the daemon serves."),
    "registry_entries": ("registry_entries", "gauge", "Registrations in the registry."),
    "registry_active": ("registry_active_entries", "gauge", "Registrations valid now."),
    "registry_next_expiry": ("registry_next_expiry_timestamp_seconds", "gauge",
                             "When the first registration valid now expires, seconds since the epoch."),
    "last_reload": ("last_reload_timestamp_seconds", "gauge",
                    "When a reload was last applied, seconds since the epoch."),
    "started": ("start_time_seconds", "gauge", "When the daemon started, seconds since the epoch."),
}


def metric_name(name: str) -> str:
    """A valid Prometheus metric/label name made from any string."""
    clean = _METRIC_NAME.sub("_", name) or "_"
    return "_" + clean if clean[0].isdigit() else clean


def _label_value(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, object]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{metric_name(k)}="{_label_value(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[Mapping[str, object], float]]
            ) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        v = str(value) if isinstance(value, int) else repr(float(value))
        lines.append(f"{name}{_labels(labels)} {v}")
    return lines


def _number(value: object) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def render_metrics(snap: Mapping[str, object]) -> str:
    """The snapshot in the Prometheus text exposition format (version 0.0.4)."""
    health = str(snap.get("health", ""))
    out = _family("tunnelwatch_up", "gauge", "1 while the daemon is deciding flows (health ok or degraded).",
                  [({}, 1 if health in ("ok", "degraded") else 0)])
    info = {k: snap.get(k) for k in ("version", "mode", "device_id")}
    out += _family("tunnelwatch_info", "gauge",
                   "Software version, policy mode and device id as labels; always 1.",
                   [({k: "" if v is None else v for k, v in info.items()}, 1)])
    states = [*KNOWN_HEALTH, *([health] if health not in KNOWN_HEALTH else [])]
    out += _family("tunnelwatch_health", "gauge", "1 for the current health state, 0 for the others.",
                   [({"state": s}, 1 if s == health else 0) for s in states])
    reasons = snap.get("health_reasons")
    out += _family("tunnelwatch_health_problems", "gauge",
                   "Reasons health is degraded (the page lists them).",
                   [({}, len(reasons) if isinstance(reasons, list) else 0)])
    out += _family("tunnelwatch_config_ok", "gauge", "1 when the last configuration check or reload passed.",
                   [({}, 1 if snap.get("config_check") == "ok" else 0)])
    for key, (metric, kind, help_text) in _GAUGES.items():
        value = _number(snap.get(key))
        if value is not None:
            out += _family(f"tunnelwatch_{metric}", kind, help_text, [({}, value)])
    for section, specs in _SECTIONS.items():
        part = snap.get(section)
        for key, metric, kind, help_text in specs:
            value = _number(part.get(key)) if isinstance(part, Mapping) else None
            if value is not None:
                out += _family(f"tunnelwatch_{metric}", kind, help_text, [({}, value)])
    families: dict[str, list[tuple[Mapping[str, object], float]]] = {}
    raw = snap.get("counters")
    for c in raw if isinstance(raw, list) else []:
        value, labels = (c.get("value"), c.get("labels")) if isinstance(c, dict) else (None, None)
        if isinstance(value, int | float) and not isinstance(value, bool) and isinstance(labels, dict):
            families.setdefault(str(c.get("name")), []).append((labels, value))
    for cname, samples in sorted(families.items()):
        help_text = _COUNTER_HELP.get(cname, f"Count of {cname.replace('_', ' ')} events.")
        out += _family(f"tunnelwatch_{metric_name(cname)}_total", "counter", help_text, samples)
    return "\n".join(out) + "\n"


_COUNTER_HELP: Final = {
    "flows": "Decided flows by class (klass) and action.",
    "config_rejected": "Reloads refused, by reason (invalid, firewall, restart).",
    "decisions_dropped": "Decisions a queue worker could not hand to the main process (status only).",
}
