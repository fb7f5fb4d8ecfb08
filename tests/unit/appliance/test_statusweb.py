"""The status server: HTTP endpoints (real urllib client on 127.0.0.1), unix socket and `tunnelwatch status`
output. The state itself: test_state.py; rendering: test_statuspage.py."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tunnelwatch.appliance.state import StatusState
from tunnelwatch.appliance.statusweb import StatusServer, cli_status
from tunnelwatch.record import FlowRecord

TOKEN = "s3cret-status-token"


def _rec(**kw: Any) -> FlowRecord:
    base: dict[str, Any] = {
        "ts": 1700000000.0, "src": "192.0.2.10", "sport": 51000, "dst": "198.51.100.7", "dport": 1194,
        "transport": "udp", "klass": "vpn_tunnel", "protocol": "openvpn", "confidence": "confirmed",
        "action": "block", "reason": "unregistered"}
    base.update(kw)
    return FlowRecord(**base)


def _state() -> StatusState:
    st = StatusState(device_id="cpe-42", version="0.1.0", mode="enforce")
    st.set(health="ok", registry_version="2024-06-01.3", uplink_backlog=5, queues=2)
    st.record_decision(_rec())
    st.record_decision(_rec(klass="benign", protocol="tls", action="allow", dport=443))
    st.record_decision(_rec(klass="voip", protocol="sip", action="report", dport=5060, reason="voip: report"))
    return st


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[StatusState, StatusServer, str]]:
    st = _state()
    srv = StatusServer(st, socket_path=str(tmp_path / "run" / "status.sock"), http=[("127.0.0.1", 0)],
                       token=TOKEN)
    srv.start()
    try:
        assert len(srv.bound) == 1
        yield st, srv, f"http://127.0.0.1:{srv.bound[0][1]}"
    finally:
        srv.stop()


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? (\S+)$')


def _parse_metrics(text: str) -> dict[str, list[tuple[str, float]]]:
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter") and name not in types
            types[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, f"bad sample line: {line!r}"
        name = m.group(1)
        assert name in types, f"sample before its TYPE: {line!r}"
        if types[name] == "counter":
            assert name.endswith("_total")
        samples.setdefault(name, []).append((m.group(2) or "", float(m.group(5))))
    return samples


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


# --- HTTP ----------------------------------------------------------------------------------------------

def test_http_requires_token(served: tuple[StatusState, StatusServer, str]) -> None:
    _, srv, base = served
    for path in ("/", "/api/status", "/metrics", "/nope"):
        for token in (None, "wrong", TOKEN[:-1]):
            code, headers, body = _get(base + path, token)
            assert code == 401, (path, token)
            assert headers["WWW-Authenticate"].startswith("Bearer")
            assert "cpe-42" not in body
    # ?token= opens every path (scripts, a phone's address bar); a wrong one is a 401 too
    srv.sessions._failures.clear()  # the 8 wrong tokens above count towards this address's limit
    assert _get(f"{base}/?token={TOKEN}")[0] == 200
    assert _get(f"{base}/api/status?token={TOKEN}")[0] == 200
    assert _get(f"{base}/metrics?token={TOKEN}")[0] == 200
    assert _get(f"{base}/?token=wrong")[0] == 401


def test_http_endpoints_with_token(served: tuple[StatusState, StatusServer, str]) -> None:
    st, _, base = served
    code, headers, body = _get(base + "/api/status", TOKEN)
    assert code == 200 and headers["Content-Type"] == "application/json"
    snap = json.loads(body)
    assert snap["health"] == "ok" and snap["recent"][1]["protocol"] == "openvpn"
    code, headers, body = _get(base + "/metrics", TOKEN)
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "tunnelwatch_flows_total" in _parse_metrics(body)
    code, headers, body = _get(base + "/", TOKEN)
    assert code == 200 and 'id="health" class="health-ok">ok<' in body and "openvpn" in body
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["Cache-Control"] == "no-store"
    st.set(health="degraded")
    assert json.loads(_get(base + "/api/status", TOKEN)[2])["health"] == "degraded"
    assert _get(base + "/nope", TOKEN)[0] == 404


def test_bad_requests_do_not_kill_the_server(served: tuple[StatusState, StatusServer, str]) -> None:
    _, srv, base = served
    port = srv.bound[0][1]
    for raw in (b"garbage\r\n\r\n", b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n",
                b"POST / HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello", b"\x16\x03\x01\x00\xff" * 20, b"",
                b"GET /%00%ff?token=%zz HTTP/1.0\r\nAuthorization: Bearer\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            reply = b""
            try:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
                while chunk := s.recv(65536):
                    reply += chunk
            except (ConnectionResetError, BrokenPipeError, OSError) as exc:
                # the server may refuse an oversized request and close before we finish writing it
                assert len(raw) > 8192, f"{raw[:20]!r}: {exc}"
        # HTTP/0.9-style garbage gets a bare error page, as http.server does
        assert reply == b"" or reply.startswith((b"HTTP/1.0 ", b"<!DOCTYPE HTML>")), raw[:20]
        assert b"cpe-42" not in reply
    assert _get(base + "/api/status", TOKEN)[0] == 200


def test_http_without_token_is_refused() -> None:
    with pytest.raises(ValueError):
        StatusServer(_state(), socket_path=None, http=[("127.0.0.1", 0)], token=None)
    with pytest.raises(ValueError):
        StatusServer(_state(), socket_path=None, http=[("127.0.0.1", 0)], token="")
    StatusServer(_state(), socket_path=None, http=[], token=None)  # socket only: fine


def test_unbindable_address_is_skipped(tmp_path: Path) -> None:
    srv = StatusServer(_state(), socket_path=None, http=[("192.0.2.254", 0), ("127.0.0.1", 0)], token=TOKEN)
    srv.start()
    try:
        assert [h for h, _ in srv.bound] == ["127.0.0.1"]
    finally:
        srv.stop()


# --- unix socket and `tunnelwatch status` --------------------------------------------------------------

def test_unix_socket_mode_and_cli_status(served: tuple[StatusState, StatusServer, str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    st, srv, _ = served
    path = srv.socket_path
    assert path is not None
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_ISSOCK(os.stat(path).st_mode)
    assert cli_status(argparse.Namespace(socket=path, json=False)) == 0
    out = capsys.readouterr().out
    assert "tunnelwatch 0.1.0 on cpe-42" in out and "health:           ok" in out
    assert re.search(r"198\.51\.100\.7:1194 +vpn_tunnel +openvpn +confirmed +block +unregistered", out)
    assert cli_status(argparse.Namespace(socket=path, json=True)) == 0
    assert json.loads(capsys.readouterr().out)["registry_version"] == "2024-06-01.3"
    st.set(health="degraded")
    assert cli_status(argparse.Namespace(socket=path, json=False)) == 1


def test_second_server_does_not_steal_a_live_socket(served: tuple[StatusState, StatusServer, str]) -> None:
    _, srv, _ = served
    other = StatusServer(_state(), socket_path=srv.socket_path, http=[], token=None)
    other.start()
    other.stop()
    assert srv.socket_path is not None and os.path.exists(srv.socket_path)  # still the first one's


def test_stop_removes_socket_and_cli_reports_absent_daemon(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "s.sock")
    srv = StatusServer(_state(), socket_path=path, http=[], token=None)
    srv.start()
    assert os.path.exists(path)
    srv.stop()
    assert not os.path.exists(path)
    assert cli_status(argparse.Namespace(socket=path, json=False)) == 1
    assert "is the daemon running?" in capsys.readouterr().err


def _connect(url: str, source: str = "127.0.0.1") -> socket.socket:
    port = int(url.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return s


def _closed_by_server(s: socket.socket, timeout: float) -> bool:
    """True when the server closes the connection (EOF or reset) within `timeout` seconds."""
    s.settimeout(timeout)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
            if b"200 OK" in data:
                return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_a_trickling_client_is_cut_at_the_request_deadline(served: tuple[StatusState, StatusServer, str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import tunnelwatch.appliance.statusweb as sw

    monkeypatch.setattr(sw, "REQUEST_DEADLINE", 0.5)
    _, _, url = served
    s = _connect(url)
    try:
        cut = False
        for ch in b"GET / HTTP/1.0\r\n":  # one byte every 0.2 s: each resets a per-read timeout
            try:
                s.sendall(bytes([ch]))
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            if _closed_by_server(s, 0.2):
                cut = True
                break
        assert cut, "a client sending a byte every 0.2 s kept its connection past a 0.5 s deadline"
    finally:
        s.close()


def test_one_client_cannot_take_every_slot(served: tuple[StatusState, StatusServer, str]) -> None:
    import tunnelwatch.appliance.statusweb as sw

    _, _, url = served
    idle = [_connect(url) for _ in range(sw.MAX_PER_CLIENT)]
    try:
        extra = _connect(url)
        assert _closed_by_server(extra, 5), "a connection over the per-client limit must be closed at once"
        extra.close()
        # another LAN host (another loopback address here) still gets the page with its token
        other = _connect(url, source="127.0.0.2")
        other.sendall(f"GET /api/status HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        other.settimeout(10)
        assert other.recv(100).startswith(b"HTTP/1.0 200"), "the token holder was locked out"
        other.close()
    finally:
        for s in idle:
            s.close()


def test_oversized_headers_are_refused_not_buffered(served: tuple[StatusState, StatusServer, str]) -> None:
    _, _, url = served
    s = _connect(url)
    try:
        s.sendall(f"GET /api/status HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n".encode())
        refused = False
        try:
            for i in range(99):  # 99 x 64 KiB raised the daemon's RSS by 200 MiB before the cap
                s.sendall(f"X-Pad-{i}: ".encode() + b"a" * 65000 + b"\r\n")
            s.sendall(b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            refused = True
        assert refused or _closed_by_server(s, 5)
    finally:
        s.close()


def test_the_token_never_reaches_the_log(served: tuple[StatusState, StatusServer, str],
                                         caplog: pytest.LogCaptureFixture) -> None:
    _, _, url = served
    caplog.set_level("DEBUG", "tunnelwatch.appliance.statusweb")
    assert _get(f"{url}/?token={TOKEN}")[0] == 200
    assert _get(f"{url}/?token=wrong-guess-123")[0] == 401
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "GET /?token=REDACTED" in text, text
    assert TOKEN not in text and "wrong-guess-123" not in text
