"""Local status for technicians: the LAN web page / JSON API / Prometheus
endpoint, the root-only unix socket, and `tunnelwatch status`.

The daemon feeds a StatusState (thread-safe, bounded); StatusServer serves read-only views of it from
daemon threads, so a slow or hostile client never delays packet handling. HTTP is served only with a
token: StatusServer refuses an HTTP address without one (ValueError), so a misconfigured box never shows
its flows unauthenticated. The token goes in `Authorization: Bearer TOKEN` (all paths) or `?token=TOKEN`
(the HTML page only, so a browser can open it; it then sits in the browser history: use a status-only
token). The unix socket (mode 0600, root) answers one JSON snapshot per connection without a token.
Rendering lives in statuspage.py.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import re
import socket
import socketserver
import sys
import threading
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from tunnelwatch.appliance import statuspage
from tunnelwatch.appliance.hostview import host_decisions, render_host, valid_host
from tunnelwatch.appliance.metrics import render_metrics
from tunnelwatch.appliance.state import StatusState
from tunnelwatch.text import printable

log = logging.getLogger(__name__)

DEFAULT_SOCKET: Final = "/run/tunnelwatch/status.sock"
MAX_CONNECTIONS: Final = 32  # concurrent HTTP connections per listening address; more are closed at once
MAX_PER_CLIENT: Final = 4  # of those, from one client address: one LAN host cannot lock the others out
REQUEST_DEADLINE: Final = 5.0  # seconds for a whole request (a byte every few seconds does not extend it)
MAX_REQUEST_BYTES: Final = 8192  # request line + headers; GET has no body
_SNAPSHOT_MAX: Final = 4 << 20  # bytes of one snapshot read from the socket
_TOKEN_RE: Final = re.compile(r"(?i)(token=)[^&\s]*")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 16

    def __init__(self, addr: tuple[Any, ...], state: StatusState, token: str) -> None:
        self.state = state
        self.token = token.encode()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.per_client: dict[str, int] = {}
        self.per_client_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would reverse-resolve the address (getfqdn): a DNS wait for nothing.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        host = str(client_address[0])
        with self.per_client_lock:
            if self.per_client.get(host, 0) >= MAX_PER_CLIENT:
                self.shutdown_request(request)
                return
            if not self.slots.acquire(blocking=False):
                self.shutdown_request(request)
                return
            self.per_client[host] = self.per_client.get(host, 0) + 1
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # the whole request has a deadline: the socket timeout alone restarts with every byte received
        timer = threading.Timer(REQUEST_DEADLINE, _cut, (request,))
        timer.daemon = True
        timer.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            timer.cancel()
            host = str(client_address[0])
            with self.per_client_lock:
                left = self.per_client.get(host, 1) - 1
                if left > 0:
                    self.per_client[host] = left
                else:
                    self.per_client.pop(host, None)
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("status http: error serving %s", client_address, exc_info=True)


def _page_params(query: str) -> dict[str, Any]:
    """The page's own parameters (host filter, page, refresh, the token to carry in links), bounded."""
    q = parse_qs(query)

    def number(name: str, lo: int, hi: int) -> int:
        text = q.get(name, ["0"])[0]
        return min(max(int(text), lo), hi) if text.isdigit() and len(text) < 6 else 0

    host = q.get("host", [""])[0].strip()
    return {"host": host[:64] if valid_host(host) else "", "page": number("page", 0, 1000),
            "refresh": number("refresh", 0, 3600) and max(5, number("refresh", 0, 3600)),
            "token": q.get("token", [""])[0][:256]}


def _cut(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def redact(text: str) -> str:
    """`token=...` in a request line or URL replaced, so the status token never reaches the log."""
    return _TOKEN_RE.sub(r"\1REDACTED", text)


class _CappedReader:
    """The request stream, at most `limit` bytes in all: 99 header lines of 64 KiB each must not become
    hundreds of MiB of memory in the enforcing process."""

    def __init__(self, raw: Any, limit: int) -> None:
        self._raw = raw
        self._left = limit

    def readline(self, size: int = -1) -> bytes:
        if self._left <= 0:
            raise ConnectionAbortedError("request headers too large")
        want = self._left if size < 0 else min(size, self._left)
        line: bytes = self._raw.readline(want)
        self._left -= len(line)
        return line

    def read(self, size: int = -1) -> bytes:
        return b""  # GET only: nothing after the headers is read

    def close(self) -> None:
        self._raw.close()


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive threads
    timeout = 10  # a client that stalls mid-request loses its thread after this

    def setup(self) -> None:
        """The buffered streams, the request side capped at MAX_REQUEST_BYTES."""
        super().setup()
        self.rfile = _CappedReader(self.rfile, MAX_REQUEST_BYTES)  # type: ignore[assignment]

    def do_GET(self) -> None:
        """Serve /, /api/status and /metrics to token holders; 401 otherwise."""
        try:
            try:
                url = urlsplit(self.path)
            except ValueError:  # e.g. "//[x]/": a bad request, not a server error worth a traceback
                self._send(404, "text/plain; charset=utf-8", "not found\n")
                return
            page = url.path == "/"
            if not self._authorized(url.query if page else ""):
                self._send(401, "text/html; charset=utf-8", statuspage.render_unauthorized(),
                           {"WWW-Authenticate": 'Bearer realm="tunnelwatch"'})
            elif page:
                html = statuspage.render_html(self.server.state.snapshot(), **_page_params(url.query))
                self._send(200, "text/html; charset=utf-8", html)
            elif url.path == "/api/status":
                snap = self.server.state.snapshot()
                host = parse_qs(url.query).get("host", [""])[0]
                if host:  # the per-host view: only that host's recent decisions
                    snap["recent"] = self.server.state.host(host)
                self._send(200, "application/json", json.dumps(snap) + "\n")
            elif url.path == "/metrics":
                self._send(200, "text/plain; version=0.0.4; charset=utf-8",
                           render_metrics(self.server.state.snapshot()))
            else:
                self._send(404, "text/plain; charset=utf-8", "not found\n")
        except (ConnectionError, TimeoutError):
            pass
        except Exception:  # a rendering bug must cost one request, never the server
            log.exception("status http: %s", printable(redact(self.path), 100))
            self._send(500, "text/plain; charset=utf-8", "internal error\n")

    def _authorized(self, query: str) -> bool:
        given = ""
        auth = self.headers.get("Authorization", "")
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
        elif query:
            given = (parse_qs(query, max_num_fields=20).get("token") or [""])[0]
        return bool(given) and hmac.compare_digest(given.encode(), self.server.token)

    def _send(self, code: int, ctype: str, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        try:
            self.send_response(code)
            for k, v in {
                "Content-Type": ctype, "Content-Length": str(len(data)), "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                "X-Frame-Options": "DENY",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                                           "form-action 'none'; frame-ancestors 'none'",
                **(headers or {}),
            }.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (ConnectionError, TimeoutError, ValueError):
            pass  # the client went away (ValueError: write to a closed file)

    def version_string(self) -> str:
        """The Server header: no Python version for the curious."""
        return "tunnelwatch"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("status http %s: %s", self.client_address[0],
                  printable(redact(format % args), 300))


class _SocketHandler(socketserver.BaseRequestHandler):
    server: _UnixServer

    def handle(self) -> None:
        self.request.settimeout(5)
        with suppress(OSError):
            self.request.sendall(json.dumps(self.server.state.snapshot()).encode() + b"\n")


class _UnixServer(socketserver.ThreadingUnixStreamServer):
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


class StatusServer:
    """The read-only status endpoints: HTTP on the given (LAN) addresses and the local unix socket."""

    def __init__(self, state: StatusState, *, socket_path: str | None, http: list[tuple[str, int]],
                 token: str | None) -> None:
        if http and not token:
            raise ValueError("the status web page needs a token: refusing to serve HTTP without one")
        self.state = state
        self.socket_path = socket_path
        self.http = list(http)
        self.token = token or ""
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        self.bound: list[tuple[str, int]] = []  # the HTTP addresses actually listening (port 0 resolved)

    def start(self) -> None:
        """Bind and serve in daemon threads. An address that cannot be bound is logged and skipped:
        the status page is never a reason to stop enforcing."""
        if self.socket_path:
            try:
                self._serve(_UnixServer(self.socket_path, self.state), "unix")
            except OSError as exc:
                log.error("status socket %s: %s", self.socket_path, exc)
        for host, port in self.http:
            try:
                info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
                family, _, _, _, sockaddr = info[0]
                cls = _HTTPServer6 if family == socket.AF_INET6 else _HTTPServer
                srv = cls(sockaddr, self.state, self.token)
            except (OSError, ValueError) as exc:
                log.error("status page on %s port %d: %s", host, port, exc)
                continue
            self.bound.append((host, int(srv.server_address[1])))
            self._serve(srv, f"http {host}")
            log.info("status page on http://%s/", statuspage.endpoint(host, srv.server_address[1]))

    def _serve(self, srv: socketserver.BaseServer, name: str) -> None:
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.5},
                             name=f"status {name}", daemon=True)
        t.start()
        self._servers.append(srv)
        self._threads.append(t)

    def stop(self) -> None:
        """Stop serving, close the sockets and remove our unix socket file (idempotent)."""
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
            if isinstance(srv, _UnixServer):
                with suppress(FileNotFoundError):
                    if os.stat(str(srv.server_address)).st_ino == srv.inode:
                        os.unlink(str(srv.server_address))
        for t in self._threads:
            t.join(timeout=5)
        self._servers.clear()
        self._threads.clear()
        self.bound.clear()


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
