"""The minimal YAML configuration of `tunnelwatch run` and the strict YAML reader shared with the registry.

Strict on purpose: a field technician's typo (unknown key, wrong type, out-of-range number) is reported
as `file:line:col: message` and the daemon refuses to start (exit 78) instead of running with a silently
ignored setting.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MODES: Final = ("monitor", "enforce", "grace")
ACTIONS: Final = ("drop", "reject")
HOOKS: Final = ("forward", "input", "output")
BACKENDS: Final = ("auto", "iptables", "nftables")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
BULK_ACTIONS: Final = ("report", "block")


class ConfigError(Exception):
    """A configuration file is invalid; `problems` holds one `file:line:col: message` per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class YamlReader:
    """Typed access to a composed YAML document that records located problems instead of raising."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[str] = []
        self._loader = yaml.SafeLoader("")

    def load(self, text: str) -> Node | None:
        """Compose the document; a syntax error becomes a located problem."""
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f"{mark.line + 1}:{mark.column + 1}" if mark is not None else "1:1"
            self.problems.append(f"{self.path}:{where}: YAML syntax: {exc.problem}")
        except yaml.YAMLError as exc:
            self.problems.append(f"{self.path}:1:1: YAML: {exc}")
        return None

    def err(self, node: Node, msg: str) -> None:
        """Record a problem at the node's position."""
        m = node.start_mark
        self.problems.append(f"{self.path}:{m.line + 1}:{m.column + 1}: {msg}")

    def mapping(self, node: Node, allowed: tuple[str, ...], what: str) -> dict[str, Node]:
        """Keys -> value nodes of a mapping; unknown and duplicate keys are problems."""
        if not isinstance(node, MappingNode):
            self.err(node, f"{what} must be a mapping")
            return {}
        out: dict[str, Node] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, ScalarNode) else None
            if key not in allowed:
                self.err(k, f"unknown key {key!r} in {what} (allowed: {', '.join(allowed)})")
            elif key in out:
                self.err(k, f"duplicate key {key!r} in {what}")
            else:
                out[key] = v
        return out

    def seq(self, node: Node, what: str) -> list[Node]:
        """Items of a sequence."""
        if not isinstance(node, SequenceNode):
            self.err(node, f"{what} must be a list")
            return []
        return list(node.value)

    def value(self, node: Node) -> Any:
        """The plain Python value of a scalar node (None for non-scalars)."""
        if not isinstance(node, ScalarNode):
            return None
        try:
            return self._loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.err(node, f"bad value: {exc}")
            return None

    def integer(self, node: Node, what: str, lo: int, hi: int) -> int | None:
        """An integer within [lo, hi]."""
        v = self.value(node)
        if isinstance(v, bool) or not isinstance(v, int):
            self.err(node, f"{what} must be an integer")
            return None
        if not lo <= v <= hi:
            self.err(node, f"{what} must be between {lo} and {hi}")
            return None
        return v

    def boolean(self, node: Node, what: str) -> bool | None:
        """true or false."""
        v = self.value(node)
        if not isinstance(v, bool):
            self.err(node, f"{what} must be true or false")
            return None
        return v

    def string(self, node: Node, what: str, choices: tuple[str, ...] = ()) -> str | None:
        """A non-empty string, optionally one of `choices`."""
        v = self.value(node)
        if not isinstance(v, str) or not v:
            self.err(node, f"{what} must be a non-empty string")
            return None
        if choices and v not in choices:
            self.err(node, f"{what} must be one of {', '.join(choices)} (got {v!r})")
            return None
        return v

    def date(self, node: Node, what: str, end_of_day: bool = True) -> dt.datetime | None:
        """A YAML date or timestamp as an aware UTC datetime; a bare date means the end (or start) of it."""
        v = self.value(node)
        if isinstance(v, dt.datetime):
            return v if v.tzinfo else v.replace(tzinfo=dt.UTC)
        if isinstance(v, dt.date):
            start = dt.datetime(v.year, v.month, v.day, tzinfo=dt.UTC)
            return start + dt.timedelta(days=1) if end_of_day else start
        self.err(node, f"{what} must be a date (YYYY-MM-DD) or timestamp")
        return None

    def opt(self, fields: dict[str, Node], key: str, conv: Callable[[Node], Any], default: Any) -> Any:
        """conv(fields[key]) when present and valid, else `default`."""
        if key not in fields:
            return default
        v = conv(fields[key])
        return default if v is None else v


@dataclass(frozen=True)
class Rule:
    """Policy for one klass or protocol: mode, grace deadline, minimum confidence, action."""

    mode: str = "monitor"
    until: dt.datetime | None = None
    min_confidence: str = "confirmed"
    action: str = "drop"


@dataclass(frozen=True)
class VoipRule:
    """Bulk VoIP: more than `bulk_calls` media flows started by one host within `bulk_window` s (0 = off)."""

    bulk_calls: int = 0
    bulk_action: str = "report"
    bulk_window: int = 120


@dataclass(frozen=True)
class RunConfig:
    """Everything `tunnelwatch run` needs."""

    queue_num: int = 0
    queue_count: int = 1
    packets: int = 16
    maxlen: int = 4096
    fail_closed: bool = False
    hooks: tuple[str, ...] = ("forward",)
    ipv6: bool = True
    backend: str = "auto"
    registry: Path | None = None
    default: Rule = Rule()
    klass: dict[str, Rule] = field(default_factory=dict)
    protocol: dict[str, Rule] = field(default_factory=dict)
    voip: VoipRule = VoipRule()
    log_level: str = "info"


_TOP: Final = ("queue", "firewall", "registry", "policy", "log")
_KLASSES: Final = ("vpn_tunnel", "voip", "proxy_obfuscated")
_CONFIDENCES: Final = ("confirmed", "heuristic", "port")


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
        r.err(f["until"], f"{what}.until only applies to mode grace")
    conf = r.opt(f, "min_confidence", lambda n: r.string(n, f"{what}.min_confidence", _CONFIDENCES),
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


def parse_config(text: str, path: str = "<config>") -> RunConfig:
    """Parse and validate the run configuration; raise ConfigError listing every problem."""
    r = YamlReader(path)
    root = r.load(text)
    if root is None:
        if not r.problems:
            r.problems.append(f"{path}:1:1: empty configuration")
        raise ConfigError(r.problems)
    top = r.mapping(root, _TOP, "the configuration")
    q = r.mapping(top["queue"], ("num", "count", "packets", "maxlen", "fail_closed"), "queue") \
        if "queue" in top else {}
    fw = r.mapping(top["firewall"], ("hooks", "ipv6", "backend"), "firewall") if "firewall" in top else {}
    pol = r.mapping(top["policy"], ("default", "klass", "protocol", "voip"), "policy") \
        if "policy" in top else {}
    lg = r.mapping(top["log"], ("level",), "log") if "log" in top else {}
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
            registry = Path(s) if Path(s).is_absolute() else Path(path).parent / s
    default = _rule(r, pol["default"], Rule(), "policy.default") if "default" in pol else Rule()
    per: dict[str, dict[str, Rule]] = {"klass": {}, "protocol": {}}
    for section in ("klass", "protocol"):
        if section not in pol:
            continue
        node = pol[section]
        if not isinstance(node, MappingNode):
            r.err(node, f"policy.{section} must be a mapping")
            continue
        for k, v in node.value:
            name = k.value if isinstance(k, ScalarNode) else ""
            if section == "klass" and name not in _KLASSES:
                r.err(k, f"unknown klass {name!r} (one of {', '.join(_KLASSES)})")
                continue
            if section == "protocol" and not (isinstance(name, str) and name.isidentifier()):
                r.err(k, f"bad protocol name {name!r}")
                continue
            if name in per[section]:
                r.err(k, f"duplicate {section} {name!r}")
                continue
            per[section][name] = _rule(r, v, default, f"policy.{section}.{name}")
    cfg = RunConfig(
        queue_num=r.opt(q, "num", lambda n: r.integer(n, "queue.num", 0, 65535), 0),
        queue_count=r.opt(q, "count", lambda n: r.integer(n, "queue.count", 1, 64), 1),
        packets=r.opt(q, "packets", lambda n: r.integer(n, "queue.packets", 1, 1000), 16),
        maxlen=r.opt(q, "maxlen", lambda n: r.integer(n, "queue.maxlen", 16, 1_000_000), 4096),
        fail_closed=r.opt(q, "fail_closed", lambda n: r.boolean(n, "queue.fail_closed"), False),
        hooks=tuple(hooks) or ("forward",),
        ipv6=r.opt(fw, "ipv6", lambda n: r.boolean(n, "firewall.ipv6"), True),
        backend=r.opt(fw, "backend", lambda n: r.string(n, "firewall.backend", BACKENDS), "auto"),
        registry=registry,
        default=default,
        klass=per["klass"],
        protocol=per["protocol"],
        voip=_voip(r, pol["voip"]) if "voip" in pol else VoipRule(),
        log_level=r.opt(lg, "level", lambda n: r.string(n, "log.level", LOG_LEVELS), "info"),
    )
    if cfg.queue_num + cfg.queue_count - 1 > 65535:
        r.problems.append(f"{path}:1:1: queue.num + queue.count exceeds queue 65535")
    if r.problems:
        raise ConfigError(r.problems)
    return cfg


def load_config(path: Path) -> RunConfig:
    """Read and parse a configuration file; unreadable files are ConfigErrors too."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}:1:1: cannot read: {exc}"]) from exc
    return parse_config(text, str(path))
