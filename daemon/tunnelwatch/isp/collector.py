"""The reference collector: receives the uplink's batches over HTTPS and stores each event once.

For tests and small ISPs (docs/uplink.md is the contract; an ISP may build its own). Storage is one JSONL
file per device (`<device>.jsonl`, events in arrival order) plus `batches.log` (one line per stored batch).
De-duplication is by batch id and, beneath it, by event id, both rebuilt from disk at start-up, so a batch
retried after a lost reply, after a sender restart or after a collector restart is stored once. Events are
written and fsync'd before the batch id is, and both before the 2xx goes out.

    tunnelwatch collector --listen 127.0.0.1:8443 --cert srv.pem --key srv.key \
        [--client-ca ca.pem [--any-device]] [--token-file FILE] (--store DIR | --database CONNINFO)

With --database the events go into the ingest's PostgreSQL schema (docs/ingest.md) instead of JSONL,
with the ingest's checks; the database being down is a 503 with Retry-After (the box retries).

With client certificates (--client-ca), a batch is stored only when its device id is the client
certificate's subject CN or one of its DNS/URI subjectAltNames: a box cannot post for another box (403
otherwise). --any-device turns that off, for boxes that share one certificate.

Importable for tests, with fault injection (Faults): fail the next N requests with 500/503/429 (with a
Retry-After), answer slowly, hang mid-response after storing, or call a hook between storing and replying.
"""

from __future__ import annotations

import argparse
import hmac
import http.server
import json
import logging
import re
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tunnelwatch.isp.envelope import BatchError, StoreDown, cert_identities, inflate_json
from tunnelwatch.isp.store import Store

if TYPE_CHECKING:
    from tunnelwatch.isp.pgstore import PgBatches

# one definition of the wire contract (docs/uplink.md), shared with the sender
from tunnelwatch.report.wire import BATCH_HEADER, DEVICE_HEADER, EVENTS_PATH, WIRE_SCHEMA
from tunnelwatch.text import digits

log = logging.getLogger(__name__)

MAX_BODY: Final = 16 * 1024 * 1024          # compressed bytes accepted in one POST
_DEVICE_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BATCH_RE: Final = re.compile(r"^[0-9a-fA-F-]{8,64}$")


@dataclass
class Faults:
    """Fault injection for tests; every field is consumed or read under the collector's lock."""

    fail: list[int] = field(default_factory=list)   # statuses for the next POSTs, one each, before storing
    retry_after: str | None = None                   # sent with a 429/503 from `fail`
    delay: float = 0.0                               # seconds to wait before answering each POST
    hang: int = 0                                    # next N POSTs: store, half a reply, then stall
    after_store: Callable[[str], None] | None = None  # called with the batch id between store and reply


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    collector: Collector

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        # the handshake runs in the handler's thread, so one stalled client cannot block accept()
        return self.collector.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("collector: connection from %s ended with an error", client_address, exc_info=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tunnelwatch-collector/1"
    server: _Server
    timeout = 30
    # headers and body go out in two writes; with Nagle the second waits for the peer's delayed ACK (40 ms)
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.do_handshake()
        except (ssl.SSLEOFError, ConnectionError, TimeoutError) as exc:  # port probes, health checks
            log.debug("collector: no TLS handshake from %s: %s", self.client_address[0], exc)
            self.close_connection = True
            raise
        except (ssl.SSLError, OSError) as exc:
            log.warning("collector: TLS handshake with %s failed: %s", self.client_address[0], exc)
            self.close_connection = True
            raise

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("collector: %s " + format, self.client_address[0], *args)

    def _reply(self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None, *,
               close: bool = False) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        if close:  # the request body was not read, so this connection cannot carry another request
            self.close_connection = True
            self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, {"status": "ok"})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        c = self.server.collector
        if self.path.split("?", 1)[0].rstrip("/") != EVENTS_PATH:
            self._reply(404, {"error": "not found"}, close=True)
            return
        if c.token is not None:
            got = self.headers.get("Authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {c.token}".encode()):
                self._reply(401, {"error": "bad or missing bearer token"}, {"WWW-Authenticate": "Bearer"},
                            close=True)
                return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._reply(411, {"error": "Content-Length required"}, close=True)
            return
        if length < 0 or length > MAX_BODY:
            self._reply(413, {"error": f"body over {MAX_BODY} bytes"}, close=True)
            return
        raw = self.rfile.read(length)
        status, fault_headers = c.take_fault()
        if status:
            self._reply(status, {"error": "injected fault"}, fault_headers)
            return
        try:
            doc = _decode(raw, self.headers.get("Content-Encoding", "identity"))
            device, batch_id, events = _validate(doc, self.headers)
        except ValueError as exc:
            self._reply(400, {"error": str(exc)})
            return
        if c.bind_device and device not in cert_identities(self.connection.getpeercert()):
            log.warning("collector: refused batch %s: device %s is not the client certificate's identity",
                        batch_id, device)
            c.counters(identity_refused=1)
            self._reply(403, {"error": "device id is not this client certificate's identity"})
            return
        try:
            stored, dups, known = c.store.add(device, batch_id, events)
        except BatchError as exc:
            self._reply(400, {"error": str(exc)})
            return
        except (StoreDown, OSError) as exc:  # the database is down, the disk is full: the box retries
            log.warning("collector: batch %s not stored: %s", batch_id, exc)
            self._reply(503, {"error": "store unavailable"}, {"Retry-After": "5"})
            return
        c.after_store(batch_id)
        c.counters(requests=1, stored=stored, duplicates=dups, duplicate_batches=int(known))
        reply = {"status": "stored" if stored or not dups else "duplicate", "batch_id": batch_id,
                 "accepted": stored, "duplicates": dups}
        if c.take_hang():
            self._hang(reply)
            return
        self._reply(200, reply)

    def _hang(self, reply: dict[str, Any]) -> None:
        body = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.server.collector.released.wait(60)
        self.close_connection = True


def _decode(raw: bytes, encoding: str) -> Any:
    if encoding.lower() not in ("gzip", "identity"):
        raise ValueError(f"unsupported Content-Encoding {encoding!r}")
    return inflate_json(raw, encoding.lower() == "gzip", "body")


def _validate(doc: Any, headers: Any) -> tuple[str, str, list[dict[str, Any]]]:
    if not isinstance(doc, dict) or doc.get("schema") != WIRE_SCHEMA:
        raise ValueError("body must be an object with schema 1")
    device, batch_id, events = doc.get("device_id"), doc.get("batch_id"), doc.get("events")
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise ValueError("bad device_id")
    if not isinstance(batch_id, str) or not _BATCH_RE.match(batch_id):
        raise ValueError("bad batch_id")
    if headers.get(BATCH_HEADER) != batch_id or headers.get(DEVICE_HEADER) != device:
        raise ValueError("headers and body disagree on batch id or device")
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise ValueError("events must be a list of objects")
    return device, batch_id, events


class Collector:
    """The reference collector as an object: start(), url, store, stop(); faults for tests."""

    def __init__(self, store_dir: str, *, cert: str, key: str, client_ca: str | None = None,
                 token: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 faults: Faults | None = None, bind_device: bool | None = None,
                 database: str | None = None) -> None:
        if bind_device and not client_ca:
            raise ValueError("bind_device needs client certificates (client_ca)")
        self.store: Store | PgBatches
        if database:
            from tunnelwatch.isp.pgstore import PgBatches  # psycopg only for this mode

            self.store = PgBatches(database)
        else:
            self.store = Store(store_dir)
        self.bind_device = bool(client_ca) if bind_device is None else bind_device  # on with mTLS
        self.token = token
        self.faults = faults or Faults()
        self.released = threading.Event()
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self.tls.load_cert_chain(cert, key)
        if client_ca:
            self.tls.load_verify_locations(client_ca)
            self.tls.verify_mode = ssl.CERT_REQUIRED
        self._lock = threading.Lock()
        self._counters = {"requests": 0, "stored": 0, "duplicates": 0, "duplicate_batches": 0, "faults": 0,
                          "identity_refused": 0}
        self.request_times: list[float] = []
        self._httpd = _Server((host, port), _Handler, bind_and_activate=True)
        self._httpd.collector = self
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound."""
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """The base URL an uplink should be configured with."""
        host, port = self.address
        return f"https://{host}:{port}"

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="tunnelwatch-collector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, release hung replies and free the port."""
        self.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def serve_forever(self) -> None:
        """Serve in the calling thread until shutdown()."""
        self._httpd.serve_forever(poll_interval=0.1)

    def shutdown(self) -> None:
        """Ask serve_forever() to return (from another thread or a signal handler's thread)."""
        threading.Thread(target=self._httpd.shutdown, daemon=True).start()

    def counters(self, **add: int) -> dict[str, int]:
        """Add to and return the counters: requests, stored, duplicates, duplicate_batches, faults,
        identity_refused."""
        with self._lock:
            for k, v in add.items():
                self._counters[k] += v
            return dict(self._counters)

    def take_fault(self) -> tuple[int, dict[str, str]]:
        """Consume the next injected failure status (0 = none) and apply the slow-answer delay."""
        with self._lock:
            self.request_times.append(time.monotonic())
            status = self.faults.fail.pop(0) if self.faults.fail else 0
            delay = self.faults.delay
            if status:
                self._counters["faults"] += 1
        if delay > 0:
            self.released.wait(delay)
        headers = {}
        if status in (429, 503) and self.faults.retry_after is not None:
            headers["Retry-After"] = self.faults.retry_after
        return status, headers

    def take_hang(self) -> bool:
        """Consume one 'hang mid-response' fault."""
        with self._lock:
            if self.faults.hang > 0:
                self.faults.hang -= 1
                return True
            return False

    def after_store(self, batch_id: str) -> None:
        """Run the test hook between storing a batch and replying."""
        hook = self.faults.after_store
        if hook is not None:
            hook(batch_id)


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not digits(port):
        raise argparse.ArgumentTypeError("expected ADDR:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def main(argv: list[str] | None = None) -> int:
    """`python -m tunnelwatch.isp.collector`: run the reference collector until SIGTERM/SIGINT."""
    p = argparse.ArgumentParser(prog="tunnelwatch collector",
                                description=__doc__.split("\n")[0])
    p.add_argument("--listen", type=_listen, required=True, help="ADDR:PORT to bind")
    p.add_argument("--cert", required=True, help="server certificate chain (PEM)")
    p.add_argument("--key", required=True, help="server private key (PEM)")
    p.add_argument("--client-ca", help="require client certificates signed by this CA (mutual TLS)")
    p.add_argument("--any-device", action="store_true",
                   help="with --client-ca: accept a batch for any device id (boxes sharing one certificate); "
                        "by default its device id must be the certificate's CN or a SAN")
    p.add_argument("--token", help="require this bearer token (prefer --token-file: argv is visible)")
    p.add_argument("--token-file", help="file holding the bearer token")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", help="directory for <device>.jsonl and batches.log")
    where.add_argument("--database", help="libpq connection string: store into the ingest's PostgreSQL")
    p.add_argument("--log-level", default="info")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="collector: %(levelname)s: %(message)s")
    token = a.token
    if a.token_file:
        token = Path(a.token_file).read_text().strip()
    host, port = a.listen
    if ":" in host:
        _Server.address_family = socket.AF_INET6
    if a.any_device and not a.client_ca:
        p.error("--any-device only applies with --client-ca")
    c = Collector(a.store or "", cert=a.cert, key=a.key, client_ca=a.client_ca, token=token, host=host,
                  port=port, bind_device=bool(a.client_ca) and not a.any_device, database=a.database)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: c.shutdown())
    log.info("listening on %s (store %s, mTLS %s, device bound to certificate %s, token %s)", c.url,
             a.store or "PostgreSQL", bool(a.client_ca), c.bind_device, bool(token))
    c.serve_forever()
    c.released.set()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
