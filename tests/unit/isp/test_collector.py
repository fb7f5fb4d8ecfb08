"""The reference collector over real TLS on 127.0.0.1 (client certificate and bearer token): a batch stored
once and acknowledged as a duplicate after, refusals with the status the wire contract gives them, and
injected faults. (The box's Uplink against it: report/test_uplink.py.)"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.pki import Pki, make_pki
from tunnelwatch.isp.collector import Collector, Faults, _listen
from tunnelwatch.report.wire import BATCH_HEADER, DEVICE_HEADER, EVENTS_PATH, batch_id_for, encode_batch

DEVICE = "cpe-coll-1"
EVENTS: list[dict[str, Any]] = [{"id": f"ev-{i}", "kind": "heartbeat", "seq": i} for i in range(3)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def collector(pki: Pki, tmp_path: Path) -> Iterator[Collector]:
    c = Collector(str(tmp_path / "store"), cert=str(pki.server_cert), key=str(pki.server_key),
                  client_ca=str(pki.ca), token="tok-1", faults=Faults(), bind_device=False)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def _request(c: Collector, pki: Pki, method: str = "POST", path: str = EVENTS_PATH, body: bytes = b"",
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    host, port = c.address
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def _post(c: Collector, pki: Pki, events: list[dict[str, Any]], *, token: str = "tok-1",
          **override: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    bid = batch_id_for(DEVICE, events)
    headers = {"Authorization": f"Bearer {token}", "Content-Encoding": "gzip",
               "Content-Type": "application/json", BATCH_HEADER: bid, DEVICE_HEADER: DEVICE, **override}
    return _request(c, pki, body=encode_batch(bid, DEVICE, events), headers=headers)


def test_a_batch_is_stored_once_and_acknowledged_as_duplicate_after(collector: Collector, pki: Pki) -> None:
    status, _, doc = _post(collector, pki, EVENTS)
    assert status == 200 and doc["status"] == "stored" and doc["accepted"] == 3
    status, _, doc = _post(collector, pki, EVENTS)
    assert status == 200 and doc == {"status": "duplicate", "batch_id": batch_id_for(DEVICE, EVENTS),
                                     "accepted": 0, "duplicates": 3}
    assert collector.store.events(DEVICE) == EVENTS
    counters = collector.counters()
    assert (counters["requests"], counters["stored"], counters["duplicate_batches"]) == (2, 3, 1)


def test_a_wrong_token_is_refused_and_nothing_is_stored(collector: Collector, pki: Pki) -> None:
    status, headers, _ = _post(collector, pki, EVENTS, token="tok-2")
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert collector.store.count(DEVICE) == 0


@pytest.mark.parametrize("override", [
    {BATCH_HEADER: "0000000000000000"},  # headers and body disagree
    {DEVICE_HEADER: "cpe-other"},
    {"Content-Encoding": "br"},
    {"Content-Encoding": "identity"},  # gzip bytes are not JSON
])
def test_bad_requests_get_400(collector: Collector, pki: Pki, override: dict[str, str]) -> None:
    status, _, doc = _post(collector, pki, EVENTS, **override)
    assert status == 400 and doc["error"]
    assert collector.store.count(DEVICE) == 0


def test_a_wrong_schema_and_a_wrong_path_are_refused(collector: Collector, pki: Pki) -> None:
    bid = batch_id_for(DEVICE, EVENTS)
    body = gzip.compress(json.dumps({"schema": 2, "batch_id": bid, "device_id": DEVICE,
                                     "events": EVENTS}).encode())
    headers = {"Authorization": "Bearer tok-1", "Content-Encoding": "gzip", BATCH_HEADER: bid,
               DEVICE_HEADER: DEVICE}
    assert _request(collector, pki, body=body, headers=headers)[0] == 400
    assert _request(collector, pki, path="/v2/events", body=body, headers=headers)[0] == 404
    assert _request(collector, pki, "GET", "/healthz")[2] == {"status": "ok"}


def test_injected_faults_come_first_then_the_batch_is_stored(collector: Collector, pki: Pki) -> None:
    collector.faults.fail = [503, 500]
    collector.faults.retry_after = "7"
    status, headers, _ = _post(collector, pki, EVENTS)
    assert status == 503 and headers["Retry-After"] == "7"
    status, headers, _ = _post(collector, pki, EVENTS)
    assert status == 500 and "Retry-After" not in headers
    assert _post(collector, pki, EVENTS)[0] == 200
    assert collector.counters()["faults"] == 2 and collector.store.count(DEVICE) == 3


def test_a_client_without_a_certificate_is_refused(collector: Collector, pki: Pki) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    host, port = collector.address
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            conn.request("GET", "/healthz")
            conn.getresponse()
    finally:
        conn.close()


def test_listen_address_parsing() -> None:
    assert _listen("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert _listen("[::1]:8443") == ("::1", 8443)
    assert _listen(":8443") == ("0.0.0.0", 8443)
    for bad in ("8443", "host:port"):
        with pytest.raises(argparse.ArgumentTypeError):
            _listen(bad)


def test_client_certificates_bind_the_device_id_by_default(pki: Pki, tmp_path: Path) -> None:
    common = {"cert": str(pki.server_cert), "key": str(pki.server_key)}
    for name, kw, bound in (("a", {"client_ca": str(pki.ca)}, True),
                            ("b", {"client_ca": str(pki.ca), "bind_device": False}, False),
                            ("c", {}, False)):  # no client certificates: nothing to bind to
        c = Collector(str(tmp_path / name), **common, **kw)  # type: ignore[arg-type]
        c.start()
        c.stop()
        assert c.bind_device is bound, name
