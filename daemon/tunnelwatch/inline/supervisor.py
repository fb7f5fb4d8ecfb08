"""The daemon's control side: reload on SIGHUP, periodic registry and rule checks, watchdog, status.

Owns everything the main process does between packets. A reload re-reads the config file (with its
drop-ins) AND the registry; a new config that is invalid, or that changes what only a restart can change
(the queue binding, the firewall backend), is refused with a clear log line and an `event=config_rejected`
line, and the running config stays. An accepted one is applied without dropping traffic: the rules are
refreshed with the idempotent install, the policy applies to new flows (decided flows keep their mark),
and the status/mDNS servers restart only when their own settings changed. Systemd hears RELOADING=1 then
READY=1 either way, WATCHDOG=1 every half watchdog period, and a STATUS= line with the flow counts.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Final

from tunnelwatch.appliance.appliance import Appliance, mode_of, registry_figures, registry_version
from tunnelwatch.appliance.health import Health
from tunnelwatch.appliance.service import Notifier, setup_logging
from tunnelwatch.config.runconfig import ConfigError, RunConfig, load_config, restart_needed
from tunnelwatch.inline.firewall import FirewallError
from tunnelwatch.policy.registry import Registry
from tunnelwatch.record import FlowRecord

if TYPE_CHECKING:
    from tunnelwatch.inline.rules import Rules
    from tunnelwatch.policy.syncer import RegistrySyncer
    from tunnelwatch.report.reporter import Reporter

log = logging.getLogger(__name__)

TICK: Final = 30.0  # seconds between registry-file and validity-window checks
STATUS_EVERY: Final = 2.0  # seconds between STATUS= refreshes (sent only when the text changed)
TALLY_EVERY: Final = 1.0  # seconds between hand-overs of counted-only decisions to status and reporting
POLICY_FIELDS: Final = ("default", "klass", "protocol", "voip")


def digest(path: Path | None) -> str | None:
    """sha256 of a file, hex (None when unreadable)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else None
    except OSError:
        return None


class RegistryWatch:
    """Notices a changed registry file (checked every tick) and reloads it in place."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.mtime = self._mtime()
        self.rejected = False  # the last check found a changed file it could not load

    def _mtime(self) -> float:
        try:
            return self.registry.path.stat().st_mtime if self.registry.path is not None else 0.0
        except OSError:
            return 0.0

    def check(self) -> bool:
        """Reload when the file changed; True when new entries were loaded (a bad file keeps the old)."""
        mtime = self._mtime()
        if mtime == self.mtime:
            return False
        self.mtime = mtime
        ok = self.registry.reload()
        self.rejected = not ok
        return ok


class Supervisor:
    """Reloads, ticks, watchdog pings and status for one daemon; `apply_path` hands a new config and
    registry to the packet path (the in-process Enforcer, or every queue worker)."""

    def __init__(self, cfg: RunConfig, registry: Registry, path: Path | None, rules: Rules, app: Appliance,
                 notifier: Notifier, apply_path: Callable[[RunConfig, Registry], None], *,
                 reporter: Reporter | None = None, syncer: RegistrySyncer | None = None,
                 verbose: bool = False) -> None:
        self.cfg, self.registry, self.path = cfg, registry, path
        self.rules, self.app, self.notifier, self.apply_path = rules, app, notifier, apply_path
        self.verbose = verbose
        self.reporter, self.syncer = reporter, syncer
        self.health = Health(uplink_grace=float(cfg.status.uplink_grace))
        self.watch = RegistryWatch(registry)
        self.counts: Counter[str] = Counter()
        #: (klass, action) -> decisions only counted (Supervisor.tally), not yet handed to status/reporting
        self.tallied: dict[tuple[str, str], int] = {}
        self.hup = False
        self.reloads = 0
        now = time.monotonic()
        self.interval = notifier.watchdog_interval()
        self.next_tick = now + TICK
        self.next_dog = now
        self.next_status = now + STATUS_EVERY
        self.next_tally = now + TALLY_EVERY
        self.last_status = ""
        #: time.monotonic() from which wake() has periodic work: a caller may skip wake() until then unless
        #: a reload is pending or a thread poked it (the single-queue loop does, on every wake-up)
        self.due = self._due()

    def record(self, rec: FlowRecord) -> None:
        """One decided flow for the counters and the status state."""
        self.counts["decided"] += 1
        if rec.action == "block":
            self.counts["blocked"] += 1
        self.app.state.record_decision(rec)
        if self.reporter is not None:
            self.reporter.flow(rec)

    def tally(self, klass: str, action: str, n: int = 1) -> None:
        """n decided flows that nobody reports or shows one by one (allowed, not flagged, not registered):
        counted here at once, handed to status and reporting in bulk (flush_tally), as record() would."""
        self.counts["decided"] += n
        key = (klass, action)
        self.tallied[key] = self.tallied.get(key, 0) + n

    def flush_tally(self) -> None:
        """Add the counted-only decisions to the status counters and the reporter's (every TALLY_EVERY)."""
        tallied, self.tallied = self.tallied, {}
        for (klass, action), n in tallied.items():
            self.app.state.count("flows", n, klass=klass, action=action)
            if self.reporter is not None:
                self.reporter.count_flows(klass, action, n)

    def event(self, kind: str, **fields: object) -> None:
        """Report an event upward (nothing when reporting is off)."""
        if self.reporter is not None:
            self.reporter.event(kind, **fields)

    def status_text(self) -> str:
        """The systemd STATUS= line."""
        mode = {"enforce": "enforcing", "grace": "enforcing (grace)", "monitor": "monitoring"}[
            mode_of(self.cfg)]
        return f"{mode}: {self.counts['decided']} flows decided, {self.counts['blocked']} blocked"

    def ready(self) -> None:
        """Rules are in place: tell systemd and start advertising."""
        self.assess_health()
        self.notifier.ready(self.status_text())
        self.last_status = self.status_text()
        self.app.start_discovery()

    def assess_health(self) -> None:
        """Health and its reasons from what every wing wrote into the status state (appliance/health.py)."""
        snap = self.app.state.snapshot()
        if snap.get("health") == "stopping":
            return
        health, reasons = self.health.assess(snap, time.time())
        if health == "degraded" and snap.get("health") != "degraded":
            log.warning("health degraded: %s", "; ".join(reasons))
        elif health == "ok" and snap.get("health") == "degraded":
            log.info("health ok again")
        self.app.state.set(health=health, health_reasons=reasons)

    def _due(self) -> float:
        return min(self.next_tick, self.next_status, self.next_tally,
                   self.next_dog if self.interval else self.next_tick)

    def timeout(self) -> float:
        """Seconds the caller may block before wake() has work to do."""
        return max(0.0, self.due - time.monotonic()) if not self.hup else 0.0

    def wake(self) -> None:
        """Do whatever is due: a pending reload, the periodic checks, a watchdog ping, a status line."""
        if self.hup:
            self.hup = False
            self.reload()
        synced = self.syncer.take() if self.syncer is not None else None
        now = time.monotonic()
        if now >= self.next_tick or synced is not None:
            self.next_tick = now + TICK
            source = "sync" if synced is not None else "file"
            if self.watch.check():
                self.apply_path(self.cfg, self.registry)
                self.app.state.set(registry_version=self._registry_version(),
                                   **registry_figures(self.registry))
                self.event("registry_changed", source=source, entries=len(self.registry.entries),
                           version=synced.version if synced is not None else None,
                           digest=digest(self.registry.path))
            elif self.watch.rejected:
                self.watch.rejected = False
                self.event("registry_rejected", source=source, reason="the registry file is invalid; "
                           "the last good one stays (see the log)", digest=digest(self.registry.path))
            self._refresh_rules()
        if now >= self.next_tally:
            self.next_tally = now + TALLY_EVERY
            if self.tallied:
                self.flush_tally()
        if self.interval and now >= self.next_dog:
            self.notifier.watchdog()
            self.next_dog = now + self.interval
        if now >= self.next_status:
            self.next_status = now + STATUS_EVERY
            self.assess_health()
            text = self.status_text()
            if text != self.last_status:
                self.notifier.status(text)
                self.last_status = text
        self.due = self._due()

    def _refresh_rules(self) -> None:
        try:
            self.rules.refresh()
        except FirewallError as exc:  # keep enforcing with the installed rules; retried next tick
            log.error("rules refresh failed: %s", exc)

    def reload(self) -> None:
        """Re-read config and registry; apply them, or refuse and keep the running ones."""
        self.notifier.reloading()
        self.reloads += 1
        if self.path is None:
            self._reject(["no configuration file to reload"], "no_file")
        else:
            log.info("reload #%d: reading %s", self.reloads, self.path)
            try:
                new = load_config(self.path)
                reg = Registry.load(new.registry) if new.registry is not None else Registry()
            except ConfigError as exc:
                self._reject(exc.problems, "invalid")
            else:
                blockers = restart_needed(self.cfg, new)
                if blockers:
                    self._reject([f"{', '.join(blockers)} changed: a restart is needed "
                                  "(systemctl restart tunnelwatch)"], "restart_needed")
                else:
                    self._apply(new, reg)
        self.notifier.reloaded(self.status_text())

    def _reject(self, problems: list[str], reason: str) -> None:
        # one line per refusal (it was three: a headline, each problem, then the event=): the problems,
        # then the machine-readable tail. Formatted here, not by logging: the warning rate limiter keys
        # on the template, and a technician who reloads twice must see the refusal twice
        n = self.reloads
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more (tunnelwatch check-config "
                                           f"{self.path})" if len(problems) > 5 else "")
        head = f"{self.path} is invalid; keeping the running configuration: {shown}" if reason == "invalid" \
            else f"{shown}; keeping the running configuration"
        log.error(f"reload #{n} refused: {head} event=config_rejected reload={n} file={self.path} "
                  f"reason={reason} problems={len(problems)}")
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        self.app.state.set(config_check=f"reload refused at {when}: {problems[0]}")
        self.app.state.count("config_rejected", reason=reason)
        self.event("config_rejected", path=str(self.path)[:256], errors=[p[:256] for p in problems[:32]],
                   digest=digest(self.path))

    def _apply(self, new: RunConfig, reg: Registry) -> None:
        old = self.cfg
        changed = [f.name for f in fields(RunConfig)
                   if f.compare and getattr(old, f.name) != getattr(new, f.name)]
        if reg.entries != self.registry.entries:
            changed.append("registry")
        try:
            self.rules.apply(new, reg)
        except FirewallError as exc:
            self._reject([f"installing the new rules failed: {exc}"], "firewall")
            return
        self.apply_path(new, reg)
        self.health.uplink_grace = float(new.status.uplink_grace)
        if not self.verbose and (new.log_level, new.log_journal) != (old.log_level, old.log_journal):
            setup_logging(new.log_level, journal=new.log_journal)
        self.app.apply(new, reg)
        if self.reporter is not None:
            self.reporter.apply(new)
        if self.syncer is not None:
            self.syncer.apply(new)
        if self.reporter is not None or self.syncer is not None:
            self.app.state.set(registry_version=self._registry_version(reg))
        self._report_changes(old, new, reg, changed)
        self.cfg, self.registry = new, reg
        self.watch = RegistryWatch(reg)
        log.info("reload #%d: applied %s (%s)", self.reloads, self.path,
                 ", ".join(changed) or "nothing changed")

    def _registry_version(self, reg: Registry | None = None) -> str:
        """The status line's registry version, led by the signed version when registry sync is on."""
        text = registry_version(reg or self.registry)
        version = self.syncer.current_version() if self.syncer is not None else 0
        return f"v{version} (signed), {text}" if version else text

    def _report_changes(self, old: RunConfig, new: RunConfig, reg: Registry, changed: list[str]) -> None:
        conf = [c for c in changed if c != "registry"]
        if conf:
            self.event("config_changed", path=str(self.path)[:256], digest=digest(self.path),
                       summary=f"reload #{self.reloads}: {', '.join(conf)}"[:256], changes=conf[:32])
        pol = [c for c in conf if c in POLICY_FIELDS]
        if pol:
            self.event("policy_changed", summary=f"policy {', '.join(pol)} changed (reload #{self.reloads})",
                       changes=pol)
        if "registry" in changed:
            self.event("registry_changed", source="file", entries=len(reg.entries), digest=digest(reg.path))
