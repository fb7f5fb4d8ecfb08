"""Registry sync: fetch the ISP-signed registry document over HTTPS, verify it, and apply it atomically.

The document (format, signature, scope, validity window) is regdoc.py's; its names are re-exported here.
The registry file is replaced only when the document is authentic, unexpired, for this box (its device
id or configured group), newer than the applied version (kept in state_dir), and parses with the same
loader the daemon uses; otherwise the current file stays and the SyncResult says why. The applied
document's expiry is kept too, so a registry the ISP stopped renewing is reported stale. Also a CLI for
ISPs: keygen, sign, verify.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import http.client
import json
import os
import ssl
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from tunnelwatch.config.runconfig import ConfigError
from tunnelwatch.policy.regdoc import (
    FORMAT,
    SIG_CONTEXT,
    Rejected,
    check_scope,
    load_private_key,
    new_private_key,
    parse_time,
    public_b64,
    public_key_from_b64,
    rfc3339,
    sign_document,
    staleness,
    verify_document,
)
from tunnelwatch.policy.registry import parse_registry
from tunnelwatch.text import clean_text, digits

__all__ = ["FORMAT", "SIG_CONTEXT", "STATE_FILE", "RegistrySync", "Rejected", "SyncResult", "main",
           "public_key_from_b64", "sign_document", "verify_document"]
STATE_FILE = "registry-sync.json"
_CHUNK = 65536


@dataclass(frozen=True)
class SyncResult:
    """Outcome of one sync: ok=False means the current registry was kept; message says why."""

    ok: bool
    changed: bool
    version: int | None
    message: str

    def __post_init__(self) -> None:
        # the message quotes what a server sent (HTTP reason phrase, TLS errors): control characters
        # would forge log lines and fail the registry_rejected event's validation, losing the event
        object.__setattr__(self, "message", clean_text(self.message))


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)  # the rename itself must survive a power cut
    finally:
        os.close(dfd)


class RegistrySync:
    """Fetches, verifies and applies the box's signed registry document."""

    def __init__(self, *, url: str, public_key: str, ca_file: str | None, state_dir: str, registry_path: str,
                 max_bytes: int = 1_000_000, device_id: str | None = None, timeout: float = 30.0,
                 group: str | None = None, accept_unscoped: bool = False) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"registry URL must be https://host/...: {url!r}")
        self.url = parts
        self.key = public_key_from_b64(public_key)
        self.ca_file = ca_file
        self.state_dir = Path(state_dir)
        self.registry_path = Path(registry_path)
        self.max_bytes = max_bytes
        self.device_id = device_id
        self.timeout = timeout
        self.group = group
        # a document naming no box could be replayed onto any box signed for the same key: opt-in only
        self.accept_unscoped = accept_unscoped

    def state(self) -> dict[str, object]:
        """The applied version record ({} before the first sync)."""
        try:
            st = json.loads((self.state_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return st if isinstance(st, dict) else {}

    def current_version(self) -> int:
        """The version last applied (0 = none)."""
        v = self.state().get("version", 0)
        return v if isinstance(v, int) else 0

    def expires(self) -> float | None:
        """When the registry in force expires (unix seconds; None: its document set no expiry)."""
        return parse_time(self.state().get("expires"))

    def stale(self, now: float | None = None) -> str | None:
        """Why the synced registry in force is stale (expired or near expiry), or None."""
        st = self.state()
        return staleness(parse_time(st.get("expires")), parse_time(st.get("issued")),
                         time.time() if now is None else now)

    def sync_once(self) -> SyncResult:
        """Fetch, verify and apply; never replaces the registry on any error."""
        try:
            body = self.fetch()
        except Rejected as exc:
            return SyncResult(False, False, None, f"registry sync: {exc}")
        return self.apply(body)

    def fetch(self) -> bytes:
        """The raw document; raise Rejected on TLS, HTTP, size or truncation problems."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        host = self.url.hostname or ""
        conn = http.client.HTTPSConnection(host, self.url.port or 443, timeout=self.timeout, context=ctx)
        path = (self.url.path or "/") + (f"?{self.url.query}" if self.url.query else "")
        deadline = time.monotonic() + 4 * self.timeout
        try:
            conn.request("GET", path, headers={"Accept": "application/json", "User-Agent": "tunnelwatch"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise Rejected(f"server answered HTTP {resp.status} {resp.reason}")
            header = resp.getheader("Content-Length") or ""
            declared = int(header) if digits(header) else None
            if declared is not None and declared > self.max_bytes:
                raise Rejected(f"document too large ({declared} bytes > max {self.max_bytes})")
            body = b""
            while len(body) <= self.max_bytes:
                if time.monotonic() > deadline:
                    raise Rejected("download too slow (gave up)")
                chunk = resp.read(min(_CHUNK, self.max_bytes + 1 - len(body)))
                if not chunk:
                    break
                body += chunk
            if len(body) > self.max_bytes:
                raise Rejected(f"document too large (more than max {self.max_bytes} bytes; stopped reading)")
            if declared is not None and len(body) != declared:
                raise Rejected(f"truncated download ({len(body)} of {declared} bytes)")
            return body
        except http.client.IncompleteRead as exc:
            raise Rejected(f"truncated download ({len(exc.partial)} bytes, then the connection closed)") \
                from exc
        except ssl.SSLError as exc:
            raise Rejected(f"TLS failure talking to {host}: {exc}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise Rejected(f"cannot fetch from {host}: {exc}") from exc
        finally:
            conn.close()

    def apply(self, body: bytes) -> SyncResult:
        """Verify a downloaded document and, if newer and valid, install it atomically."""
        try:
            payload = verify_document(body, self.key)
        except Rejected as exc:
            return SyncResult(False, False, None, f"registry sync: {exc}")
        version, text = payload["version"], payload["registry"]
        if not isinstance(version, int) or not isinstance(text, str):  # verify_document checked; for mypy
            return SyncResult(False, False, None, "registry sync: malformed payload")
        try:
            check_scope(payload, device_id=self.device_id, group=self.group,
                        accept_unscoped=self.accept_unscoped)
        except Rejected as exc:
            return SyncResult(False, False, version, f"registry sync: {exc}")
        window = {k: payload[k] for k in ("issued", "expires") if isinstance(payload.get(k), str)}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".registry-sync.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two workers syncing at once must not interleave
            return self._apply_locked(version, text, window)

    def _apply_locked(self, version: int, text: str, window: dict[str, object]) -> SyncResult:
        st = self.state()
        current = st.get("version", 0)
        current = current if isinstance(current, int) else 0
        digest = hashlib.sha256(text.encode()).hexdigest()
        if version == current and st.get("sha256") == digest:
            # the ISP may re-sign the same version to extend its validity: keep the later expiry
            new_exp, old_exp = parse_time(window.get("expires")), parse_time(st.get("expires"))
            if new_exp is not None and old_exp is not None and new_exp > old_exp:
                _atomic_write(self.state_dir / STATE_FILE, json.dumps({**st, **window}).encode())
                return SyncResult(True, False, version, f"registry sync: version {version} is current, "
                                  f"now valid until {window['expires']}")
            return SyncResult(True, False, version, f"registry sync: version {version} is current")
        if version <= current:
            return SyncResult(False, False, version, f"registry sync: version {version} is not newer than "
                              f"the applied version {current} (replayed or reused version number)")
        try:
            entries = parse_registry(text, f"<registry v{version}>")
        except ConfigError as exc:
            return SyncResult(False, False, version, f"registry sync: version {version} is signed but "
                              "invalid: " + "; ".join(exc.problems[:5]))
        self._keep_last_good()
        _atomic_write(self.registry_path, text.encode())
        _atomic_write(self.state_dir / STATE_FILE, json.dumps(
            {"version": version, "sha256": digest, "applied": time.time(), **window}).encode())
        return SyncResult(True, True, version, f"registry sync: applied version {version} "
                          f"({len(entries)} registrations, previously {current})")

    def _keep_last_good(self) -> None:
        try:
            old = self.registry_path.read_text(encoding="utf-8")
            parse_registry(old, str(self.registry_path))
        except (OSError, UnicodeDecodeError, ConfigError):
            return  # nothing good to keep: leave an older last-good copy alone
        _atomic_write(self.registry_path.with_name(self.registry_path.name + ".last-good"), old.encode())


def main(argv: list[str] | None = None) -> int:
    """`python -m tunnelwatch.policy.regsync keygen|sign|verify`: the ISP side of registry signing."""
    ap = argparse.ArgumentParser(prog="tunnelwatch registry",
                                 description="Sign and check tunnelwatch registry documents.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    kg = sub.add_parser("keygen", help="write a private key (PEM, 0600); print the public key")
    kg.add_argument("--out", required=True)
    sg = sub.add_parser("sign", help="print the signed document for a registry file")
    sg.add_argument("--key", required=True)
    sg.add_argument("--version", type=int, required=True)
    scope = sg.add_mutually_exclusive_group()
    scope.add_argument("--device", help="the one box this document is for")
    scope.add_argument("--group", help="the boxes configured with report.registry_sync.group GROUP")
    sg.add_argument("--valid-days", type=float, default=30.0,
                    help="expires this many days after signing (default 30; 0: no expiry)")
    sg.add_argument("registry")
    vf = sub.add_parser("verify", help="check a document against a public key; print its version")
    vf.add_argument("--public-key", required=True)
    vf.add_argument("document")
    a = ap.parse_args(argv)
    if a.cmd == "keygen":
        print(public_b64(new_private_key(a.out)))
        return 0
    if a.cmd == "sign":
        text = Path(a.registry).read_text(encoding="utf-8")
        if a.version < 1:
            print("error: --version must be >= 1", file=sys.stderr)
            return 2
        try:
            parse_registry(text, a.registry)
        except ConfigError as exc:
            print("\n".join(exc.problems), file=sys.stderr)
            return 78
        if not (a.device or a.group):
            print("warning: neither --device nor --group: boxes refuse this document unless configured "
                  "with report.registry_sync.accept_unscoped: true", file=sys.stderr)
        expires = rfc3339(time.time() + a.valid_days * 86_400) if a.valid_days > 0 else None
        sys.stdout.buffer.write(sign_document(load_private_key(a.key), a.version, text, device=a.device,
                                              group=a.group, expires=expires))
        return 0
    try:
        payload = verify_document(Path(a.document).read_bytes(), public_key_from_b64(a.public_key))
    except (Rejected, ValueError) as exc:
        print(f"rejected: {exc}", file=sys.stderr)
        return 1
    print(f"version {payload['version']} issued {payload.get('issued')} expires {payload.get('expires')} "
          f"device {payload.get('device')} group {payload.get('group')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
