"""Login sessions, the failed-token limit, cookies, the same-origin check and redaction (no network: the
HTTP side is tested in test_statusweb_login.py)."""

from __future__ import annotations

import pytest

from tunnelwatch.appliance import webauth
from tunnelwatch.appliance.webauth import (
    Sessions,
    clear_cookie,
    cookie_value,
    redact,
    same_origin,
    session_cookie,
    token_matches,
)


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_session_lives_its_lifetime_then_is_gone() -> None:
    clock = _Clock()
    s = Sessions(lifetime=100, clock=clock)
    sid = s.create()
    assert len(sid) >= 43 and s.valid(sid)  # 32 random bytes, url-safe
    assert not s.valid(sid[:-1] + ("A" if sid[-1] != "A" else "B"))
    clock.t += 99
    assert s.valid(sid)
    clock.t += 1
    assert not s.valid(sid) and len(s) == 0  # expired sessions are forgotten


def test_session_ids_are_random_and_only_hashes_are_kept() -> None:
    s = Sessions()
    ids = {s.create() for _ in range(20)}
    assert len(ids) == 20
    assert not any(sid in repr(s._sessions) for sid in ids)


def test_logout_ends_the_session() -> None:
    s = Sessions()
    sid, other = s.create(), s.create()
    s.end(sid)
    assert not s.valid(sid) and s.valid(other)
    s.end("never-issued")  # harmless


def test_the_session_table_is_bounded_oldest_first() -> None:
    s = Sessions(max_sessions=3)
    ids = [s.create() for _ in range(5)]
    assert len(s) == 3
    assert [s.valid(i) for i in ids] == [False, False, True, True, True]


def test_hostile_session_ids_are_refused_without_raising() -> None:
    s = Sessions()
    for sid in ("", "x" * 10_000, "\x00\xff", "é" * 50, "\ud800"):
        assert not s.valid(sid)


def test_failures_lock_an_address_for_the_window_only() -> None:
    clock = _Clock()
    s = Sessions(max_failures=3, window=60, clock=clock)
    for _ in range(2):
        s.failed("192.0.2.1")
    assert s.locked_out("192.0.2.1") == 0
    s.failed("192.0.2.1")
    wait = s.locked_out("192.0.2.1")
    assert 59 <= wait <= 60
    assert s.locked_out("192.0.2.2") == 0  # another LAN host is not locked out
    clock.t += 61
    assert s.locked_out("192.0.2.1") == 0


def test_the_failure_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webauth, "MAX_TRACKED_CLIENTS", 10)
    s = Sessions(max_failures=1)
    for i in range(50):
        s.failed(f"10.0.0.{i}")
    assert len(s._failures) == 10 and s.locked_out("10.0.0.49") and not s.locked_out("10.0.0.0")


def test_token_compare() -> None:
    assert token_matches("abc", b"abc")
    assert not token_matches("", b"")
    assert not token_matches("abd", b"abc") and not token_matches("ab", b"abc")
    assert not token_matches("\ud800", b"abc")  # not encodable: no exception


def test_cookies_carry_the_attributes() -> None:
    c = session_cookie("SID", secure=False, lifetime=43200)
    parts = [p.strip() for p in c.split(";")]
    assert parts[0] == "tw_session=SID"
    assert {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"} <= set(parts) and "Secure" not in parts
    assert "Secure" in session_cookie("SID", secure=True)
    assert "Max-Age=0" in clear_cookie(secure=False) and clear_cookie(secure=False).startswith("tw_session=;")


def test_cookie_header_parsing() -> None:
    assert cookie_value("a=1; tw_session=XYZ; b=2") == "XYZ"
    assert cookie_value('tw_session="Q"') == "Q"
    assert cookie_value("") == "" and cookie_value("tw_sessionx=1") == "" and cookie_value(";;;=") == ""
    assert len(cookie_value("tw_session=" + "a" * 5000)) == 128


@pytest.mark.parametrize(("headers", "ok"), [
    ({"Host": "192.0.2.1:8787"}, True),  # a script: no browser headers at all
    ({"Host": "192.0.2.1:8787", "Origin": "http://192.0.2.1:8787"}, True),
    ({"Host": "192.0.2.1:8787", "Origin": "http://evil.example"}, False),
    ({"Host": "192.0.2.1:8787", "Origin": "null"}, False),
    ({"Host": "192.0.2.1:8787", "Origin": "https://192.0.2.1:8787"}, False),  # not how we are served
    ({"Host": "192.0.2.1:8787", "Referer": "http://192.0.2.1:8787/?host=x"}, True),
    ({"Host": "192.0.2.1:8787", "Referer": "http://192.0.2.1.evil.example/"}, False),
    ({"Host": "192.0.2.1:8787", "Sec-Fetch-Site": "cross-site"}, False),
    ({"Host": "192.0.2.1:8787", "Sec-Fetch-Site": "same-site", "Origin": "http://192.0.2.1:8787"}, False),
    ({"Host": "192.0.2.1:8787", "Sec-Fetch-Site": "same-origin", "Origin": "http://192.0.2.1:8787"}, True),
    ({"Origin": "http://192.0.2.1:8787"}, False),  # no Host to compare with
    ({"Host": "x", "Origin": "http://[::1"}, False),  # unparsable: refused, not raised
])
def test_same_origin(headers: dict[str, str], ok: bool) -> None:
    assert same_origin(headers, secure=False) is ok


def test_redaction_covers_query_cookie_and_bearer() -> None:
    line = ('"GET /api/status?host=1&token=SECRET1 HTTP/1.1" Cookie: tw_session=SECRET2; '
            "Authorization: Bearer SECRET3")
    out = redact(line)
    assert "SECRET" not in out and out.count("REDACTED") == 3
