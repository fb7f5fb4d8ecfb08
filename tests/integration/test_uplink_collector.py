"""Spool -> Uplink -> reference collector over real TLS on 127.0.0.1: every event arrives exactly once and
in order per stream through an outage, 500/503/429 (Retry-After honoured), a slow collector, a collector
hanging mid-reply, and kill -9 of the sending process mid-batch; mTLS and server-certificate failures are
refused with a clear log line. Loopback only; backoff is tiny so the tests are quick."""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.pki import Pki, make_pki
from tunnelwatch.isp.collector import Collector, Faults
from tunnelwatch.report.events import make_event
from tunnelwatch.report.spool import Spool
from tunnelwatch.report.uplink import Uplink

DEVICE = "cpe-it-1"
FAST: dict[str, Any] = {"max_rate": 1000.0, "timeout": 5.0, "backoff_max": 0.05, "backoff_base": 0.01,
                        "idle_poll": 0.02}

# The sender as its own process, so it can be SIGKILLed: drains the spool, exits 0 once it is empty.
SENDER = """
import logging, sys
from tunnelwatch.report.spool import Spool
from tunnelwatch.report.uplink import Uplink
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
path, url, ca, cert, key, device, batch = sys.argv[1:8]
sp = Spool(path)
up = Uplink(sp, url=url, ca_file=ca, client_cert=cert, client_key=key, token=None, device_id=device,
            batch_size=int(batch), max_rate=1000.0, timeout=5.0, backoff_max=0.05, backoff_base=0.01,
            idle_poll=0.02)
up.start()
ok = up.wait_for(lambda s: s["backlog"] == 0, 40)
up.stop()
sp.close()
sys.exit(0 if ok else 1)
"""


def _flows(n: int) -> list[dict[str, Any]]:
    return [make_event("flow_tagged", device_id=DEVICE, src="192.0.2.10", sport=10000 + i % 50000,
                       dst="198.51.100.7", dport=1194, transport="udp", klass="vpn_tunnel",
                       protocol="openvpn", confidence="confirmed", action="report",
                       evidence=["hard reset v2"], packets=4, bytes=400) for i in range(n)]


def _assert_exactly_once(c: Collector, sent: list[dict[str, Any]]) -> None:
    got = c.store.events(DEVICE)
    ids = [e["id"] for e in got]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicated events"
    assert set(ids) == {e["id"] for e in sent}, f"{len(sent) - len(set(ids))} events lost"
    by_stream: dict[str, list[int]] = {}
    for e in got:
        by_stream.setdefault(e["stream"], []).append(e["seq"])
    for stream, seqs in by_stream.items():
        assert seqs == sorted(seqs), f"stream {stream} out of order"
    assert got == sent  # one stream here: arrival order is spool order


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    sp = Spool(str(tmp_path / "spool.db"))
    try:
        yield sp
    finally:
        sp.close()


def _collector(pki: Pki, store: Path, *, port: int = 0, faults: Faults | None = None,
               mtls: bool = True, server_rogue: bool = False) -> Collector:
    cert, key = (pki.rogue_server_cert, pki.rogue_server_key) if server_rogue else (pki.server_cert,
                                                                                    pki.server_key)
    c = Collector(str(store), cert=str(cert), key=str(key), client_ca=str(pki.ca) if mtls else None,
                  port=port, faults=faults, bind_device=False)  # the lab's one client cert, several devices
    c.start()
    return c


def _uplink(sp: Spool, url: str, pki: Pki, **kw: Any) -> Uplink:
    args: dict[str, Any] = {"ca_file": str(pki.ca), "client_cert": str(pki.client_cert),
                            "client_key": str(pki.client_key), "token": None, "device_id": DEVICE,
                            "batch_size": 100, **FAST}
    args.update(kw)
    return Uplink(sp, url=url, **args)


def _drain(up: Uplink, timeout: float = 20.0) -> None:
    up.start()
    try:
        assert up.wait_for(lambda s: s["backlog"] == 0, timeout), up.stats()
    finally:
        up.stop()


def test_outage_then_recovery(pki: Pki, spool: Spool, tmp_path: Path,
                              caplog: pytest.LogCaptureFixture) -> None:
    first = _collector(pki, tmp_path / "store")
    port = first.address[1]
    first.stop()  # the collector is down: connections are refused
    sent = _flows(500)
    spool.put_many(sent)
    up = _uplink(spool, f"https://127.0.0.1:{port}", pki)
    caplog.set_level(logging.INFO, "tunnelwatch.report.uplink")
    up.start()
    try:
        assert up.wait_for(lambda s: s["failures"] >= 5, 10), up.stats()
        assert spool.backlog() == 500
        c = _collector(pki, tmp_path / "store", port=port)
        try:
            assert up.wait_for(lambda s: s["backlog"] == 0, 20), up.stats()
            _assert_exactly_once(c, sent)
        finally:
            c.stop()
    finally:
        up.stop()
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("refused the connection" in m for m in msgs) == 1  # one line per outage, not per retry
    assert any("delivery resumed" in m for m in msgs)


def test_500_503_429_with_retry_after(pki: Pki, spool: Spool, tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    c = _collector(pki, tmp_path / "store", faults=Faults(fail=[500, 503, 500, 429], retry_after="1"))
    caplog.set_level(logging.WARNING, "tunnelwatch.report.uplink")
    try:
        sent = _flows(300)
        spool.put_many(sent)
        up = _uplink(spool, c.url, pki)
        _drain(up)
        _assert_exactly_once(c, sent)
        assert up.stats()["failures"] == 4 and c.counters()["faults"] == 4
        t = c.request_times
        # requests 2 (503) and 4 (429) said Retry-After: 1; the next attempt waited at least that long
        assert t[2] - t[1] >= 1.0 and t[4] - t[3] >= 1.0
        # a plain 500 backs off by the (tiny here) exponential backoff, not by a Retry-After: the delay the
        # uplink chose, from its own log line (a wall-clock bound would flake on a loaded machine)
        delays = [float(m[1]) for r in caplog.records
                  if (m := re.search(r"HTTP 500.*retrying batch \S+ in ([\d.]+)s", r.getMessage()))]
        assert delays and max(delays) < 1.0, [r.getMessage() for r in caplog.records]
    finally:
        c.stop()


def test_slow_collector(pki: Pki, spool: Spool, tmp_path: Path) -> None:
    c = _collector(pki, tmp_path / "store", faults=Faults(delay=0.3))
    try:
        sent = _flows(400)
        spool.put_many(sent)
        up = _uplink(spool, c.url, pki, timeout=3.0)
        _drain(up)
        _assert_exactly_once(c, sent)
        assert up.stats()["failures"] == 0
    finally:
        c.stop()


def test_hang_mid_response_retries_same_batch(pki: Pki, spool: Spool, tmp_path: Path) -> None:
    c = _collector(pki, tmp_path / "store", faults=Faults(hang=2))
    try:
        sent = _flows(250)
        spool.put_many(sent)
        up = _uplink(spool, c.url, pki, timeout=0.5)
        _drain(up)
        _assert_exactly_once(c, sent)
        st = up.stats()
        assert st["failures"] == 2 and st["duplicates"] == 1, st
        # both retries of the first batch carried its id and were recognised by it
        assert c.counters()["duplicate_batches"] == 2 and c.counters()["duplicates"] == 100 * 2
    finally:
        c.stop()


def _sender(tmp_path: Path, c: Collector, pki: Pki, batch: int, log_name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (tmp_path / log_name).open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-c", SENDER, str(tmp_path / "spool.db"), c.url, str(pki.ca),
             str(pki.client_cert), str(pki.client_key), DEVICE, str(batch)], stderr=err, env=env)


def _finish(p: subprocess.Popen[bytes], tmp_path: Path, log_name: str) -> None:
    try:
        rc = p.wait(45)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise
    assert rc == 0, (tmp_path / log_name).read_text()[-3000:]


def test_kill9_after_store_before_reply(pki: Pki, spool: Spool, tmp_path: Path) -> None:
    sent = _flows(1000)
    spool.put_many(sent)
    in_send, release = threading.Event(), threading.Event()
    calls = [0]

    def hook(batch_id: str) -> None:
        calls[0] += 1
        if calls[0] == 3:  # the third batch is stored, its 2xx not yet sent: the sender dies now
            in_send.set()
            release.wait(20)

    c = _collector(pki, tmp_path / "store", faults=Faults(after_store=hook))
    try:
        p = _sender(tmp_path, c, pki, 100, "sender1.log")
        try:
            assert in_send.wait(20), (tmp_path / "sender1.log").read_text()[-3000:]
            p.send_signal(signal.SIGKILL)
        finally:
            p.wait(10)
            release.set()
        assert p.returncode == -signal.SIGKILL
        assert spool.backlog() == 800  # two batches acked; the third stored upstream but not acked
        _finish(_sender(tmp_path, c, pki, 100, "sender2.log"), tmp_path, "sender2.log")
        _assert_exactly_once(c, sent)
        # the restarted sender resent the third batch under the same id, and the collector recognised it
        assert c.counters()["duplicate_batches"] == 1 and c.counters()["duplicates"] == 100
    finally:
        c.stop()


def test_kill9_at_random_points(pki: Pki, spool: Spool, tmp_path: Path) -> None:
    sent = _flows(3000)
    spool.put_many(sent)
    c = _collector(pki, tmp_path / "store", faults=Faults(delay=0.01))
    rng = random.Random()
    try:
        for round_ in range(4):
            before = c.store.count(DEVICE)
            # a different batch size each run: after a kill the resent events come in a differently cut
            # batch (new batch id), so only the collector's per-event de-duplication keeps them single
            p = _sender(tmp_path, c, pki, rng.choice((37, 64, 100, 151)), f"kill{round_}.log")
            try:
                assert c.store.wait_for(DEVICE, before + 1, 20)
                threading.Event().wait(rng.uniform(0.0, 0.15))  # a random point: fault timing, not sync
                p.send_signal(signal.SIGKILL)
            finally:
                p.wait(10)
        _finish(_sender(tmp_path, c, pki, 100, "final.log"), tmp_path, "final.log")
        _assert_exactly_once(c, sent)
        assert spool.backlog() == 0
    finally:
        c.stop()


def test_wrong_client_certificate_refused(pki: Pki, spool: Spool, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    c = _collector(pki, tmp_path / "store")
    try:
        spool.put_many(_flows(10))
        caplog.set_level(logging.WARNING, "tunnelwatch.report.uplink")
        for cert, key in ((pki.rogue_cert, pki.rogue_key), (None, None)):
            up = _uplink(spool, c.url, pki, client_cert=cert and str(cert), client_key=key and str(key))
            up.start()
            try:
                assert up.wait_for(lambda s: s["failures"] >= 2, 10), up.stats()
            finally:
                up.stop()
            assert "collector refused our client certificate" in str(up.stats()["last_error"])
        msgs = [r.getMessage() for r in caplog.records]
        assert any("collector refused our client certificate:" in m for m in msgs), msgs
        assert any("collector refused our client certificate (none configured)" in m for m in msgs), msgs
        assert spool.backlog() == 10 and c.store.count(DEVICE) == 0
    finally:
        c.stop()


def test_untrusted_server_certificate_refused(pki: Pki, spool: Spool, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    c = _collector(pki, tmp_path / "store", server_rogue=True)
    try:
        spool.put_many(_flows(10))
        caplog.set_level(logging.WARNING, "tunnelwatch.report.uplink")
        up = _uplink(spool, c.url, pki)
        up.start()
        try:
            assert up.wait_for(lambda s: s["failures"] >= 2, 10), up.stats()
        finally:
            up.stop()
        assert any("server certificate not trusted: " in r.getMessage() for r in caplog.records)
        assert spool.backlog() == 10 and c.store.count(DEVICE) == 0 and c.counters()["requests"] == 0
    finally:
        c.stop()


def test_bearer_token_without_client_certificate(pki: Pki, spool: Spool, tmp_path: Path) -> None:
    c = Collector(str(tmp_path / "store"), cert=str(pki.server_cert), key=str(pki.server_key), token="t0k")
    c.start()
    try:
        sent = _flows(120)
        spool.put_many(sent)
        _drain(_uplink(spool, c.url, pki, client_cert=None, client_key=None, token="t0k"))
        _assert_exactly_once(c, sent)
    finally:
        c.stop()
