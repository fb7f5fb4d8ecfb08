"""The registry sync thread: the policy's input arriving from the ISP, owned by the policy side.

Every `report.registry_sync.interval` seconds a thread fetches the signed registry (regsync.py). A new
verified version is written to the registry file and handed to the main thread once (`take`), which
re-reads and applies it between packets; a refused document is logged and reported as
`registry_rejected`, and the current registry stays. The status state shows the last outcome, and
whether the registry in force is near or past the expiry its document set (`registry_stale`, reported
once per change as a `registry_stale` event; health reads it).

A document can also be pushed to the box (the MQTT uplink's retained registry topic, report/mqtt.py):
`offer` runs it through the same verification and the same handling. With a public key but no sync URL,
documents only arrive that way and no fetch thread runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from tunnelwatch.appliance.state import StatusState
from tunnelwatch.config.runconfig import RunConfig
from tunnelwatch.policy.regsync import RegistrySync, SyncResult

log = logging.getLogger(__name__)
PUSH_ONLY = "https://registry-push.invalid/"
Report = Callable[..., None]  # report(kind, **fields): an event upward


class RegistrySyncer:
    """Runs registry sync for one daemon while the config asks for it; follows reloads."""

    def __init__(self, state: StatusState, device_id: str, report: Report,
                 wake_main: Callable[[], None] = lambda: None) -> None:
        self.state = state
        self.device_id = device_id
        self.report = report
        self.wake_main = wake_main
        self.sync: RegistrySync | None = None
        self._result: SyncResult | None = None
        self._stop = threading.Event()
        self._cfg: RunConfig | None = None
        self._stale: str | None = None  # the staleness last reported (reported again when it changes)
        self._lock = threading.Lock()  # offer() comes from the uplink thread, start() from the main one
        self._early: bytes | None = None  # a document pushed before start(): handled by start()

    def start(self, cfg: RunConfig) -> None:
        """Start syncing when the config names a sync URL, a key and a registry file (never raises)."""
        with self._lock:
            self._start(cfg)
            early, self._early = self._early, None
        sync = self.sync
        if early is not None and sync is not None:
            self._handle(sync, lambda: sync.apply(early))

    def _start(self, cfg: RunConfig) -> None:
        self._cfg = cfg
        sc = cfg.report.registry_sync
        if sc.public_key is None:
            return
        if cfg.registry is None:
            log.error("registry sync: no `registry:` file configured to write the synced registry to; "
                      "sync off")
            return
        try:
            # push only (no URL): RegistrySync never fetches, the placeholder (RFC 2606 .invalid) is unused
            self.sync = RegistrySync(url=sc.url or PUSH_ONLY, public_key=sc.public_key,
                                     ca_file=_s(sc.ca_file), state_dir=str(cfg.report.state_dir),
                                     registry_path=str(cfg.registry), device_id=self.device_id,
                                     group=sc.group, accept_unscoped=sc.accept_unscoped)
        except ValueError as exc:
            log.error("registry sync: %s", exc)
            return
        if sc.url is None:
            return
        self._stop = threading.Event()
        threading.Thread(target=self._run, args=(self.sync, sc.interval, self._stop),
                         name="tunnelwatch-regsync", daemon=True).start()

    def apply(self, cfg: RunConfig) -> None:
        """A reloaded config: restart syncing when its sync section or registry file changed."""
        old = self._cfg
        if old is not None and (cfg.report.registry_sync, cfg.registry) == (old.report.registry_sync,
                                                                            old.registry):
            self._cfg = cfg
            return
        self.stop()
        self.start(cfg)

    def stop(self) -> None:
        """Stop the thread after its current fetch."""
        self._stop.set()
        self.sync = None

    def take(self) -> SyncResult | None:
        """The sync result that replaced the registry file, once (main thread)."""
        res, self._result = self._result, None
        return res

    def current_version(self) -> int:
        """The signed registry version in force (0 when sync is off)."""
        return self.sync.current_version() if self.sync is not None else 0

    def offer(self, body: bytes) -> None:
        """A document pushed to the box (MQTT): verified and applied exactly like a fetched one."""
        with self._lock:
            sync = self.sync
            if sync is None and self._cfg is None:
                self._early = body
                return
        if sync is None:
            log.warning("registry: a document was pushed but report.registry_sync.public_key or the "
                        "`registry:` file is not configured; ignored")
            return
        self._handle(sync, lambda: sync.apply(body))
        self.check_stale(sync)

    def _run(self, sync: RegistrySync, interval: int, stop: threading.Event) -> None:
        while not stop.is_set():
            self._handle(sync, sync.sync_once)
            self.check_stale(sync)
            stop.wait(interval)

    def _handle(self, sync: RegistrySync, attempt: Callable[[], SyncResult]) -> None:
        try:
            res = attempt()
        except Exception as exc:  # a bug in one fetch (or a pushed document) must not end syncing
            log.exception("registry sync failed")
            res = None
            self.state.set(registry_sync=f"error: {exc}", registry_sync_error=f"{exc}"[:200])
        if res is None:
            return
        self.state.set(registry_sync=f"v{sync.current_version()}: {res.message}"[:200],
                       registry_sync_error=None if res.ok else res.message[:200])
        if res.changed:
            log.info("registry sync: version %s applied to %s", res.version, sync.registry_path)
            self._result = res
            self.wake_main()
        elif not res.ok:
            log.error("registry sync: %s; keeping the current registry", res.message)
            self.report("registry_rejected", source="sync", reason=res.message[:256],
                        version=res.version, current_version=sync.current_version())

    def check_stale(self, sync: RegistrySync, now: float | None = None) -> str | None:
        """Record (status, event on change) whether the registry in force is near or past its expiry."""
        why = sync.stale(now)
        self.state.set(registry_stale=why)
        # "expires ... (5.2 h left)" changes every poll: report the state change, not the countdown
        kind = None if why is None else why.split(" ", 2)[1]
        expires = sync.expires()
        if kind != (None if self._stale is None else self._stale.split(" ", 2)[1]) and why and expires:
            log.warning("registry sync: %s", why)
            self.report("registry_stale", reason=why[:256], version=sync.current_version() or None,
                        expires=expires)
        self._stale = why
        return why


def _s(p: Path | None) -> str | None:
    return None if p is None else str(p)
