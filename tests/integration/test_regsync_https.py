"""Registry sync against a real HTTPS server on 127.0.0.1 (test CA made with openssl): good documents are
applied; tampered, replayed, truncated, oversized, failing and untrusted ones, and documents for another
box or group, unscoped or expired, never replace the registry."""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from support.netns import require_tools
from support.pki import make_pki
from tunnelwatch.policy.regdoc import rfc3339
from tunnelwatch.policy.registry import Registry
from tunnelwatch.policy.regsync import RegistrySync, sign_document

pytestmark = pytest.mark.integration

REG_V1 = "registrations:\n  - id: PTA-1\n    servers: [203.0.113.10]\n"
REG_V2 = REG_V1 + "  - id: PTA-2\n    servers: [192.0.2.0/28]\n"
MAX = 20_000
Route = Callable[[http.server.BaseHTTPRequestHandler], None]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_tools("openssl")
    p = make_pki(tmp_path_factory.mktemp("pki"))  # server certificate for 127.0.0.1, plus an untrusted CA
    return {"ca": p.ca, "other_ca": p.rogue_ca, "crt": p.server_cert, "key": p.server_key}


class Server:
    """An HTTPS server on an ephemeral loopback port whose answers the test sets per path."""

    def __init__(self, pki: dict[str, Path]) -> None:
        self.routes: dict[str, Route] = {}
        self.written: dict[str, int] = {}
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = routes.get(self.path)
                if route is None:
                    self.send_error(404)
                else:
                    route(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki["crt"], pki["key"])
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def serve(self, path: str, body: bytes, *, status: int = 200, length: int | None = None) -> None:
        def route(h: http.server.BaseHTTPRequestHandler) -> None:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body) if length is None else length))
            h.end_headers()
            h.wfile.write(body)
            h.wfile.flush()
            h.close_connection = True
        self.routes[path] = route

    def stream(self, path: str, total: int) -> None:
        """An endless-looking body without Content-Length (HTTP/1.0: it ends when the server closes)."""
        def route(h: http.server.BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.end_headers()
            sent = 0
            try:
                for _ in range(total // 4096):
                    h.wfile.write(b" " * 4096)
                    sent += 4096
            except OSError:
                pass
            self.written[path] = sent
            h.close_connection = True
        self.routes[path] = route

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server(pki: dict[str, Path]) -> Iterator[Server]:
    s = Server(pki)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def isp() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def make_sync(tmp: Path, server: Server, isp: Ed25519PrivateKey, path: str, *, ca: Path | None,
              host: str = "127.0.0.1", **scope: Any) -> RegistrySync:
    if not (tmp / "registry.yaml").exists():
        (tmp / "registry.yaml").write_text(REG_V1)
    raw = isp.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return RegistrySync(url=f"https://{host}:{server.port}{path}", public_key=base64.b64encode(raw).decode(),
                        ca_file=str(ca) if ca else None, state_dir=str(tmp / "state"),
                        registry_path=str(tmp / "registry.yaml"), max_bytes=MAX, timeout=5,
                        # transport faults are what most tests here are about: unscoped documents
                        # unless a test passes the box's scope (test_scope_and_expiry_over_https)
                        **(scope or {"accept_unscoped": True}))


def test_good_document_over_https_is_applied(tmp_path: Path, server: Server, pki: dict[str, Path],
                                             isp: Ed25519PrivateKey) -> None:
    server.serve("/reg.json", sign_document(isp, 2, REG_V2))
    sync = make_sync(tmp_path, server, isp, "/reg.json", ca=pki["ca"])
    res = sync.sync_once()
    assert res.ok and res.changed and res.version == 2, res.message
    assert [e.id for e in Registry.load(tmp_path / "registry.yaml").entries] == ["PTA-1", "PTA-2"]
    again = sync.sync_once()
    assert again.ok and not again.changed


def _tampered(isp: Ed25519PrivateKey) -> bytes:
    doc = json.loads(sign_document(isp, 5, REG_V2))
    doc["payload"] = base64.b64encode(base64.b64decode(doc["payload"]).replace(b"PTA-2", b"EVIL1")).decode()
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("case", "expect"), [
    ("tampered", "bad signature"), ("other_key", "bad signature"), ("older", "not newer"),
    ("truncated", "truncated"), ("cut_json", "truncated"), ("oversized_declared", "too large"),
    ("oversized_stream", "too large"), ("server_error", "HTTP 500"), ("unavailable", "HTTP 503"),
    ("bad_registry", "invalid"), ("untrusted_ca", "TLS failure"), ("wrong_host", "TLS failure"),
    ("no_such_path", "HTTP 404"),
])
def test_bad_documents_never_replace_the_registry(tmp_path: Path, server: Server, pki: dict[str, Path],
                                                  isp: Ed25519PrivateKey, case: str, expect: str) -> None:
    good_v3 = sign_document(isp, 3, REG_V2)
    server.serve("/seed.json", good_v3)
    assert make_sync(tmp_path, server, isp, "/seed.json", ca=pki["ca"]).sync_once().ok
    before = (tmp_path / "registry.yaml").read_bytes()
    ca, host = pki["ca"], "127.0.0.1"
    big = sign_document(isp, 9, REG_V2 + "".join(f"  - id: X{i}\n    servers: [198.51.100.1]\n"
                                                  for i in range(1000)))
    assert len(big) > MAX
    if case == "tampered":
        server.serve("/r", _tampered(isp))
    elif case == "other_key":
        server.serve("/r", sign_document(Ed25519PrivateKey.generate(), 9, REG_V1))
    elif case == "older":
        server.serve("/r", sign_document(isp, 2, REG_V1))
    elif case == "truncated":
        server.serve("/r", good_v3[:-30], length=len(good_v3) + 100)
    elif case == "cut_json":
        server.serve("/r", sign_document(isp, 9, REG_V1)[:-30])
    elif case == "oversized_declared":
        server.serve("/r", big)
    elif case == "oversized_stream":
        server.stream("/r", 50_000_000)
    elif case == "server_error":
        server.serve("/r", b"oops", status=500)
    elif case == "unavailable":
        server.serve("/r", b"busy", status=503)
    elif case == "bad_registry":
        server.serve("/r", sign_document(isp, 9, "registrations:\n  - id: B\n    servers: [nope]\n"))
    elif case == "untrusted_ca":
        server.serve("/r", sign_document(isp, 9, REG_V1))
        ca = pki["other_ca"]
    elif case == "wrong_host":
        server.serve("/r", sign_document(isp, 9, REG_V1))
        host = "localhost"
    res = make_sync(tmp_path, server, isp, "/r", ca=ca, host=host).sync_once()
    assert not res.ok and not res.changed
    assert expect in res.message, res.message
    assert (tmp_path / "registry.yaml").read_bytes() == before
    assert json.loads((tmp_path / "state" / "registry-sync.json").read_text())["version"] == 3
    if case == "oversized_stream":
        assert server.written.get("/r", 0) < 50_000_000, "the client stopped reading"


@pytest.mark.parametrize(("doc_scope", "box_scope", "expect"), [
    ({}, {"device_id": "box-1"}, "names no device and no group"),
    ({"device": "box-2"}, {"device_id": "box-1"}, "is for device 'box-2'"),
    ({"group": "north"}, {"device_id": "box-1", "group": "south"}, "is for group 'north'"),
    ({"device": "box-1", "expires": "EXPIRED"}, {"device_id": "box-1"}, "expired at"),
    ({"device": "box-1"}, {"device_id": "box-1"}, None),
    ({"group": "north"}, {"device_id": "box-1", "group": "north"}, None),
])
def test_scope_and_expiry_over_https(tmp_path: Path, server: Server, pki: dict[str, Path],
                                     isp: Ed25519PrivateKey, doc_scope: dict[str, str],
                                     box_scope: dict[str, str], expect: str | None) -> None:
    if doc_scope.get("expires") == "EXPIRED":
        doc_scope = {**doc_scope, "issued": rfc3339(time.time() - 7200), "expires": rfc3339(time.time() - 60)}
    server.serve("/box.json", sign_document(isp, 4, REG_V2, **doc_scope))
    sync = make_sync(tmp_path, server, isp, "/box.json", ca=pki["ca"], **box_scope)
    res = sync.sync_once()
    if expect is None:
        assert res.ok and res.changed, res.message
        assert (tmp_path / "registry.yaml").read_text() == REG_V2
    else:
        assert not res.ok and expect in res.message, res.message
        assert (tmp_path / "registry.yaml").read_text() == REG_V1
        assert sync.current_version() == 0
