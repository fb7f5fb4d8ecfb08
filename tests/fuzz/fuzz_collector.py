"""Harness: the reference collector's request handling (collector._Handler.do_POST/_decode/_validate).

The input is the raw bytes of one or more HTTP requests on a connection; they are handled by the real
handler class over in-memory files, with a real Store in a scratch directory (bearer token required when
byte 0 is odd). Every request must end in a reply: an exception escaping the handler would drop the
connection without one.
"""

from __future__ import annotations

import io
import shutil
from typing import Any

from fuzz._fuzzlib import fuzz_main, instrumented, scratch_dir

with instrumented():
    from tunnelwatch.isp.collector import _Handler
    from tunnelwatch.isp.store import Store

TOKEN = "fuzz-token-0123456789"
_ROOT = scratch_dir("collector")


class Stub:
    """The parts of Collector the handler calls; no sockets, no TLS, no injected faults."""

    def __init__(self, token: str | None) -> None:
        self.store = Store(str(_ROOT / "store"))
        self.token = token
        self.bind_device = False  # no TLS here, so no client certificate to bind the device id to

    def take_fault(self) -> tuple[int, dict[str, str]]:
        """Never a fault."""
        return 0, {}

    def take_hang(self) -> bool:
        """Never a hang."""
        return False

    def after_store(self, batch_id: str) -> None:
        """No hook."""

    def counters(self, **add: int) -> dict[str, int]:
        """Counters are not kept."""
        return {}


class Server:
    """What the handler reads of its server."""

    def __init__(self, collector: Stub) -> None:
        self.collector = collector


_runs = 0


def one_input(data: bytes) -> None:
    """Handle the requests in `data` on one in-memory connection."""
    global _runs
    _runs += 1
    if _runs % 500 == 0:  # keep the scratch store small
        shutil.rmtree(_ROOT / "store", ignore_errors=True)
    if not data:
        return
    h: Any = _Handler.__new__(_Handler)
    h.server = Server(Stub(TOKEN if data[0] & 1 else None))
    h.client_address = ("127.0.0.1", 9)
    h.request = None
    h.rfile = io.BufferedReader(io.BytesIO(data[1:]))  # type: ignore[arg-type]
    h.wfile = io.BytesIO()
    h.close_connection = True
    for _ in range(8):  # one request per handle_one_request, as BaseHTTPRequestHandler.handle does
        h.handle_one_request()
        if h.close_connection:
            break
    out = h.wfile.getvalue()
    # an HTTP/0.9 request gets a bare error body, as the standard library answers it
    assert not out or out.startswith(b"HTTP/") or getattr(h, "request_version", "") == "HTTP/0.9", out[:40]


if __name__ == "__main__":
    fuzz_main(one_input)
