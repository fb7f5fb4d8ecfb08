"""The reference collector's storage: one JSONL file per device plus batches.log, each event stored once.

De-duplication by batch id and, beneath it, by event id (a canonical hash of the event), both rebuilt from
disk at start-up; events are fsync'd before their batch id is.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any


def event_key(ev: dict[str, Any]) -> str:
    """An event's identity for de-duplication: its id, else a hash of its canonical JSON."""
    for key in ("id", "event_id"):
        value = ev.get(key)
        if isinstance(value, str) and value:
            return value
    canonical = json.dumps(ev, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


class Store:
    """Per-device JSONL files with batch-id and event-id de-duplication."""

    def __init__(self, directory: str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._batches: set[str] = set()
        self._seen: dict[str, set[str]] = {}
        self._cond = threading.Condition(self._lock)
        self._load()

    def _load(self) -> None:
        blog = self.dir / "batches.log"
        if blog.exists():
            for line in blog.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    self._batches.add(parts[1])
        for path in self.dir.glob("*.jsonl"):
            seen = self._seen.setdefault(path.stem, set())
            with path.open() as f:
                for line in f:
                    try:
                        seen.add(event_key(json.loads(line)))
                    except (ValueError, AttributeError):
                        continue  # a torn last line from a crash: its batch was never acknowledged

    def add(self, device: str, batch_id: str, events: list[dict[str, Any]]) -> tuple[int, int, bool]:
        """Store a batch once: (events stored, duplicate events, batch id already known)."""
        with self._cond:
            if batch_id in self._batches:
                return 0, len(events), True
            seen = self._seen.setdefault(device, set())
            fresh: list[dict[str, Any]] = []
            for ev in events:
                k = event_key(ev)
                if k not in seen:
                    seen.add(k)
                    fresh.append(ev)
            if fresh:
                _append(self.dir / f"{device}.jsonl", "".join(json.dumps(e) + "\n" for e in fresh))
            _append(self.dir / "batches.log", f"{device} {batch_id} {len(fresh)} {time.time():.3f}\n")
            self._batches.add(batch_id)
            self._cond.notify_all()
            return len(fresh), len(events) - len(fresh), False

    def events(self, device: str) -> list[dict[str, Any]]:
        """Every stored event of a device, in arrival order."""
        path = self.dir / f"{device}.jsonl"
        with self._lock:
            if not path.exists():
                return []
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def count(self, device: str) -> int:
        """Number of distinct events stored for a device."""
        with self._lock:
            return len(self._seen.get(device, ()))

    def wait_for(self, device: str, n: int, timeout: float) -> bool:
        """Block until at least n events of device are stored, or timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._seen.get(device, ())) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
