"""The registry sync thread, without a server: started only when the config asks for it, a changed
registry handed to the main thread once, a refused one reported, a failing fetch kept from ending the
loop, and reloads that restart syncing only when its settings changed. (A real signed sync over HTTPS:
tests/integration/test_regsync_https.py.)"""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any

import pytest

from tunnelwatch.appliance.state import StatusState
from tunnelwatch.config.runconfig import RunConfig, parse_config
from tunnelwatch.policy import syncer as syncer_mod
from tunnelwatch.policy.regsync import SyncResult
from tunnelwatch.policy.syncer import RegistrySyncer

KEY = base64.b64encode(bytes(range(32))).decode()


class _FakeSync:
    """Stands in for regsync.RegistrySync: hands out scripted results, then stops the loop."""

    made: list[_FakeSync] = []

    def __init__(self, *, results: list[Any] | None = None, stop: threading.Event | None = None,
                 **kw: Any) -> None:
        self.kw = kw
        self.registry_path = kw.get("registry_path")
        self.results = list(results or [])
        self.stop = stop
        self.calls = threading.Event()
        self.version = 7
        self.stale_reason: str | None = None
        self.expiry: float | None = None
        _FakeSync.made.append(self)

    def stale(self, now: float | None = None) -> str | None:
        return self.stale_reason

    def expires(self) -> float | None:
        return self.expiry

    def current_version(self) -> int:
        return self.version

    def apply(self, body: bytes) -> SyncResult | None:
        """A pushed document (offer): the next scripted result, whatever the body."""
        self.kw.setdefault("bodies", []).append(body)
        return self.sync_once()

    def sync_once(self) -> SyncResult | None:
        self.calls.set()
        if not self.results:
            return None
        res = self.results.pop(0)
        if not self.results and self.stop is not None:
            self.stop.set()
        if isinstance(res, Exception):
            raise res
        return res  # type: ignore[no-any-return]


def _cfg(tmp: Path, url: str | None = "https://isp.example/registry", registry: bool = True,
         interval: int = 3600) -> RunConfig:
    text = f"report:\n  state_dir: {tmp}\n"
    if url:
        text += f"  registry_sync: {{url: '{url}', public_key: '{KEY}', interval: {interval}}}\n"
    if registry:
        (tmp / "registry.yaml").write_text("[]\n")
        text += f"registry: {tmp / 'registry.yaml'}\n"
    return parse_config(text)


def _syncer(events: list[tuple[str, dict[str, object]]] | None = None,
            wake: Any = lambda: None) -> RegistrySyncer:
    st = StatusState(device_id="d", version="v", mode="enforce")
    out = [] if events is None else events
    return RegistrySyncer(st, "cpe-1", lambda kind, **f: out.append((kind, f)), wake)


def _regsync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tunnelwatch-regsync" and t.is_alive()]


@pytest.fixture(autouse=True)
def fake_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    _FakeSync.made.clear()
    monkeypatch.setattr(syncer_mod, "RegistrySync", _FakeSync)


def test_without_a_url_or_registry_file_nothing_starts(tmp_path: Path) -> None:
    before = len(_regsync_threads())
    s = _syncer()
    s.start(_cfg(tmp_path, url=None))
    s.start(_cfg(tmp_path, registry=False))
    assert s.sync is None and _FakeSync.made == [] and len(_regsync_threads()) == before
    assert s.take() is None and s.current_version() == 0


def test_a_changed_registry_is_handed_over_once_and_wakes_the_main_thread(tmp_path: Path) -> None:
    woken = threading.Event()
    s = _syncer(wake=woken.set)
    stop = threading.Event()
    res = SyncResult(True, True, 8, "applied version 8")
    s._run(_FakeSync(results=[res], stop=stop, registry_path="r.yaml"), 3600, stop)  # type: ignore[arg-type]
    assert woken.is_set()
    assert s.take() is res and s.take() is None
    assert s.state.snapshot()["registry_sync"] == "v7: applied version 8"


def test_a_refused_document_is_reported_and_nothing_is_handed_over(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, object]]] = []
    s = _syncer(events)
    stop = threading.Event()
    bad = SyncResult(False, False, 9, "bad signature")
    s._run(_FakeSync(results=[bad], stop=stop), 3600, stop)  # type: ignore[arg-type]
    assert s.take() is None
    assert events == [("registry_rejected", {"source": "sync", "reason": "bad signature", "version": 9,
                                             "current_version": 7})]


def test_a_failing_fetch_does_not_end_syncing(tmp_path: Path) -> None:
    s = _syncer()
    stop = threading.Event()
    res = SyncResult(True, True, 8, "applied")
    fake = _FakeSync(results=[RuntimeError("boom"), res], stop=stop)
    s._run(fake, 0, stop)  # type: ignore[arg-type]
    assert s.take() is res and fake.results == []


def test_unchanged_same_version_is_only_shown(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, object]]] = []
    s = _syncer(events)
    stop = threading.Event()
    s._run(_FakeSync(results=[SyncResult(True, False, 7, "unchanged")], stop=stop), 3600,  # type: ignore[arg-type]
           stop)
    assert s.take() is None and events == []
    assert s.state.snapshot()["registry_sync"] == "v7: unchanged"


def test_start_runs_a_thread_and_reload_restarts_only_on_change(tmp_path: Path) -> None:
    s = _syncer()
    cfg = _cfg(tmp_path)
    try:
        s.start(cfg)
        (first,) = _FakeSync.made
        assert first.calls.wait(5), "the sync thread never fetched"
        assert first.kw["url"] == "https://isp.example/registry" and first.kw["device_id"] == "cpe-1"
        assert first.kw["registry_path"] == str(tmp_path / "registry.yaml")
        assert s.current_version() == 7
        s.apply(_cfg(tmp_path))  # same sync settings (a new, equal config): nothing restarts
        assert len(_FakeSync.made) == 1 and s.sync is first
        s.apply(_cfg(tmp_path, url="https://isp.example/other"))
        assert len(_FakeSync.made) == 2 and s.sync is _FakeSync.made[1]
        s.apply(_cfg(tmp_path, url=None))
        assert s.sync is None and s.current_version() == 0
    finally:
        s.stop()


def test_scope_settings_reach_the_sync(tmp_path: Path) -> None:
    text = (f"report:\n  state_dir: {tmp_path}\n  registry_sync: {{url: 'https://isp.example/r', "
            f"public_key: '{KEY}', group: north-1, accept_unscoped: true}}\n"
            f"registry: {tmp_path / 'registry.yaml'}\n")
    (tmp_path / "registry.yaml").write_text("[]\n")
    s = _syncer()
    s.start(parse_config(text))
    s.stop()
    kw = _FakeSync.made[0].kw
    assert kw["group"] == "north-1" and kw["accept_unscoped"] is True and kw["device_id"] == "cpe-1"


def test_a_stale_registry_is_reported_once_per_change_and_shown() -> None:
    events: list[tuple[str, dict[str, object]]] = []
    s = _syncer(events)
    fake = _FakeSync()
    assert s.check_stale(fake) is None and events == []  # type: ignore[arg-type]
    fake.expiry = 1_800_000_000.0
    fake.stale_reason = "registry expires at 2027-01-15T08:00:00Z (5.0 h left)"
    s.check_stale(fake)  # type: ignore[arg-type]
    assert s.state.snapshot()["registry_stale"] == fake.stale_reason
    fake.stale_reason = "registry expires at 2027-01-15T08:00:00Z (4.0 h left)"  # the countdown: no event
    s.check_stale(fake)  # type: ignore[arg-type]
    assert [k for k, _ in events] == ["registry_stale"]
    assert events[0][1]["expires"] == 1_800_000_000.0 and events[0][1]["version"] == 7
    fake.stale_reason = "registry expired at 2027-01-15T08:00:00Z: the ISP has not sent a newer one"
    s.check_stale(fake)  # type: ignore[arg-type]
    assert [k for k, _ in events] == ["registry_stale", "registry_stale"]
    assert "expired" in str(events[1][1]["reason"])
    fake.stale_reason = None  # a renewed document: shown fresh again, nothing to report
    s.check_stale(fake)  # type: ignore[arg-type]
    assert s.state.snapshot().get("registry_stale") is None and len(events) == 2


def _push_cfg(tmp: Path) -> RunConfig:
    (tmp / "registry.yaml").write_text("[]\n")
    return parse_config(f"report:\n  state_dir: {tmp}\n  registry_sync: {{public_key: '{KEY}'}}\n"
                        f"registry: {tmp / 'registry.yaml'}\n")


def test_push_only_sync_has_no_thread_and_takes_offered_documents(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, object]]] = []
    woken = threading.Event()
    s = _syncer(events, wake=woken.set)
    before = len(_regsync_threads())
    try:
        s.start(_push_cfg(tmp_path))
        (fake,) = _FakeSync.made
        assert fake.kw["url"] == syncer_mod.PUSH_ONLY and len(_regsync_threads()) == before
        good = SyncResult(True, True, 8, "applied version 8")
        bad = SyncResult(False, False, 9, "bad signature")
        fake.results = [good, bad]
        s.offer(b"doc-8")
        assert woken.is_set() and s.take() is good
        s.offer(b"doc-9")
        assert s.take() is None and events == [("registry_rejected", {
            "source": "sync", "reason": "bad signature", "version": 9, "current_version": 7})]
        assert fake.kw["bodies"] == [b"doc-8", b"doc-9"]
    finally:
        s.stop()


def test_a_document_offered_before_start_is_handled_by_start(tmp_path: Path) -> None:
    s = _syncer()
    s.offer(b"early")  # the MQTT uplink may connect before the syncer starts
    _FakeSync.made.clear()
    s.start(_push_cfg(tmp_path))
    (fake,) = _FakeSync.made
    assert fake.kw["bodies"] == [b"early"]
    s.stop()


def test_an_offer_without_sync_configured_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                     ) -> None:
    s = _syncer()
    s.start(_cfg(tmp_path, url=None))
    s.offer(b"doc")
    assert s.take() is None and _FakeSync.made == [] and "ignored" in caplog.text
