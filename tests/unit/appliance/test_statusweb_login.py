"""Getting in: the login form, its session cookie, log-out, the failed-token limit, cross-site POSTs and
secrets kept out of the log (real HTTP on 127.0.0.1; the pieces alone: test_webauth.py)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

from tunnelwatch.appliance import webauth
from tunnelwatch.appliance.state import StatusState
from tunnelwatch.appliance.statusweb import MAX_FORM_BYTES, StatusServer
from tunnelwatch.record import FlowRecord

TOKEN = "login-test-token-0123456789abcdef"


@pytest.fixture
def server() -> Iterator[StatusServer]:
    st = StatusState(device_id="cpe-login", version="0.1.0", mode="enforce")
    st.set(health="ok")
    st.record_decision(FlowRecord(1700000000.0, "192.0.2.10", 51000, "198.51.100.7", 1194, "udp",
                                  "vpn_tunnel", "openvpn", "confirmed", "block", "unregistered"))
    srv = StatusServer(st, socket_path=None, http=[("127.0.0.1", 0)], token=TOKEN,
                       token_file="/etc/tunnelwatch/status.token")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _req(srv: StatusServer, method: str, path: str, body: str | None = None,
         headers: dict[str, str] | None = None, source: str = "127.0.0.1") -> tuple[int, Any, str]:
    port = srv.bound[0][1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
        conn.request(method, path, body=body.encode() if body is not None else None, headers=hdrs)
        r = conn.getresponse()
        return r.status, r.headers, r.read().decode()
    finally:
        conn.close()


def _origin(srv: StatusServer) -> dict[str, str]:
    return {"Origin": f"http://127.0.0.1:{srv.bound[0][1]}"}


def _login(srv: StatusServer, token: str = TOKEN, source: str = "127.0.0.1") -> tuple[int, Any, str]:
    return _req(srv, "POST", "/login", urlencode({"token": token}), _origin(srv), source)


def _sid(headers: Any) -> str:
    cookie = headers["Set-Cookie"]
    return str(cookie.split(";")[0].split("=", 1)[1])


def test_the_page_without_a_session_shows_the_form_and_where_the_token_lives(server: StatusServer) -> None:
    code, headers, body = _req(server, "GET", "/")
    assert code == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert '<form id="login" method="post" action="/login">' in body and 'name="token"' in body
    assert "/etc/tunnelwatch/status.token" in body
    assert "cpe-login" not in body and "openvpn" not in body
    assert "form-action 'self'" in headers["Content-Security-Policy"]  # the form may post to the box


def test_login_sets_a_session_cookie_and_redirects_to_the_page(server: StatusServer) -> None:
    code, headers, _ = _login(server)
    assert code == 303 and headers["Location"] == "/"
    parts = [p.strip() for p in headers["Set-Cookie"].split(";")]
    assert parts[0].startswith("tw_session=") and len(parts[0]) > len("tw_session=") + 40
    assert {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"} <= set(parts)
    assert "Secure" not in parts  # served over plain HTTP: a Secure cookie would never come back
    cookie = {"Cookie": f"tw_session={_sid(headers)}"}
    code, _, body = _req(server, "GET", "/", headers=cookie)
    assert code == 200 and 'id="health" class="health-ok">ok<' in body and "openvpn" in body
    assert '<form id="logout" method="post" action="/logout">' in body
    assert "token=" not in body  # links stay clean with a session
    code, _, body = _req(server, "GET", "/api/status", headers=cookie)
    assert code == 200 and json.loads(body)["device_id"] == "cpe-login"


def test_each_login_gets_its_own_session(server: StatusServer) -> None:
    assert _sid(_login(server)[1]) != _sid(_login(server)[1])
    assert len(server.sessions) == 2


def test_wrong_token_is_401_with_the_form_and_no_cookie(server: StatusServer) -> None:
    code, headers, body = _login(server, "not-the-token")
    assert code == 401 and "Set-Cookie" not in headers
    assert 'id="login-error"' in body and 'id="login"' in body and "cpe-login" not in body


def test_repeated_wrong_tokens_lock_that_address_out(server: StatusServer) -> None:
    for _ in range(webauth.MAX_FAILURES):
        assert _login(server, "guess")[0] == 401
    code, headers, _ = _login(server)  # even the right token: the address is locked for the window
    assert code == 429 and int(headers["Retry-After"]) > 0
    assert _req(server, "GET", f"/api/status?token={TOKEN}")[0] == 429
    assert _req(server, "GET", "/api/status", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 429
    # another LAN host still gets in
    assert _login(server, source="127.0.0.2")[0] == 303


def test_wrong_query_and_bearer_tokens_count_too(server: StatusServer) -> None:
    for i in range(webauth.MAX_FAILURES):
        path = f"/?token=guess{i}" if i % 2 else "/api/status"
        headers = {} if i % 2 else {"Authorization": f"Bearer guess{i}"}
        assert _req(server, "GET", path, headers=headers)[0] == 401
    assert _req(server, "GET", f"/?token={TOKEN}")[0] == 429


def test_an_expired_session_gets_the_form_again(server: StatusServer) -> None:
    sid = _sid(_login(server)[1])
    assert _req(server, "GET", "/", headers={"Cookie": f"tw_session={sid}"})[0] == 200
    for key in list(server.sessions._sessions):
        server.sessions._sessions[key] = 0.0  # its expiry, in the sessions' clock: long past
    code, _, body = _req(server, "GET", "/", headers={"Cookie": f"tw_session={sid}"})
    assert code == 401 and 'id="login"' in body and len(server.sessions) == 0


def test_a_forged_or_unknown_cookie_is_not_a_session(server: StatusServer) -> None:
    _login(server)
    for cookie in ("tw_session=", "tw_session=AAAA", "tw_session=" + "x" * 4000, "other=1", "\x00;;="):
        assert _req(server, "GET", "/api/status", headers={"Cookie": cookie})[0] == 401


def test_logout_ends_the_session(server: StatusServer) -> None:
    sid = _sid(_login(server)[1])
    cookie = {"Cookie": f"tw_session={sid}", **_origin(server)}
    code, headers, _ = _req(server, "POST", "/logout", "", cookie)
    assert code == 303 and headers["Location"] == "/" and "Max-Age=0" in headers["Set-Cookie"]
    assert _req(server, "GET", "/", headers={"Cookie": f"tw_session={sid}"})[0] == 401


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"}, {"Origin": "null"}, {"Referer": "http://evil.example/form.html"},
    {"Sec-Fetch-Site": "cross-site"},
])
def test_a_cross_site_login_or_logout_is_refused(server: StatusServer, headers: dict[str, str]) -> None:
    code, hdrs, _ = _req(server, "POST", "/login", urlencode({"token": TOKEN}), headers)
    assert code == 403 and "Set-Cookie" not in hdrs
    sid = _sid(_login(server)[1])
    code, _, _ = _req(server, "POST", "/logout", "", {"Cookie": f"tw_session={sid}", **headers})
    assert code == 403
    assert _req(server, "GET", "/", headers={"Cookie": f"tw_session={sid}"})[0] == 200  # still logged in


def test_post_bodies_are_capped_and_need_a_length(server: StatusServer) -> None:
    big = urlencode({"token": "x" * (MAX_FORM_BYTES + 10)})
    assert _req(server, "POST", "/login", big, _origin(server))[0] == 413
    port = server.bound[0][1]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /login HTTP/1.0\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\ntoken=x")
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100).startswith(b"HTTP/1.0 411")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # '¹' (latin-1): no length either
        s.sendall(b"POST /login HTTP/1.0\r\nContent-Length: \xb9\r\n\r\ntoken=x")
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100).startswith(b"HTTP/1.0 411")
    # a POST anywhere else is not found; the server still logs people in after all of this
    assert _req(server, "POST", "/nowhere", "x", _origin(server))[0] == 404
    assert _login(server)[0] == 303


def test_no_token_or_session_id_reaches_the_log(server: StatusServer,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", "tunnelwatch.appliance")
    sid = _sid(_login(server)[1])
    _login(server, "wrong-guess-123")
    _req(server, "GET", f"/api/status?token={TOKEN}")
    _req(server, "GET", "/?token=wrong-guess-456")
    _req(server, "GET", "/", headers={"Cookie": f"tw_session={sid}"})
    _req(server, "POST", "/logout", "", {"Cookie": f"tw_session={sid}", **_origin(server)})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "login from 127.0.0.1" in text and "wrong token from 127.0.0.1" in text
    for secret in (TOKEN, sid, "wrong-guess-123", "wrong-guess-456"):
        assert secret not in text
