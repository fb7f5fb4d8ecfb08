"""The daemon's installed rule set: built from the config and the registrations valid now, refreshed on
reload and when a registration starts or ends; and the "ready:" line that says what was installed."""

from __future__ import annotations

import datetime as dt
import logging

from tunnelwatch.config.runconfig import RunConfig
from tunnelwatch.inline import firewall
from tunnelwatch.policy.registry import Registry

log = logging.getLogger(__name__)


def firewall_spec(cfg: RunConfig, registry: Registry, now: dt.datetime, backend: str = "iptables"
                  ) -> firewall.Spec:
    """Rules for this config; registrations valid now become queue bypasses (any protocol to them)."""
    bypass = tuple(
        firewall.Bypass(str(s.net), s.ports, tuple(str(h) for h in e.lan_hosts))
        for e in registry.active(now) for s in e.servers
    )
    return firewall.Spec(cfg.queue_num, cfg.queue_count, cfg.packets, cfg.fail_closed, cfg.hooks, cfg.ipv6,
                         bypass, backend, cfg.deep, cfg.new_flow_rate, cfg.new_flow_burst)


class Rules:
    """The installed rule set of this daemon, refreshed when the config or active registrations change."""

    def __init__(self, cfg: RunConfig, registry: Registry) -> None:
        self.cfg = cfg
        self.registry = registry
        self.backend, why = firewall.choose_backend(cfg.backend)
        log.info("firewall backend: %s (%s)", self.backend, why)
        self.spec = firewall_spec(cfg, registry, dt.datetime.now(dt.UTC), self.backend)

    def install(self) -> None:
        """Install the current spec."""
        firewall.install(self.spec)

    def apply(self, cfg: RunConfig, registry: Registry) -> None:
        """Install the rules of a reloaded config (nothing is run when they are unchanged)."""
        fresh = firewall_spec(cfg, registry, dt.datetime.now(dt.UTC), self.backend)
        if fresh != self.spec:
            firewall.install(fresh)  # idempotent: chains rewritten in one restore, stale jumps removed
            self.spec = fresh
            log.info("rules refreshed: %d registered endpoints bypass the queue", len(fresh.bypass))
        self.cfg, self.registry = cfg, registry

    def refresh(self) -> None:
        """Re-install when the registrations valid now changed."""
        self.apply(self.cfg, self.registry)


def log_ready(cfg: RunConfig, spec: firewall.Spec, flags: list[bool | None]) -> None:
    """The "ready:" line (tests and technicians wait for it)."""
    if cfg.fail_closed:
        fo = "off (fail_closed)"
    else:
        fo = "on" if all(flags) else "FAILED" if False in flags else "unconfirmed"
    last = cfg.queue_num + cfg.queue_count - 1
    queues = f"queue {cfg.queue_num}" if cfg.queue_count == 1 else f"queues {cfg.queue_num}-{last}"
    log.info("ready: %s, first %d packets per connection, hooks %s, ipv6 %s, %d registered endpoints bypass "
             "the queue, kernel fail-open %s", queues, cfg.packets, ",".join(cfg.hooks),
             "on" if cfg.ipv6 else "off", len(spec.bypass), fo)
