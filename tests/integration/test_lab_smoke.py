"""The namespace lab itself: the client reaches the server through the router, and teardown is complete."""

from __future__ import annotations

from pathlib import Path

from support.netns import CLIENT_IP, SERVER_IP, SERVER_IP6, lab, sh


def test_lab_routes_both_families_and_cleans_up(tmp_path: Path) -> None:
    with lab(tmp_path) as lb:
        names = (lb.client, lb.router, lb.server)
        assert lb.run(lb.client, "ping", "-c1", "-W2", SERVER_IP).returncode == 0
        assert lb.run(lb.client, "ping", "-6", "-c1", "-W2", SERVER_IP6).returncode == 0
        # the server sees the client's real address: routed, not NATed
        r = lb.run(lb.server, "ip", "route", "get", CLIENT_IP)
        assert "eth0" in r.stdout
    left = sh("ip", "netns", "list").stdout
    assert not any(n in left for n in names)
