"""The root-only local side of the status: the unix socket (one JSON snapshot per connection, mode 0600,
never two daemons on one path), fetching a snapshot from it, and `tunnelwatch status`."""

from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import sys
from contextlib import suppress
from typing import Final

from tunnelwatch.appliance import statuspage
from tunnelwatch.appliance.hostview import host_decisions, render_host, valid_host
from tunnelwatch.appliance.state import StatusState
from tunnelwatch.text import printable

DEFAULT_SOCKET: Final = "/run/tunnelwatch/status.sock"
_SNAPSHOT_MAX: Final = 4 << 20  # bytes of one snapshot read from the socket


class _SocketHandler(socketserver.BaseRequestHandler):
    server: UnixServer

    def handle(self) -> None:
        self.request.settimeout(5)
        with suppress(OSError):
            self.request.sendall(json.dumps(self.server.state.snapshot()).encode() + b"\n")


class UnixServer(socketserver.ThreadingUnixStreamServer):
    """The status socket: bound under a temporary name, chmod 0600, then renamed into place."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, state: StatusState) -> None:
        self.state = state
        self.inode = 0
        super().__init__(path, _SocketHandler)

    def server_bind(self) -> None:
        path = str(self.server_address)
        if _answers(path):
            raise OSError(f"{path}: another daemon is answering on this status socket")
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        # bind under a temporary name, chmod, then rename: the socket is never reachable with wider rights
        tmp = f"{path}.{os.getpid()}.tmp"
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        self.socket.bind(tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        self.inode = os.stat(path).st_ino


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def fetch_snapshot(path: str, timeout: float = 5.0) -> dict[str, object]:
    """One snapshot from the daemon's unix socket; raises OSError or ValueError."""
    chunks: list[bytes] = []
    size = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        while size <= _SNAPSHOT_MAX:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    snap = json.loads(b"".join(chunks))
    if not isinstance(snap, dict):
        raise ValueError("not a status snapshot")
    return snap


def cli_status(args: argparse.Namespace) -> int:
    """`tunnelwatch status`: the running daemon's status; exit 0 when healthy, 1 otherwise or unreachable."""
    path = getattr(args, "socket", None) or DEFAULT_SOCKET
    try:
        snap = fetch_snapshot(path)
    except FileNotFoundError:
        print(f"tunnelwatch: error: no status socket at {path}: is the daemon running?", file=sys.stderr)
        return 1
    except PermissionError:
        print(f"tunnelwatch: error: {path}: permission denied (the status socket is root-only)",
              file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"tunnelwatch: error: {path}: {exc}", file=sys.stderr)
        return 1
    host = getattr(args, "host", None)
    if host is not None and not valid_host(host):
        print(f"tunnelwatch: error: --host {printable(host, 80)!r} is not an address", file=sys.stderr)
        return 2
    if host is not None:
        snap["recent"] = host_decisions(snap, host)
    if getattr(args, "json", False):
        print(json.dumps(snap, indent=2))
    elif host is not None:
        sys.stdout.write(render_host(snap, host))
    else:
        sys.stdout.write(statuspage.render_summary(snap))
    return 0 if snap.get("health") == "ok" else 1
