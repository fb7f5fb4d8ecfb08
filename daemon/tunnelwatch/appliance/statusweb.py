"""Local status for technicians: the LAN web page / JSON API / Prometheus
endpoint, the root-only unix socket, and `tunnelwatch status`.

The daemon feeds a StatusState (thread-safe, bounded); StatusServer serves read-only views of it from
daemon threads, so a slow or hostile client never delays packet handling. HTTP is served only with a
token: StatusServer refuses an HTTP address without one (ValueError), so a misconfigured box never shows
its flows unauthenticated. A browser logs in with a form (POST /login: a session cookie, webauth.py);
scripts send `Authorization: Bearer TOKEN`, or `?token=TOKEN` (any path; it then sits in shell and
browser history: prefer the header). The unix socket (mode 0600, root) answers one JSON snapshot per
connection without a token. Rendering lives in statuspage.py.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import ssl
import threading
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from tunnelwatch.appliance import statuspage
from tunnelwatch.appliance.hostview import valid_host
from tunnelwatch.appliance.metrics import render_metrics
from tunnelwatch.appliance.state import StatusState
from tunnelwatch.appliance.statussock import DEFAULT_SOCKET, UnixServer, cli_status, fetch_snapshot
from tunnelwatch.appliance.webauth import (
    Sessions,
    clear_cookie,
    cookie_value,
    redact,
    same_origin,
    session_cookie,
    token_matches,
)
from tunnelwatch.text import digits, printable

log = logging.getLogger(__name__)
__all__ = ["DEFAULT_SOCKET", "StatusServer", "cli_status", "fetch_snapshot"]  # the socket side: statussock

MAX_CONNECTIONS: Final = 32  # concurrent HTTP connections per listening address; more are closed at once
MAX_PER_CLIENT: Final = 4  # of those, from one client address: one LAN host cannot lock the others out
REQUEST_DEADLINE: Final = 5.0  # seconds for a whole request (a byte every few seconds does not extend it)
MAX_REQUEST_BYTES: Final = 8192  # request line + headers
MAX_FORM_BYTES: Final = 1024  # a POST body (the login form: one token field)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 16

    def __init__(self, addr: tuple[Any, ...], state: StatusState, token: str, sessions: Sessions,
                 token_file: str | None) -> None:
        self.state = state
        self.token = token.encode()
        self.sessions = sessions
        self.token_file = token_file
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
        return min(max(int(text), lo), hi) if digits(text) and len(text) < 6 else 0

    host = q.get("host", [""])[0].strip()
    return {"host": host[:64] if valid_host(host) else "", "page": number("page", 0, 1000),
            "refresh": number("refresh", 0, 3600) and max(5, number("refresh", 0, 3600)),
            "token": q.get("token", [""])[0][:256]}


def _cut(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _CappedReader:
    """The request stream, at most `limit` bytes in all: 99 header lines of 64 KiB each must not become
    hundreds of MiB of memory in the enforcing process."""

    def __init__(self, raw: Any, limit: int) -> None:
        self._raw = raw
        self._left = limit
        self._body_left = MAX_FORM_BYTES

    def readline(self, size: int = -1) -> bytes:
        if self._left <= 0:
            raise ConnectionAbortedError("request headers too large")
        want = self._left if size < 0 else min(size, self._left)
        line: bytes = self._raw.readline(want)
        self._left -= len(line)
        return line

    def read(self, size: int = -1) -> bytes:
        """At most MAX_FORM_BYTES of body in all (the handler checks Content-Length first)."""
        want = self._body_left if size < 0 else min(size, self._body_left)
        data: bytes = self._raw.read(want) if want > 0 else b""
        self._body_left -= len(data)
        return data

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
        """Serve /, /api/status and /metrics to token or session holders; the login page otherwise."""
        try:
            try:
                url = urlsplit(self.path)
            except ValueError:  # e.g. "//[x]/": a bad request, not a server error worth a traceback
                self._send(404, "text/plain; charset=utf-8", "not found\n")
                return
            who = self._authorized(url.query)
            if who is None:
                return  # refused: too many wrong tokens from this address
            page = url.path == "/"
            if not who:
                self._refuse()
            elif page:
                params = _page_params(url.query)
                if who != "token":
                    params["token"] = ""  # a session: links stay clean
                html = statuspage.render_html(self.server.state.snapshot(), session=who == "session",
                                              **params)
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

    def do_POST(self) -> None:
        """POST /login (the form: the token for a session cookie) and POST /logout."""
        try:
            path = self.path.split("?", 1)[0]
            if path not in ("/login", "/logout"):
                self._send(404, "text/plain; charset=utf-8", "not found\n")
            elif not same_origin({k.title(): v for k, v in self.headers.items()}, secure=self._tls()):
                # a page elsewhere posting to the box: refused before anything is read or counted
                self._send(403, "text/plain; charset=utf-8", "cross-site form refused\n")
            elif path == "/logout":
                self.server.sessions.end(cookie_value(self.headers.get("Cookie", "")))
                self._send(303, "text/plain; charset=utf-8", "logged out\n",
                           {"Location": "/", "Set-Cookie": clear_cookie(secure=self._tls())})
            else:
                self._login()
        except (ConnectionError, TimeoutError):
            pass
        except Exception:
            log.exception("status http: POST %s", printable(redact(self.path), 100))
            self._send(500, "text/plain; charset=utf-8", "internal error\n")

    def _login(self) -> None:
        length = self.headers.get("Content-Length", "")
        if not digits(length):
            self._send(411, "text/plain; charset=utf-8", "length required\n")
            return
        if int(length) > MAX_FORM_BYTES:
            self._send(413, "text/plain; charset=utf-8", "form too large\n")
            return
        addr = str(self.client_address[0])
        wait = self.server.sessions.locked_out(addr)
        if wait:
            self._too_many(wait)
            return
        body = self.rfile.read(int(length)).decode("utf-8", "replace")
        given = (parse_qs(body, max_num_fields=5).get("token") or [""])[0].strip()
        if not token_matches(given, self.server.token):
            self.server.sessions.failed(addr)
            log.info("status page: wrong token from %s", printable(addr, 64))
            self._refuse("That is not the status token.")
            return
        sid = self.server.sessions.create()
        log.info("status page: login from %s", printable(addr, 64))
        self._send(303, "text/plain; charset=utf-8", "logged in\n",
                   {"Location": "/", "Set-Cookie": session_cookie(sid, secure=self._tls(),
                                                                  lifetime=self.server.sessions.lifetime)})

    def _authorized(self, query: str) -> str | None:
        """"token" or "session" for a valid credential, "" for none, None when this address is locked out
        (the 429 reply is sent then)."""
        if self.server.sessions.valid(cookie_value(self.headers.get("Cookie", ""))):
            return "session"
        given = ""
        scheme, _, value = self.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
        elif query:
            given = (parse_qs(query, max_num_fields=20).get("token") or [""])[0]
        if not given:
            return ""
        addr = str(self.client_address[0])
        wait = self.server.sessions.locked_out(addr)
        if wait:
            self._too_many(wait)
            return None
        if token_matches(given, self.server.token):
            return "token"
        self.server.sessions.failed(addr)
        return ""

    def _refuse(self, error: str = "") -> None:
        self._send(401, "text/html; charset=utf-8",
                   statuspage.render_unauthorized(self.server.token_file, error=error),
                   {"WWW-Authenticate": 'Bearer realm="tunnelwatch"'})

    def _too_many(self, wait: float) -> None:
        self._send(429, "text/plain; charset=utf-8",
                   f"too many wrong tokens from this address: try again in {int(wait) + 1} s\n",
                   {"Retry-After": str(int(wait) + 1)})

    def _tls(self) -> bool:
        return isinstance(self.connection, ssl.SSLSocket)

    def _send(self, code: int, ctype: str, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        try:
            self.send_response(code)
            # Referrer-Policy same-origin: the URL (maybe with ?token=) never leaves the box, and the
            # login POST keeps an Origin header the server can check (no-referrer would make it "null")
            for k, v in {
                "Content-Type": ctype, "Content-Length": str(len(data)), "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
                "X-Frame-Options": "DENY",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                                           "form-action 'self'; frame-ancestors 'none'",
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


class StatusServer:
    """The read-only status endpoints: HTTP on the given (LAN) addresses and the local unix socket."""

    def __init__(self, state: StatusState, *, socket_path: str | None, http: list[tuple[str, int]],
                 token: str | None, token_file: str | None = None) -> None:
        if http and not token:
            raise ValueError("the status web page needs a token: refusing to serve HTTP without one")
        self.state = state
        self.socket_path = socket_path
        self.http = list(http)
        self.token = token or ""
        self.token_file = token_file  # where the token lives, said on the login page
        self.sessions = Sessions()  # shared by every listening address: one login serves them all
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        self.bound: list[tuple[str, int]] = []  # the HTTP addresses actually listening (port 0 resolved)

    def start(self) -> None:
        """Bind and serve in daemon threads. An address that cannot be bound is logged and skipped:
        the status page is never a reason to stop enforcing."""
        if self.socket_path:
            try:
                self._serve(UnixServer(self.socket_path, self.state), "unix")
            except OSError as exc:
                log.error("status socket %s: %s", self.socket_path, exc)
        for host, port in self.http:
            try:
                info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
                family, _, _, _, sockaddr = info[0]
                cls = _HTTPServer6 if family == socket.AF_INET6 else _HTTPServer
                srv = cls(sockaddr, self.state, self.token, self.sessions, self.token_file)
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
            if isinstance(srv, UnixServer):
                with suppress(FileNotFoundError):
                    if os.stat(str(srv.server_address)).st_ino == srv.inode:
                        os.unlink(str(srv.server_address))
        for t in self._threads:
            t.join(timeout=5)
        self._servers.clear()
        self._threads.clear()
        self.bound.clear()
