"""Real peers for the enforcement tests, re-exported from tunnelwatch.lab.peers (shared with the demo).

Everything is generated under the test's tmp dir at test time (no key material in the repo) and runs
inside the lab's namespaces.
"""

from __future__ import annotations

from tunnelwatch.lab.netlab import sh
from tunnelwatch.lab.peers import (
    HTTP_PORT,
    HTTPS_PORT,
    OPENVPN_PORT,
    TUN_CLIENT_IP,
    TUN_SERVER_IP,
    OpenVPNPair,
    fetch,
    make_pki,
    openvpn_pair,
    start_openvpn,
    start_web,
    tunnel_ping,
)

__all__ = ["HTTPS_PORT", "HTTP_PORT", "OPENVPN_PORT", "TUN_CLIENT_IP", "TUN_SERVER_IP", "OpenVPNPair",
           "fetch", "make_pki", "openvpn_pair", "sh", "start_openvpn", "start_web", "tunnel_ping"]
