"""The namespace lab for integration tests: tunnelwatch.lab.netlab with pytest's skip/fail behaviour.

The lab itself (client <-> router <-> server, addresses, Lab.run/spawn/log/wait_for_log/wait_until/stop/
capture) lives in the product so `tunnelwatch lab` and the bench can use it; this wrapper skips the test
when it is not root and fails it loudly when a peer program is missing (CI installs them all).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tunnelwatch.lab import netlab
from tunnelwatch.lab.netlab import (
    CLIENT_IP,
    CLIENT_IP6,
    ROUTER_LAN_IP,
    ROUTER_LAN_IP6,
    ROUTER_WAN_IP,
    ROUTER_WAN_IP6,
    SERVER_IP,
    SERVER_IP6,
    Lab,
    can_run_lab,
    sh,
)


def require_tools(*tools: str) -> None:
    """Fail (not skip) when a peer program the test needs is missing: CI installs them all."""
    missing = netlab.missing_tools(*tools)
    if missing:
        pkgs = " ".join(netlab.missing_packages(*tools))
        pytest.fail(f"missing tools {missing} (apt-get install {pkgs}): run `make setup` as root")


@contextmanager
def lab(workdir: Path, *, ipv6: bool = True) -> Iterator[Lab]:
    """Build client/router/server namespaces; tear everything down on exit. Skips when not root."""
    reason = can_run_lab()
    if reason:
        pytest.skip(reason)
    with netlab.lab(workdir, ipv6=ipv6) as lb:
        yield lb


__all__ = [
    "CLIENT_IP", "CLIENT_IP6", "ROUTER_LAN_IP", "ROUTER_LAN_IP6", "ROUTER_WAN_IP", "ROUTER_WAN_IP6",
    "SERVER_IP", "SERVER_IP6", "Lab", "can_run_lab", "lab", "require_tools", "sh",
]
