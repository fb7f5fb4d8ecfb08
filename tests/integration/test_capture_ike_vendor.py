"""Real strongSwan told to send its Vendor ID (charon.send_vendor_id = yes), captured on the router's WAN
side: the IKE flow is `ike` confirmed and its evidence names strongSwan for both ends (ikevendor.py).

Run as root with TUNNELWATCH_WRITE_GOLDEN=1 to refresh tests/data/captures/real-strongswan-vendor-id.pcap.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pcap_facts import ike_messages, trim, wait_for
from peers_tunnels import TUNNEL_TOOLS, ikev2_exchange

from support.netns import CLIENT_IP, SERVER_IP, lab, require_tools
from tunnelwatch.offline.classify import classify_file

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "captures" / "real-strongswan-vendor-id.pcap"
STRONGSWAN_VID = bytes.fromhex("882fe56d6fd20dbc2251613b2ebe5beb")  # MD5("strongSwan")


def test_strongswan_vendor_id_is_named_in_the_ike_evidence(tmp_path: Path) -> None:
    require_tools(*TUNNEL_TOOLS)
    pcap = tmp_path / "ikev2-vid.pcap"
    with lab(tmp_path) as lb, lb.capture(lb.router, "wan0", pcap):
        ikev2_exchange(lb, tmp_path / "swan", CLIENT_IP, SERVER_IP, vendor_id=True)
        wait_for(pcap, lambda p: (SERVER_IP, "INFORMATIONAL", "response") in ike_messages(p),
                 "IKE DELETE reply")
    # independent of tunnelwatch: the VID is on the wire (in clear, in IKE_SA_INIT)
    assert STRONGSWAN_VID in pcap.read_bytes(), "charon sent no strongSwan vendor id"
    if os.environ.get("TUNNELWATCH_WRITE_GOLDEN") == "1":
        trim(pcap, GOLDEN)
    records = [r for r in classify_file(str(pcap)) if r["transport"] == "udp" and r["dport"] == 500]
    assert len(records) == 1, records
    rec = records[0]
    assert (rec["klass"], rec["protocol"], rec["confidence"]) == ("vpn_tunnel", "ike", "confirmed"), rec
    assert "vendor ID: strongSwan (initiator)" in rec["evidence"], rec
    assert "vendor ID: strongSwan (responder)" in rec["evidence"], rec
