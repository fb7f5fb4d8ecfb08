"""The status page as a technician meets it, in Debian's headless chromium driven over DevTools
(support/cdp.py) on 127.0.0.1: log in with the form at phone (390 px) and desktop (1280 px) width, then
measure the rendered page. The action and reason of every decision, in the full list and in the per-host
view, must lie inside the viewport (no sideways scrolling), the registry's customers and end dates are
listed with the one ending within 30 days highlighted, the session cookie has the attributes asked for,
logging out works, and a login form posted from another origin is refused. Each width leaves a
screenshot whose size is checked."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from support.cdp import Browser
from support.netns import require_tools
from tunnelwatch.appliance.state import StatusState
from tunnelwatch.appliance.statusweb import StatusServer
from tunnelwatch.record import FlowRecord

pytestmark = pytest.mark.integration

TOKEN = "b2f4c0ffee-browser-login-token-5a1d9e7c3b"
HOST = "192.168.1.20"
DAY = 86400.0

#: the viewport measurements: every action and reason cell of #flows, its box against the window
MEASURE = """(() => {
  const vw = document.documentElement.clientWidth;
  const cells = [...document.querySelectorAll(
    '#flows td[data-label="action"], #flows td[data-label="reason"]')];
  return {vw: vw, innerWidth: window.innerWidth, scrollWidth: document.documentElement.scrollWidth,
          rows: document.querySelectorAll('#flows tr[class^="action-"]').length,
          cells: cells.map(td => { const r = td.getBoundingClientRect();
            return {label: td.dataset.label, left: r.left, right: r.right, width: r.width, height: r.height,
                    text: td.textContent, hidden: getComputedStyle(td).display === 'none'
                      || getComputedStyle(td).visibility !== 'visible'}; })};
})()"""


def _state() -> StatusState:
    now = time.time()
    st = StatusState(device_id="cpe-browser-2", version="0.1.0", mode="enforce")
    st.set(health="ok", registrations=[
        {"id": "TEST-29", "customer": "Test entry", "protocols": ["openvpn"], "lan_hosts": [],
         "valid_from": None, "valid_until": now + 29.5 * DAY},
        {"id": "ACME-1", "customer": "Acme Textiles", "protocols": ["wireguard"], "lan_hosts": [f"{HOST}/32"],
         "valid_from": None, "valid_until": now + 200 * DAY}])
    for i in range(12):
        src = HOST if i % 3 == 0 else f"192.168.1.{30 + i}"
        reason = ("unregistered: no registration for this host, server and protocol; a long reason "
                  "that must wrap rather than push the column off the screen " * (1 + i % 2))
        st.record_decision(FlowRecord(now - 60 * i, src, 40000 + i, "203.0.113.77", 51820, "udp",
                                      "vpn_tunnel", "wireguard", "confirmed", "block", reason))
    st.record_decision(FlowRecord(now, "192.168.1.50", 5060, "198.51.100.9", 5060, "udp", "voip", "sip",
                                  "confirmed", "report", "voip: report"))
    return st


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    require_tools("chromium")
    srv = StatusServer(_state(), socket_path=None, http=[("127.0.0.1", 0)], token=TOKEN,
                       token_file="/etc/tunnelwatch/status.token")
    srv.start()
    try:
        assert srv.bound, "status server did not bind 127.0.0.1"
        yield f"http://127.0.0.1:{srv.bound[0][1]}"
    finally:
        srv.stop()


def _login(b: Browser, base: str) -> None:
    """Open the page, type the token into the form and press the button, as a technician would."""
    b.goto(base + "/")
    assert b.eval("document.getElementById('unauthorized').textContent") == "401 Unauthorized"
    assert "/etc/tunnelwatch/status.token" in b.eval("document.body.textContent")
    b.events.clear()
    b.eval(f"document.getElementById('token').value = {TOKEN!r}; "
           "document.getElementById('login-button').click(); true")
    b.wait_event("Page.loadEventFired")
    assert b.eval("location.pathname + location.search") == "/"


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _assert_inside(m: dict[str, Any], rows: int) -> None:
    assert m["rows"] == rows, m["rows"]
    assert m["scrollWidth"] <= m["vw"], f"the page scrolls sideways: {m['scrollWidth']} > {m['vw']}"
    assert len(m["cells"]) == 2 * rows
    for c in m["cells"]:
        assert not c["hidden"] and c["width"] > 0 and c["height"] > 0, c
        assert c["left"] >= 0 and c["right"] <= m["vw"], f"{c['label']} off-screen: {c}"


@pytest.mark.parametrize(("width", "height", "mobile"), [(390, 844, True), (1280, 800, False)])
def test_login_then_action_and_reason_are_on_screen(base: str, tmp_path: Path, width: int, height: int,
                                                    mobile: bool) -> None:
    with Browser() as b:
        b.viewport(width, height, mobile=mobile)
        _login(b, base)
        assert b.eval("document.getElementById('health').textContent") == "ok"
        cookies = b.call("Network.getCookies", urls=[base + "/"])["cookies"]
        (c,) = [c for c in cookies if c["name"] == "tw_session"]
        assert c["httpOnly"] and c["sameSite"] == "Strict" and c["path"] == "/" and not c["secure"]
        assert 11.9 * 3600 < c["expires"] - time.time() <= 12 * 3600 + 5
        assert b.eval("document.cookie") == ""  # HttpOnly: the page's scripts cannot read it

        m = b.eval(MEASURE)
        assert m["innerWidth"] == width
        _assert_inside(m, 13)
        # the newest decision, scrolled to, shows its action and reason fully inside the window
        top = b.eval("(() => { const r = document.querySelector('#flows tr[class^=\"action-\"]'); "
                     "r.scrollIntoView(); const a = r.querySelector('td[data-label=\"action\"]')"
                     ".getBoundingClientRect(); return [a.top, a.bottom, window.innerHeight]; })()")
        assert 0 <= top[0] < top[1] <= top[2]
        shot = tmp_path / f"page-{width}.png"
        b.screenshot(str(shot))
        assert _png_size(shot) == (width * (3 if mobile else 1), height * (3 if mobile else 1))

        # the per-host view: only that host's decisions, the same columns on screen
        b.goto(f"{base}/?host={HOST}")
        m = b.eval(MEASURE)
        _assert_inside(m, 4)
        srcs = b.eval("[...document.querySelectorAll('#flows td[data-label=\"src\"]')]"
                      ".map(t => t.textContent)")
        assert srcs and all(s.startswith(HOST + ":") for s in srcs)
        b.screenshot(str(tmp_path / f"host-{width}.png"))

        # the registry: customers and end dates, the one ending within 30 days highlighted
        reg = b.eval("""[...document.querySelectorAll('#registrations tr.reg')].map(r => {
            const b = r.getBoundingClientRect();
            return {cls: r.className, text: r.textContent, right: b.right,
                    bg: getComputedStyle(r.querySelector('td')).backgroundColor}; })""")
        assert [r["text"].startswith(("customer: Test entry", "Test entry")) for r in reg] == [True, False]
        assert reg[0]["cls"] == "reg expiring" and "ends in 29 days" in reg[0]["text"]
        assert reg[0]["bg"] == "rgb(255, 240, 194)" and reg[1]["bg"] != reg[0]["bg"]
        assert "Acme Textiles" in reg[1]["text"] and all(r["right"] <= width for r in reg)


def test_logout_ends_the_session_in_the_browser(base: str) -> None:
    with Browser() as b:
        b.viewport(390, 844, mobile=True)
        _login(b, base)
        b.events.clear()
        b.eval("document.querySelector('#logout button').click(); true")
        b.wait_event("Page.loadEventFired")
        assert b.eval("document.getElementById('unauthorized').textContent") == "401 Unauthorized"
        assert not [c for c in b.call("Network.getCookies", urls=[base + "/"])["cookies"]
                    if c["name"] == "tw_session"]


class _Attacker(BaseHTTPRequestHandler):
    """Another origin (another port on 127.0.0.1) whose page posts the login form to the box."""

    target = ""

    def do_GET(self) -> None:
        body = (f'<form action="{self.target}/login" method="post"><input name="token" value="{TOKEN}">'
                "</form><script>document.forms[0].submit()</script>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_login_posted_from_another_origin_is_refused(base: str) -> None:
    _Attacker.target = base
    evil = ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    t = threading.Thread(target=evil.serve_forever, daemon=True)
    t.start()
    try:
        with Browser() as b:
            b.goto(f"http://127.0.0.1:{evil.server_address[1]}/")  # its script submits the form at once
            deadline = time.monotonic() + 20
            while b.eval("location.href + ' ' + document.readyState") != f"{base}/login complete":
                assert time.monotonic() < deadline, b.eval("location.href")
                time.sleep(0.1)  # polling the browser's state, bounded by the deadline
            assert b.eval("document.body.textContent").strip() == "cross-site form refused"
            assert not b.call("Network.getCookies", urls=[base + "/"])["cookies"]
    finally:
        evil.shutdown()
        evil.server_close()
        t.join(5)
