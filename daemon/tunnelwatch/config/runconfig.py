"""The typed configuration of `tunnelwatch run`: schema, defaults, validation, drop-ins and secrets.

Strict on purpose: a field technician's typo (unknown key, wrong type, out-of-range number) is reported
as `file:line:col: message; hint` and the daemon refuses to start (exit 78) instead of running with a
silently ignored setting. Drop-ins: `<config file>.d/*.yaml` (e.g. /etc/tunnelwatch/tunnelwatch.yaml.d/)
are merged over the main file in lexical order (mappings merge key by key, lists and scalars replace), and
problems point into the drop-in that set the value. The status token is a secret: it lives in its own
file that must be owned by root (or the daemon's user) and not readable by group or others.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from yaml.nodes import MappingNode, Node, ScalarNode

from tunnelwatch.classify import known_protocols, suggest_protocol
from tunnelwatch.classify.endpoints import EndpointsConfig, endpoints_section
from tunnelwatch.classify.engine import INLINE_BUDGET, SSH_DEEP
from tunnelwatch.config.appconfig import (
    DiscoveryConfig,
    StatusConfig,
    discovery_section,
    read_secret,
    status_section,
)
from tunnelwatch.config.reportconfig import ReportConfig, report_section
from tunnelwatch.config.yamlcheck import ConfigError, YamlReader, kind, merge, relative_path
from tunnelwatch.verdict import CONFIDENCES, FLAGGED_ORDER

__all__ = ["ConfigError", "DiscoveryConfig", "ReportConfig", "Rule", "RunConfig", "StatusConfig", "VoipRule",
           "YamlReader", "dropin_dir", "load_config", "parse_config", "read_secret", "restart_needed"]

MODES: Final = ("monitor", "enforce", "grace")
ACTIONS: Final = ("drop", "reject")
HOOKS: Final = ("forward", "input", "output")
BACKENDS: Final = ("auto", "iptables", "nftables")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
BULK_ACTIONS: Final = ("report", "block")
AUTO_QUEUES_MAX: Final = 8  # queue.count: auto never starts more workers (a CPE has 1-4 cores)


def auto_queue_count() -> int:
    """`queue.count: auto`: one queue and worker per CPU this process may run on, 1 to AUTO_QUEUES_MAX."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(AUTO_QUEUES_MAX, cpus))


@dataclass(frozen=True)
class Rule:
    """Policy for one klass or protocol: mode, grace deadline, minimum confidence, action."""

    mode: str = "monitor"
    until: dt.datetime | None = None
    min_confidence: str = "confirmed"
    action: str = "drop"


@dataclass(frozen=True)
class VoipRule:
    """Bulk VoIP: more than `bulk_calls` calls active at once on one host (0 = off); a call whose end is
    never seen counts for at most `bulk_window` s."""

    bulk_calls: int = 0
    bulk_action: str = "report"
    bulk_window: int = 120


@dataclass(frozen=True)
class RunConfig:
    """Everything `tunnelwatch run` needs."""

    queue_num: int = 0
    #: resolved at load: `auto` (the default) is one queue per CPU (auto_queue_count)
    queue_count: int = field(default_factory=auto_queue_count)
    queue_auto: bool = True
    packets: int = INLINE_BUDGET
    maxlen: int = 4096
    flows: int = 65_536
    #: (transport, server port, packets) queued deeper than `packets` (default: SSH, see config)
    deep: tuple[tuple[str, int, int], ...] = (SSH_DEEP,)
    fail_closed: bool = False
    #: new connections per second per source address before the queue (0: off), and the burst allowed
    new_flow_rate: int = 500
    new_flow_burst: int = 1000
    hooks: tuple[str, ...] = ("forward",)
    ipv6: bool = True
    backend: str = "auto"
    registry: Path | None = None
    default: Rule = Rule()
    klass: dict[str, Rule] = field(default_factory=dict)
    protocol: dict[str, Rule] = field(default_factory=dict)
    voip: VoipRule = VoipRule()
    log_level: str = "info"
    log_journal: bool | None = None  # None = auto: journald when running under systemd
    status: StatusConfig = field(default_factory=StatusConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    endpoints: EndpointsConfig = field(default_factory=EndpointsConfig)
    sources: tuple[str, ...] = field(default=(), compare=False)  # main file, then drop-ins applied


_TOP: Final = ("queue", "firewall", "registry", "policy", "status", "discovery", "report", "log", "endpoints")
# what a reload cannot change in place: the queue binding (number, count, kernel queue length, fail-open
# flag) is made once at start, and a backend switch would need the other backend's rules torn down
RESTART_FIELDS: Final = {"queue_num": "queue.num", "queue_count": "queue.count", "maxlen": "queue.maxlen",
                         "fail_closed": "queue.fail_closed", "backend": "firewall.backend"}


def _rule(r: YamlReader, node: Node, base: Rule, what: str) -> Rule:
    if isinstance(node, ScalarNode):
        mode = r.string(node, f"{what} mode", MODES)
        if mode == "grace":
            r.err(node, f"{what}: grace needs a date: use {{mode: grace, until: YYYY-MM-DD}}")
        return Rule(mode or base.mode, None, base.min_confidence, base.action)
    f = r.mapping(node, ("mode", "until", "min_confidence", "action"), what)
    mode = r.opt(f, "mode", lambda n: r.string(n, f"{what}.mode", MODES), base.mode)
    until = r.opt(f, "until", lambda n: r.date(n, f"{what}.until"), None)
    if mode == "grace" and until is None and "until" not in f:
        r.err(node, f"{what}: mode grace needs until: YYYY-MM-DD")
    if until is not None and mode != "grace":
        r.err(f["until"], f"{what}.until only applies to mode grace; set mode: grace or remove until")
    conf = r.opt(f, "min_confidence", lambda n: r.string(n, f"{what}.min_confidence", CONFIDENCES),
                 base.min_confidence)
    action = r.opt(f, "action", lambda n: r.string(n, f"{what}.action", ACTIONS), base.action)
    return Rule(mode, until, conf, action)


def _voip(r: YamlReader, node: Node) -> VoipRule:
    f = r.mapping(node, ("bulk_calls", "bulk_action", "bulk_window"), "policy.voip")
    base = VoipRule()
    return VoipRule(
        r.opt(f, "bulk_calls", lambda n: r.integer(n, "policy.voip.bulk_calls", 0, 100_000), base.bulk_calls),
        r.opt(f, "bulk_action", lambda n: r.string(n, "policy.voip.bulk_action", BULK_ACTIONS),
              base.bulk_action),
        r.opt(f, "bulk_window", lambda n: r.integer(n, "policy.voip.bulk_window", 10, 86_400),
              base.bulk_window),
    )


def _journal(r: YamlReader, node: Node) -> bool | None:
    v = r.value(node)
    if isinstance(v, bool):
        return v
    if v != "auto":
        r.err(node, f"log.journal must be one of auto, true, false (got {kind(node)})")
    return None


def _deep(r: YamlReader, node: Node) -> tuple[tuple[str, int, int], ...]:
    out: list[tuple[str, int, int]] = []
    for item in r.seq(node, "queue.deep"):
        m = r.mapping(item, ("transport", "port", "packets"), "queue.deep item")
        for key in ("transport", "port", "packets"):
            if key not in m and isinstance(item, MappingNode):
                r.err(item, f"queue.deep item needs {key} (e.g. {{transport: tcp, port: 22, packets: 96}})")
        tr = r.opt(m, "transport", lambda n: r.string(n, "queue.deep transport", ("tcp", "udp")), None)
        port = r.opt(m, "port", lambda n: r.integer(n, "queue.deep port", 1, 65535), None)
        packets = r.opt(m, "packets", lambda n: r.integer(n, "queue.deep packets", 1, 1000), None)
        if tr is not None and port is not None and packets is not None:
            if any(d[:2] == (tr, port) for d in out):
                r.err(item, f"queue.deep: {tr}/{port} listed twice; keep one")
            out.append((tr, port, packets))
    return tuple(out)


def _policy_rules(r: YamlReader, pol: dict[str, Node], default: Rule) -> dict[str, dict[str, Rule]]:
    per: dict[str, dict[str, Rule]] = {"klass": {}, "protocol": {}}
    for section in ("klass", "protocol"):
        if section not in pol:
            continue
        node = pol[section]
        if not isinstance(node, MappingNode):
            r.err(node, f"policy.{section} must be a mapping (got {kind(node)})")
            continue
        for k, v in node.value:
            name = k.value if isinstance(k, ScalarNode) else ""
            if section == "klass" and name not in FLAGGED_ORDER:
                guess = [g for g in FLAGGED_ORDER if g.startswith(str(name)[:3])]
                hint = f"did you mean {guess[0]!r}?" if guess else f"one of {', '.join(FLAGGED_ORDER)}"
                r.err(k, f"unknown klass {name!r} ({hint})")
                continue
            if section == "protocol" and not (isinstance(name, str) and name.isidentifier()):
                r.err(k, f"bad protocol name {name!r} (a classifier's protocol, e.g. openvpn, wireguard)")
                continue
            unknown = section == "protocol" and name not in known_protocols()
            meant = suggest_protocol(name) if unknown else None
            if meant is not None:
                r.err(k, f"unknown protocol {name!r} (did you mean {meant!r}?): a rule for it never applies")
                continue
            if name in per[section]:
                r.err(k, f"duplicate {section} {name!r}: keep one")
                continue
            per[section][name] = _rule(r, v, default, f"policy.{section}.{name}")
    return per


def _queue_count(r: YamlReader, node: Node) -> int | None:
    if isinstance(node, ScalarNode) and node.value == "auto":
        return auto_queue_count()
    if isinstance(node, ScalarNode) and node.tag.endswith(":str") and not node.value.isdigit():
        r.err(node, f"queue.count must be auto or an integer between 1 and 64 (got {node.value!r})")
        return None
    return r.integer(node, "queue.count", 1, 64)


def _parse(r: YamlReader, root: Node, path: str) -> RunConfig:
    top = r.mapping(root, _TOP, "the configuration")
    q = r.mapping(top["queue"], ("num", "count", "packets", "maxlen", "flows", "deep", "fail_closed",
                                 "new_flow_rate", "new_flow_burst"), "queue") \
        if "queue" in top else {}
    fw = r.mapping(top["firewall"], ("hooks", "ipv6", "backend"), "firewall") if "firewall" in top else {}
    pol = r.mapping(top["policy"], ("default", "klass", "protocol", "voip"), "policy") \
        if "policy" in top else {}
    lg = r.mapping(top["log"], ("level", "journal"), "log") if "log" in top else {}
    hooks: list[str] = []
    for n in r.seq(fw["hooks"], "firewall.hooks") if "hooks" in fw else []:
        h = r.string(n, "firewall.hooks item", HOOKS)
        if h is not None and h not in hooks:
            hooks.append(h)
    if "hooks" in fw and not hooks and not r.problems:
        r.err(fw["hooks"], "firewall.hooks must name at least one of forward, input, output")
    registry: Path | None = None
    if "registry" in top:
        s = r.string(top["registry"], "registry")
        if s is not None:
            registry = relative_path(top["registry"], s, path)
    default = _rule(r, pol["default"], Rule(), "policy.default") if "default" in pol else Rule()
    per = _policy_rules(r, pol, default)
    cfg = RunConfig(
        queue_num=r.opt(q, "num", lambda n: r.integer(n, "queue.num", 0, 65535), 0),
        queue_count=r.opt(q, "count", lambda n: _queue_count(r, n), auto_queue_count()),
        queue_auto="count" not in q or (isinstance(q["count"], ScalarNode) and q["count"].value == "auto"),
        packets=r.opt(q, "packets", lambda n: r.integer(n, "queue.packets", 1, 1000), INLINE_BUDGET),
        maxlen=r.opt(q, "maxlen", lambda n: r.integer(n, "queue.maxlen", 16, 1_000_000), 4096),
        flows=r.opt(q, "flows", lambda n: r.integer(n, "queue.flows", 1000, 10_000_000), 65_536),
        deep=_deep(r, q["deep"]) if "deep" in q else RunConfig.deep,
        fail_closed=r.opt(q, "fail_closed", lambda n: r.boolean(n, "queue.fail_closed"), False),
        new_flow_rate=r.opt(q, "new_flow_rate", lambda n: r.integer(n, "queue.new_flow_rate", 0, 100_000),
                            500),
        new_flow_burst=r.opt(q, "new_flow_burst", lambda n: r.integer(n, "queue.new_flow_burst", 1, 100_000),
                             1000),
        hooks=tuple(hooks) or ("forward",),
        ipv6=r.opt(fw, "ipv6", lambda n: r.boolean(n, "firewall.ipv6"), True),
        backend=r.opt(fw, "backend", lambda n: r.string(n, "firewall.backend", BACKENDS), "auto"),
        registry=registry,
        default=default,
        klass=per["klass"],
        protocol=per["protocol"],
        voip=_voip(r, pol["voip"]) if "voip" in pol else VoipRule(),
        log_level=r.opt(lg, "level", lambda n: r.string(n, "log.level", LOG_LEVELS), "info"),
        log_journal=_journal(r, lg["journal"]) if "journal" in lg else None,
        status=status_section(r, top["status"], path) if "status" in top else StatusConfig(),
        discovery=discovery_section(r, top["discovery"]) if "discovery" in top else DiscoveryConfig(),
        report=report_section(r, top["report"], path) if "report" in top else ReportConfig(),
        endpoints=endpoints_section(r, top["endpoints"], path) if "endpoints" in top else EndpointsConfig(),
        sources=(path,),
    )
    if cfg.queue_num + cfg.queue_count - 1 > 65535:
        r.problems.append(f"{path}:1:1: queue.num + queue.count exceeds queue 65535; lower queue.num")
    return cfg


def parse_config(text: str, path: str = "<config>", dropins: list[tuple[str, str]] | None = None
                 ) -> RunConfig:
    """Parse and validate a configuration (plus (name, text) drop-ins merged in order); raise ConfigError
    listing every problem."""
    r = YamlReader(path)
    root = r.load(text)
    if root is None and not r.problems:
        r.problems.append(f"{path}:1:1: empty configuration; start from config/tunnelwatch.yaml")
    for name, dtext in dropins or []:
        node = r.load(dtext, name)
        if node is None:
            continue
        if not isinstance(node, MappingNode):
            r.err(node, "a drop-in must be a mapping of sections, like the main file")
        elif root is not None:
            root = merge(root, node)
    if root is None or r.problems:
        raise ConfigError(r.problems)
    cfg = _parse(r, root, path)
    if r.problems:
        raise ConfigError(r.problems)
    return cfg


def dropin_dir(path: Path) -> Path:
    """Where drop-ins for this config file live: `<file>.d/` (e.g. tunnelwatch.yaml.d/)."""
    return path.with_name(path.name + ".d")


def load_config(path: Path) -> RunConfig:
    """Read a configuration file and its drop-ins; unreadable files are ConfigErrors too."""
    problems: list[str] = []

    def read(p: Path) -> str:
        try:
            return p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{p}: cannot read: {getattr(exc, 'strerror', None) or exc}")
            return ""

    text = read(path)
    d = dropin_dir(path)
    files = sorted(p for p in d.glob("*.yaml") if not p.name.startswith(".")) if d.is_dir() else []
    dropins = [(str(p), read(p)) for p in files]
    if problems:
        raise ConfigError(problems)
    cfg = parse_config(text, str(path), dropins)
    return RunConfig(**{**cfg.__dict__, "sources": (str(path), *(n for n, _ in dropins))})


def restart_needed(old: RunConfig, new: RunConfig) -> list[str]:
    """The settings that differ between two configs and can only change with a restart."""
    out = [name for attr, name in RESTART_FIELDS.items() if getattr(old, attr) != getattr(new, attr)]
    # the spool file is opened once, by the main process, before the queues are bound
    if (old.report.spool, old.report.state_dir) != (new.report.spool, new.report.state_dir):
        out.append("report.spool / report.state_dir")
    return out


def rule_text(r: Rule) -> str:
    """One line for a rule: mode, grace end, minimum confidence, action."""
    until = f" until {r.until:%Y-%m-%d %H:%M} UTC" if r.until is not None else ""
    return f"{r.mode}{until} (min {r.min_confidence}, {r.action})"


def summary(cfg: RunConfig) -> list[str]:
    """What a technician needs to see after `check-config`: the effective settings, one line per area."""
    last = cfg.queue_num + cfg.queue_count - 1
    queues = f"queue {cfg.queue_num}" if cfg.queue_count == 1 else f"queues {cfg.queue_num}-{last}"
    if cfg.queue_auto:
        queues += f" (count auto: {cfg.queue_count} of this machine's CPUs)"
    st, disc = cfg.status, cfg.discovery
    http = f"HTTP on {', '.join(st.listen)} port {st.port} (token from {st.token_file})" if st.listen \
        else "HTTP off (status.listen is empty)"
    mdns = f"on {', '.join(disc.interfaces)}" if disc.enabled and disc.interfaces else "off"
    rules = [f"{k} {rule_text(v)}" for k, v in sorted(cfg.klass.items())]
    rules += [f"protocol {k} {rule_text(v)}" for k, v in sorted(cfg.protocol.items())]
    journal = {None: "auto", True: "on", False: "off"}[cfg.log_journal]
    return [
        f"{queues}, first {cfg.packets} packets per connection, maxlen {cfg.maxlen}, {cfg.flows} flows, "
        f"deeper: {', '.join(f'{t}/{p} {n} packets' for t, p, n in cfg.deep) or 'none'}, "
        f"{'fail-closed' if cfg.fail_closed else 'fail-open'}, new connections per host: "
        + (f"{cfg.new_flow_rate}/s (burst {cfg.new_flow_burst})" if cfg.new_flow_rate else "unlimited"),
        f"firewall: hooks {','.join(cfg.hooks)}, ipv6 {'on' if cfg.ipv6 else 'off'}, backend {cfg.backend}",
        f"policy: default {rule_text(cfg.default)}" + "".join(f"; {r}" for r in rules),
        "bulk VoIP: " + (f"{cfg.voip.bulk_action} above {cfg.voip.bulk_calls} concurrent calls per host "
                         f"(each for {cfg.voip.bulk_window} s at most)" if cfg.voip.bulk_calls else "off"),
        f"status: socket {st.socket or 'off'}, {http}",
        f"discovery: {mdns}" + (f", device id {disc.device_id}" if disc.device_id else ""),
        f"log: level {cfg.log_level}, journal {journal}",
        "endpoint lists: " + (", ".join(f"{s.path} ({s.format})" for s in cfg.endpoints.lists) or "none"),
        *report_summary(cfg.report),
    ]


def report_summary(rep: ReportConfig) -> list[str]:
    """The report section in `check-config` words."""
    up = rep.uplink
    auth = " + ".join(x for x in ("mTLS" if up.client_cert else "", "token" if up.token else "") if x) \
        or "no client auth"
    ipf = rep.ipfix
    sync = rep.registry_sync
    priv = rep.privacy
    nets = f" in {', '.join(priv.subscriber_nets)}" if priv.subscriber_nets else ""
    return [
        f"report: spool {rep.spool.path} (max {rep.spool.max_events} events, "
        f"{rep.spool.max_bytes // 1048576} MB, {rep.spool.retention_days} days), "
        f"heartbeat every {rep.heartbeat} s",
        "report uplink: " + (f"{up.url} ({auth})" if up.url else "off (report.uplink.url is null)"),
        "report ipfix: " + (f"{ipf.collector[0]}:{ipf.collector[1]}/{ipf.transport}, PEN {ipf.enterprise}"
                            if ipf.collector else "off"),
        "registry sync: " + ", ".join(
            [f"{sync.url} every {sync.interval} s"] * bool(sync.url)
            + ["pushed over MQTT"] * bool(sync.public_key and up.transport == "mqtt") or ["off"]),
        f"privacy: subscriber addresses {priv.subscriber_addresses}{nets}",
    ]
