"""First-boot provisioning of a tunnelwatch appliance from a file on the boot (FAT) partition.

Owns tunnelwatch-provision.yaml (format: image/README.md): accepts it only with a detached Ed25519
signature (tunnelwatch-provision.yaml.sig) by a provisioning key baked into the image
(/usr/lib/tunnelwatch/provisioning.pub), and only on an unprovisioned box or for this box's own device
id; validates it completely (its own keys, then the resulting daemon configuration with `tunnelwatch
check-config` on a staged copy of /etc/tunnelwatch), and only then applies it: the drop-in
tunnelwatch.yaml.d/50-provision.yaml, private files, hostname, and ssh key-only access. The file is
removed from the card afterwards (it may hold secrets) and a result file without secrets is left in its
place, so a technician reading the card in a PC sees what happened.
Runs as tunnelwatch-provision.service before tunnelwatch.service; every line it prints reaches the
console and the journal prefixed "tunnelwatch-provision:".
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FILENAME = "tunnelwatch-provision.yaml"
SIGNATURE = FILENAME + ".sig"
RESULT = "tunnelwatch-provision.result"
#: the ISP's provisioning public keys, one base64 (32 raw bytes) per line; written by the image build
PUBKEY = "usr/lib/tunnelwatch/provisioning.pub"
#: domain separation: a signature the ISP made for anything else (a registry document) cannot pass here
SIG_CONTEXT = b"tunnelwatch provision v1\x00"
MAX_BYTES = 1 << 20  # a provisioning file is a few kB; a card with a huge file is refused, not read
DROPIN = "50-provision.yaml"
KEYS = {"version", "device_id", "hostname", "config", "files", "ssh_authorized_keys"}
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SSH = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh.com) "
                  r"[A-Za-z0-9+/=]{16,}( [^\n]{0,200})?")


def say(msg: str) -> None:
    """One log line for the console and the journal."""
    print(f"tunnelwatch-provision: {msg}", flush=True)


class Rejected(Exception):
    """The provisioning file is invalid; the message lists every problem."""


def validate(doc: object) -> dict[str, Any]:
    """Check the file's own keys; every problem at once, as `key: message`."""
    if not isinstance(doc, dict):
        raise Rejected("the file must be a YAML mapping (key: value lines)")
    errs: list[str] = []
    for key in sorted(set(doc) - KEYS, key=str):
        errs.append(f"{key}: unknown key (known: {', '.join(sorted(KEYS))})")
    if doc.get("version") != 1:
        errs.append(f"version: must be 1 (got {doc.get('version')!r})")
    did = doc.get("device_id")
    if not (isinstance(did, str) and _ID.fullmatch(did)):
        errs.append(f"device_id: required, 1-64 of A-Z a-z 0-9 . _ - (got {did!r})")
    host = doc.get("hostname", did if isinstance(did, str) and _HOST.fullmatch(did) else None)
    if host is not None and not (isinstance(host, str) and _HOST.fullmatch(host)):
        errs.append(f"hostname: 1-63 of a-z 0-9 - (got {host!r}); or leave it out")
    cfg = doc.get("config", {})
    if not isinstance(cfg, dict):
        errs.append("config: must be a mapping in the tunnelwatch.yaml format")
    elif isinstance(cfg.get("discovery"), dict) and "device_id" in cfg["discovery"]:
        errs.append("config.discovery.device_id: set device_id at the top of the file instead")
    files = doc.get("files", {})
    if not isinstance(files, dict):
        errs.append("files: must be a mapping of file name to content")
    else:
        for name, content in files.items():
            if not (isinstance(name, str) and _FILE.fullmatch(name)) or name.endswith(".yaml"):
                errs.append(f"files.{name}: a plain file name (no '/', not *.yaml)")
            elif not isinstance(content, str):
                errs.append(f"files.{name}: content must be text")
    keys = doc.get("ssh_authorized_keys", [])
    if not isinstance(keys, list):
        errs.append("ssh_authorized_keys: must be a list of public key lines")
    else:
        for i, k in enumerate(keys):
            if not (isinstance(k, str) and _SSH.fullmatch(k.strip())):
                errs.append(f"ssh_authorized_keys[{i}]: not an OpenSSH public key line (ssh-ed25519 AAAA...)")
    if errs:
        raise Rejected("; ".join(errs))
    return {"device_id": did, "hostname": host, "config": cfg if isinstance(cfg, dict) else {},
            "files": files, "ssh_keys": [k.strip() for k in keys]}


def trusted_keys(root: Path) -> list[Ed25519PublicKey]:
    """The image's provisioning keys; Rejected when the image has none or the key file is broken."""
    path = root / PUBKEY
    try:
        lines = path.read_text(encoding="ascii").splitlines()[:64]
    except FileNotFoundError:
        raise Rejected(f"this image has no provisioning key (/{PUBKEY}): it was built without "
                       "PROVISION_PUBKEY and accepts no provisioning file; use an image built for your ISP")\
            from None
    except (OSError, UnicodeDecodeError) as exc:
        raise Rejected(f"cannot read the provisioning key /{PUBKEY}: {exc}") from exc
    keys: list[Ed25519PublicKey] = []
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            keys.append(Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError):
            raise Rejected(f"/{PUBKEY}:{n}: not base64 of a 32-byte Ed25519 public key") from None
    if not keys:
        raise Rejected(f"/{PUBKEY} lists no key: this image accepts no provisioning file")
    return keys


def check_signature(raw: bytes, sig_path: Path, keys: list[Ed25519PublicKey]) -> None:
    """Rejected unless sig_path holds a valid signature of exactly these bytes by one of the keys."""
    if not sig_path.is_file():
        raise Rejected(f"unsigned: no {sig_path.name} beside the file (the ISP signs provisioning files: "
                       "python -m tunnelwatch.isp.provsign sign)")
    try:
        text = sig_path.read_bytes()[:4096].decode("ascii").strip()
        sig = base64.b64decode(text, validate=True)
    except (OSError, UnicodeDecodeError, binascii.Error, ValueError):
        raise Rejected(f"{sig_path.name}: not a base64 signature") from None
    if len(sig) != 64:
        raise Rejected(f"{sig_path.name}: an Ed25519 signature is 64 bytes (got {len(sig)})")
    for key in keys:
        try:
            key.verify(sig, SIG_CONTEXT + raw)
            return
        except InvalidSignature:
            continue
    raise Rejected("bad signature: the file was changed after signing, or signed by a key this image does "
                   "not trust")


def provisioned_id(root: Path) -> str | None:
    """The device id this box was provisioned with (None: a factory-fresh box)."""
    try:
        rec = json.loads((root / "var/lib/tunnelwatch-provision/applied.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError):
        # a record that exists but is unreadable is not a factory box: no id can match it
        return ""
    did = rec.get("device_id") if isinstance(rec, dict) else None
    return did if isinstance(did, str) else ""


PATH_KEYS = {"registry", "client_cert", "client_key", "lists", "path"}


def _refs(node: object, names: set[str], key: str = "") -> object:
    """Path values naming a file from `files:` point at it from the drop-in directory (../NAME)."""
    if isinstance(node, dict):
        return {k: _refs(v, names, str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_refs(v, names, key) for v in node]
    is_path = key.endswith("_file") or key in PATH_KEYS
    return f"../{node}" if is_path and isinstance(node, str) and node in names else node


def dropin_text(p: dict[str, Any]) -> str:
    """The drop-in merged over tunnelwatch.yaml: the ISP's settings plus the device id."""
    cfg: dict[str, Any] = dict(_refs(p["config"], set(p["files"])))  # type: ignore[call-overload]
    disc = dict(cfg.get("discovery") or {})
    disc["device_id"] = p["device_id"]
    cfg["discovery"] = disc
    head = "# Written by tunnelwatch-provision from the boot partition; re-provision instead of editing.\n"
    return head + yaml.safe_dump(cfg, sort_keys=True, default_flow_style=False)


def write_private(path: Path, text: str) -> None:
    """Atomically write a root-only (0600) file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def check_config(etc: Path, p: dict[str, Any], tunnelwatch: str) -> None:
    """Stage a copy of the config directory with the new files and run `tunnelwatch check-config` on it."""
    with tempfile.TemporaryDirectory(prefix="tw-provision-") as tmp:
        stage = Path(tmp) / "tunnelwatch"
        shutil.copytree(etc, stage, symlinks=True)
        for name, content in p["files"].items():
            write_private(stage / name, content)
        write_private(stage / "tunnelwatch.yaml.d" / DROPIN, dropin_text(p))
        res = subprocess.run([tunnelwatch, "check-config", str(stage / "tunnelwatch.yaml")],
                             capture_output=True, text=True, timeout=120, check=False)
        if res.returncode != 0:
            lines = (res.stdout + res.stderr).replace(str(stage) + "/", "").strip().splitlines()
            raise Rejected("check-config: " + "; ".join(lines[:20]))


FORWARDING = "etc/sysctl.d/61-tunnelwatch-forwarding.conf"


def apply(etc: Path, root: Path, p: dict[str, Any], *, live: bool) -> None:
    """Install the validated settings; `live` also sets the running hostname, forwarding and sshd."""
    for name, content in p["files"].items():
        write_private(etc / name, content)
    write_private(etc / "tunnelwatch.yaml.d" / DROPIN, dropin_text(p))
    # the factory state routes nothing (60-tunnelwatch.conf): a provisioned box is the customer's router
    fwd = root / FORWARDING
    fwd.parent.mkdir(parents=True, exist_ok=True)
    fwd.write_text("# written by tunnelwatch-provision: this box is provisioned, it routes\n"
                   "net.ipv4.ip_forward = 1\nnet.ipv6.conf.all.forwarding = 1\n")
    if live:
        subprocess.run(["sysctl", "-q", "-p", str(fwd)], check=False, capture_output=True, timeout=30)
    host = p["hostname"]
    if host:
        (root / "etc/hostname").write_text(host + "\n")
        hosts = root / "etc/hosts"
        lines = [ln for ln in (hosts.read_text().splitlines() if hosts.exists() else [])
                 if not ln.startswith("127.0.1.1")]
        hosts.write_text("\n".join([*lines, f"127.0.1.1\t{host}"]) + "\n")
        if live:
            socket.sethostname(host)
    if p["ssh_keys"]:
        write_private(root / "root/.ssh/authorized_keys", "\n".join(p["ssh_keys"]) + "\n")
        os.chmod(root / "root/.ssh", 0o700)
        if live:
            # host keys are made here, per box: the image ships none, so no two boxes share them
            subprocess.run(["ssh-keygen", "-A"], check=True, capture_output=True, timeout=120)
            subprocess.run(["systemctl", "enable", "ssh.service"], check=True, capture_output=True,
                           timeout=60)
            subprocess.run(["systemctl", "start", "--no-block", "ssh.service"], check=False, timeout=60)


def main(argv: list[str] | None = None) -> int:
    """Find, validate and apply the provisioning file; exit 0 when applied or absent, 1 when rejected."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boot-dir", action="append", help="where to look (default /boot/firmware, /boot/efi)")
    ap.add_argument("--root", default="/", help="the system to provision (tests use a scratch tree)")
    ap.add_argument("--tunnelwatch", default="/usr/bin/tunnelwatch", help="the CLI used for check-config")
    args = ap.parse_args(argv)
    root = Path(args.root)
    live = args.root == "/"
    boots = [Path(b) for b in (args.boot_dir or [root / "boot/firmware", root / "boot/efi"])]
    found = [b / FILENAME for b in boots if (b / FILENAME).is_file()]
    if not found:
        say("no provisioning file on the boot partition: keeping the current settings")
        return 0
    src = found[0]
    with src.open("rb") as f:
        raw = f.read(MAX_BYTES + 1)
    digest = hashlib.sha256(raw).hexdigest()
    say(f"reading {src} (sha256 {digest[:16]})")
    etc = root / "etc/tunnelwatch"
    state = root / "var/lib/tunnelwatch-provision"
    result = src.with_name(RESULT)
    try:
        if len(raw) > MAX_BYTES:
            raise Rejected(f"file larger than {MAX_BYTES} bytes")
        # authenticity first: nothing in an unsigned file is parsed, let alone trusted
        check_signature(raw, src.with_name(SIGNATURE), trusted_keys(root))
        say("signature ok")
        try:
            doc = yaml.safe_load(raw.decode("utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:
            raise Rejected(f"not valid YAML: {exc}".replace("\n", " ")) from exc
        p = validate(doc)
        had = provisioned_id(root)
        if had is not None and had != p["device_id"]:
            # a signed file for box A copied onto box B must not turn B into A
            raise Rejected(f"device_id: this box is already provisioned as {had!r}; a file for "
                           f"{p['device_id']!r} is refused (re-provisioning keeps the device id)")
        check_config(etc, p, args.tunnelwatch)
    except Rejected as exc:
        say(f"REJECTED {src}: {exc}")
        say("nothing was changed; fix the file on the boot partition and reboot")
        result.write_text(f"REJECTED {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n{exc}\n")
        os.sync()
        return 1
    say("check-config ok")
    apply(etc, root, p, live=live)
    record = {"applied": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sha256": digest,
              "device_id": p["device_id"], "hostname": p["hostname"], "files": sorted(p["files"]),
              "ssh": bool(p["ssh_keys"])}
    state.mkdir(parents=True, exist_ok=True)
    write_private(state / "applied.json", json.dumps(record, indent=2) + "\n")
    # the card may leave the box: secrets must not stay on it, so the file goes and a summary stays
    result.write_text("APPLIED " + json.dumps(record) + "\n")
    src.unlink()
    src.with_name(SIGNATURE).unlink(missing_ok=True)
    os.sync()  # an appliance may lose power right after its first boot
    say(f"applied: device_id={p['device_id']} hostname={p['hostname']} files={len(p['files'])} "
        f"ssh={'key-only' if p['ssh_keys'] else 'off'} forwarding=on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
