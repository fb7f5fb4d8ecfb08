"""Property tests: the YAML loaders (run configuration, registry) answer hostile text with a located
ConfigError or a valid result, never another exception; plus the reproducers of crashes fuzzing found."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunnelwatch.classify.flow import Flow, flow_key
from tunnelwatch.classify.packet import UDP, Packet
from tunnelwatch.config.runconfig import RunConfig, parse_config
from tunnelwatch.config.yamlcheck import ConfigError
from tunnelwatch.policy.registry import Registry, parse_registry

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = yaml.safe_load((ROOT / "config/tunnelwatch.yaml").read_text())
PATH = "/nonexistent/tunnelwatch.yaml"
LOCATED = re.compile(r"^[^\n]+:\d+:\d+: \S")

HOSTILE_SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([0, -1, 65535, 65536, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.sampled_from(["", "auto", "br-lan", "192.0.2.1", "::1", "/", "..", "a\x1bb",
                                           "https://x", "0" * 500]),
    st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31)),
    st.sampled_from([dt.date(9999, 12, 31), dt.date(1, 1, 1)]),
)
HOSTILE = st.recursive(HOSTILE_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=8)


def mutate(data: st.DataObject, node: Any, depth: int = 0) -> Any:
    """Keep, drop, replace or descend into each key of a mapping (the shipped config's shape)."""
    if not isinstance(node, dict) or depth > 3:
        return data.draw(HOSTILE) if data.draw(st.integers(0, 3)) == 0 else node
    out: dict[Any, Any] = {}
    for k, v in node.items():
        action = data.draw(st.integers(0, 9))
        if action == 0:
            continue  # dropped
        if action == 1:
            out[k] = data.draw(HOSTILE)
        elif action == 2:
            out[k + data.draw(st.sampled_from(["s", "_", "X"]))] = v  # a typo'd key
        else:
            out[k] = mutate(data, v, depth + 1)
    return out


def check_problems(exc: ConfigError) -> None:
    assert exc.problems, "a ConfigError must list its problems"
    for p in exc.problems:
        assert LOCATED.match(p), p


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_config_text_gives_config_or_located_error(text: str) -> None:
    try:
        cfg = parse_config(text, PATH)
    except ConfigError as exc:
        check_problems(exc)
    else:
        assert isinstance(cfg, RunConfig)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_shipped_config_gives_config_or_located_error(data: st.DataObject) -> None:
    doc = mutate(data, SHIPPED)
    text = yaml.safe_dump(doc, allow_unicode=True)
    dropin = yaml.safe_dump(mutate(data, {"log": {"level": "debug"}, "queue": {"num": 1}}))
    try:
        cfg = parse_config(text, PATH, [(PATH + ".d/10.yaml", dropin)])
    except ConfigError as exc:
        check_problems(exc)
    else:
        assert 0 <= cfg.queue_num <= 65535


REG_ENTRY = st.fixed_dictionaries(
    {"id": st.one_of(st.text(min_size=1, max_size=12), HOSTILE_SCALARS),
     "servers": st.lists(st.one_of(st.sampled_from(["192.0.2.1", "2001:db8::/32", "203.0.113.0/24"]),
                                   st.fixed_dictionaries({"address": st.sampled_from(["192.0.2.1", "x"]),
                                                          "ports": st.lists(HOSTILE_SCALARS, max_size=3)}),
                                   HOSTILE), max_size=3)},
    optional={"customer": HOSTILE_SCALARS,
              "protocols": st.one_of(st.lists(HOSTILE_SCALARS, max_size=3), HOSTILE),
              "lan_hosts": st.one_of(st.lists(st.sampled_from(["198.51.100.0/24", "10.0.0.1", "::/0"]),
                                              max_size=2), HOSTILE),
              "valid_from": HOSTILE_SCALARS, "valid_until": HOSTILE_SCALARS})


def _flow(src: str, dst: str, dport: int) -> Flow:
    a, b = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    pkt = Packet(1.0, 4, a, b, UDP, 40000, dport, 60, b"")
    return Flow(flow_key(pkt), pkt)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(REG_ENTRY, max_size=4))
def test_registry_gives_entries_or_located_error(entries: list[dict[str, Any]]) -> None:
    text = yaml.safe_dump({"registrations": entries}, allow_unicode=True)
    try:
        parsed = parse_registry(text, "/nonexistent/registry.yaml")
    except ConfigError as exc:
        check_problems(exc)
        return
    reg = Registry(parsed)
    flow = _flow("198.51.100.7", "192.0.2.1", 1194)
    for now in (dt.datetime(1, 1, 1, tzinfo=dt.UTC), dt.datetime(9999, 12, 31, 23, tzinfo=dt.UTC)):
        reg.lookup(flow, "openvpn", now)
        reg.active(now)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_registry_text_gives_entries_or_located_error(text: str) -> None:
    try:
        parse_registry(text, "/nonexistent/registry.yaml")
    except ConfigError as exc:
        check_problems(exc)


# -- reproducers of crashes found by fuzzing (tests/fuzz/regressions/) -----------------------------------

def test_control_character_is_a_located_config_error() -> None:
    # yaml's reader refused the character in the loader's constructor, outside the error handling
    try:
        parse_config("queue:\n  num: 1\x1b\n", PATH)
    except ConfigError as exc:
        assert exc.problems == [f"{PATH}:2:9: YAML syntax: character U+001B is not allowed in YAML; hint: "
                                "remove it (a control character pasted by mistake?) or write it as an escape "
                                "inside a double-quoted string"]
    else:
        raise AssertionError("a control character was accepted")


def test_control_character_in_a_dropin_names_the_dropin() -> None:
    try:
        parse_config("log: {level: info}\n", PATH, [("/x/10.yaml", "queue: {num: 1\x07}\n")])
    except ConfigError as exc:
        assert exc.problems[0].startswith("/x/10.yaml:1:15: YAML syntax: character U+0007"), exc.problems
    else:
        raise AssertionError("a control character was accepted")


def test_control_character_in_registry_is_a_config_error() -> None:
    try:
        parse_registry("registrations:\n  - id: \x07x\n", "/r.yaml")
    except ConfigError as exc:
        assert exc.problems[0].startswith("/r.yaml:2:9: YAML syntax: character U+0007")
    else:
        raise AssertionError("a control character was accepted")


def test_valid_until_last_day_of_the_calendar() -> None:
    # "to the end of 9999-12-31" overflowed datetime when adding the day
    [e] = parse_registry("registrations:\n  - id: a\n    servers: [192.0.2.1]\n    valid_until: 9999-12-31\n")
    assert e.valid(dt.datetime(9999, 12, 31, 18, tzinfo=dt.UTC))
    assert e.valid(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def test_grace_until_last_day_of_the_calendar() -> None:
    cfg = parse_config("policy:\n  default: {mode: grace, until: 9999-12-31}\n", PATH)
    assert cfg.default.mode == "grace" and cfg.default.until is not None
    assert cfg.default.until > dt.datetime(9999, 12, 31, 23, tzinfo=dt.UTC)
