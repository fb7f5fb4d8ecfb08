"""The status page in a real headless browser (Debian's chromium) on 127.0.0.1, rendered DOM dumped: with
the token it shows health, mode and the recent blocked flow (escaped, no script runs); without or with a
wrong token it shows the login page and nothing about the box. Logging in, phone and desktop widths:
test_status_browser_login.py."""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from support.netns import require_tools
from tunnelwatch.appliance.state import StatusState
from tunnelwatch.appliance.statusweb import StatusServer
from tunnelwatch.record import FlowRecord

pytestmark = pytest.mark.integration

TOKEN = "browser-test-token-7f3a"
HOSTILE = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'


def _dom(url: str) -> str:
    """The rendered DOM of a page; chromium may reach 127.0.0.1 only."""
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
             f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "<html" in r.stdout, r.stderr[-2000:]
    return r.stdout


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    require_tools("chromium")
    st = StatusState(device_id="cpe-browser-1", version="0.1.0", mode="enforce")
    st.set(health="ok", registry_version="r17", uplink_backlog=3)
    st.record_decision(FlowRecord(1700000000.0, "198.51.100.2", 40000, "203.0.113.2", 1194, "udp",
                                  "vpn_tunnel", "openvpn", "confirmed", "block", HOSTILE))
    srv = StatusServer(st, socket_path=None, http=[("127.0.0.1", 0)], token=TOKEN)
    srv.start()
    try:
        assert srv.bound, "status server did not bind 127.0.0.1"
        yield f"http://127.0.0.1:{srv.bound[0][1]}"
    finally:
        srv.stop()


def _text(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert m, f"no #{element_id} in the page"
    return m.group(1)


def test_page_with_token_shows_health_and_blocked_flow(base: str) -> None:
    dom = _dom(f"{base}/?token={TOKEN}")
    assert _text(dom, "health") == "ok"
    assert _text(dom, "mode") == "enforce"
    assert _text(dom, "registry-version") == "r17"
    assert _text(dom, "uplink-backlog") == "3"
    assert _text(dom, "config-check") == "ok"
    row = re.search(r'<tr class="action-block">(.*?)</tr>', dom)
    assert row, "no blocked flow row"
    cells = re.findall(r'<td data-label="[a-z]+">(.*?)</td>', row.group(1))
    # what was done and why first (a phone shows them without scrolling sideways)
    assert cells[1:3] == ["block", "openvpn"]
    assert cells[4:] == ["198.51.100.2:40000", "203.0.113.2:1194", "udp", "vpn_tunnel", "confirmed"]
    # the hostile reason is shown as text: no element was injected, no script ran
    assert "&lt;script&gt;" in cells[3] and "<script" not in dom and "<img" not in dom
    assert "<title>tunnelwatch cpe-browser-1</title>" in dom and "pwned" not in dom.split("</title>")[0]


@pytest.mark.parametrize("query", ["", "?token=wrong", f"?token={TOKEN}x", f"?tok={TOKEN}"])
def test_page_without_valid_token_shows_the_login_page(base: str, query: str) -> None:
    dom = _dom(f"{base}/{query}")
    assert _text(dom, "unauthorized") == "401 Unauthorized"
    assert '<form id="login" method="post" action="/login">' in dom and "status.token_file" in dom
    assert "cpe-browser-1" not in dom and "openvpn" not in dom and 'id="health"' not in dom


def test_api_opens_with_the_token_in_the_query_for_scripts(base: str) -> None:
    assert "cpe-browser-1" in _dom(f"{base}/api/status?token={TOKEN}")
    dom = _dom(f"{base}/api/status?token=wrong")
    assert "401 Unauthorized" in dom and "cpe-browser-1" not in dom
