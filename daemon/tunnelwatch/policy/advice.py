"""What a technician should hear about a configuration that is valid but will not do what was meant.

`tunnelwatch check-config` prints these as warnings (exit 0): registrations that have expired, end soon or
have not started, grace periods already over, and rules or registrations naming a protocol that no
classifier and no loaded endpoint list reports (they would never match).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Final

from tunnelwatch.classify import known_protocols
from tunnelwatch.config.runconfig import RunConfig
from tunnelwatch.policy.registry import Registry

SOON: Final = dt.timedelta(days=30)  # a registration ending within this is worth a warning


def _last_day(end: dt.datetime) -> str:
    """The last day an exclusive end leaves in force (a bare date in YAML ends at the next midnight)."""
    return f"{end - dt.timedelta(microseconds=1):%Y-%m-%d}"


def warnings(cfg: RunConfig, registry: Registry, now: dt.datetime,
             list_protocols: Iterable[str] = ()) -> list[str]:
    """Every warning for this config, its registry and the protocols its endpoint lists report."""
    known = known_protocols() | set(list_protocols)
    out: list[str] = []
    where = str(cfg.registry) if cfg.registry is not None else "registry"
    for e in registry.entries:
        if e.valid_until is not None and e.valid_until <= now:
            out.append(f"{where}: registration {e.id}: expired (last valid day {_last_day(e.valid_until)}): "
                       "its tunnels are treated as unregistered")
        elif e.valid_until is not None and e.valid_until - now <= SOON:
            days = (e.valid_until - now).days
            out.append(f"{where}: registration {e.id}: ends in {days} day(s) (last valid day "
                       f"{_last_day(e.valid_until)})")
        if e.valid_from is not None and e.valid_from > now:
            out.append(f"{where}: registration {e.id}: not in force before {e.valid_from:%Y-%m-%d}")
        for p in e.protocols:
            if p not in known:
                out.append(f"{where}: registration {e.id}: protocol {p!r} is reported by no classifier and "
                           "no endpoint list: it never matches a flow")
    rules = [("default", cfg.default)] + [(f"klass.{k}", r) for k, r in cfg.klass.items()] \
        + [(f"protocol.{k}", r) for k, r in cfg.protocol.items()]
    for name, rule in rules:
        if rule.mode == "grace" and rule.until is not None and rule.until <= now:
            out.append(f"policy.{name}: grace is over (last day {_last_day(rule.until)}): "
                       "the rule enforces now")
    for proto in cfg.protocol:
        if proto not in known:
            out.append(f"policy.protocol.{proto}: reported by no classifier and no endpoint list: "
                       "the rule never applies")
    return out
