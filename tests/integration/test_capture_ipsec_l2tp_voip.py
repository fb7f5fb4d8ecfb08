"""Real IKEv2, L2TP, PPTP and SIP/RTP sessions between lab namespaces, captured on the router's WAN side
and classified offline: the tunnel and call flows get their labels and nothing else is flagged.

Each test first checks, independently of tunnelwatch (pcap_facts), that the real software put the
expected messages on the wire in both directions, so a labelling failure is never a harness failure.

Run as root with TUNNELWATCH_WRITE_GOLDEN=1 to refresh tests/data/captures/: trimmed copies of these
captures, which test_golden_capture_keeps_its_labels classifies without root or peers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from pcap_facts import (
    esp_in_udp,
    hexdump_first,
    ike_messages,
    l2tp_control,
    pptp_control,
    read,
    rtp_counts,
    sdp_audio,
    sip_messages,
    trim,
    wait_for,
)
from peers_tunnels import (
    LIBIPSEC_PLUGIN,
    TUNNEL_TOOLS,
    ikev2_exchange,
    l2tp_call,
    start_pptp_client,
    start_pptpd,
)
from peers_voip import VOIP_TOOLS, hang_up, start_call

from support.netns import CLIENT_IP, CLIENT_IP6, SERVER_IP, SERVER_IP6, lab, require_tools
from tunnelwatch.offline.classify import classify_file

pytestmark = pytest.mark.integration

FLAGGED = frozenset({"vpn_tunnel", "voip", "proxy_obfuscated"})
RTP_EACH_WAY = 100  # 2 s of 20 ms packets
GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "captures"
GOLDEN: dict[str, list[tuple[str, str, str, str]]] = {
    "strongswan-ikev2-psk-ipv4": [("udp", "vpn_tunnel", "ike", "confirmed")] * 2,
    "strongswan-ikev2-psk-ipv6": [("udp", "vpn_tunnel", "ike", "confirmed")] * 2,
    "strongswan-ikev2-esp-in-udp": [("udp", "vpn_tunnel", "ike", "confirmed")] * 2,
    "xl2tpd-control": [("udp", "vpn_tunnel", "l2tp", "confirmed")],
    "pptp-control": [("tcp", "vpn_tunnel", "pptp", "confirmed")],
    "baresip-call": [("udp", "voip", "rtcp", "confirmed"), ("udp", "voip", "rtp", "confirmed"),
                     ("udp", "voip", "sip", "confirmed")],
}


def _classify(pcap: Path, golden: str = "") -> list[dict[str, Any]]:
    """Records of a capture; with TUNNELWATCH_WRITE_GOLDEN=1, also keep a trimmed copy as `golden`."""
    if golden and os.environ.get("TUNNELWATCH_WRITE_GOLDEN") == "1":
        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        trim(pcap, GOLDEN_DIR / f"{golden}.pcap")
    return list(classify_file(str(pcap)))


def _one(records: list[dict[str, Any]], transport: str, ends: Iterable[tuple[str, int]]) -> dict[str, Any]:
    want = set(ends)
    found = [r for r in records if r["transport"] == transport
             and {(r["src"], r["sport"]), (r["dst"], r["dport"])} == want]
    assert len(found) == 1, f"expected one {transport} flow {sorted(want)}, got {found}\nall: {records}"
    return found[0]


def _assert_label(rec: dict[str, Any], pcap: Path, klass: str, protocol: str, confidence: str) -> None:
    if (rec["klass"], rec["protocol"], rec["confidence"]) != (klass, protocol, confidence):
        dump = hexdump_first(pcap, rec["transport"], rec["dport"], 4)
        raise AssertionError(f"expected {klass}/{protocol}/{confidence}, got {rec}\nfirst packets:\n{dump}")


def _assert_nothing_else_flagged(records: list[dict[str, Any]], *expected: dict[str, Any]) -> None:
    others = [r for r in records if r not in expected and r["klass"] in FLAGGED]
    assert not others, f"flows flagged that carry no tunnel or call: {others}"


def _check_ike(pcap: Path, cip: str, srv: str, golden: str) -> list[dict[str, Any]]:
    """The exchange is on the wire and both IKE flows are labelled; returns all records."""
    msgs = ike_messages(read(pcap))
    for m in ((cip, "IKE_SA_INIT", "request"), (srv, "IKE_SA_INIT", "response"),
              (cip, "IKE_AUTH", "request"), (srv, "IKE_AUTH", "response")):
        assert m in msgs, f"{m} missing from {msgs}"
    records = _classify(pcap, golden)
    # strongSwan moves to 4500 after IKE_SA_INIT (MOBIKE): the 500 flow and the 4500 flow are both IKE.
    init = _one(records, "udp", [(cip, 500), (srv, 500)])
    auth = _one(records, "udp", [(cip, 4500), (srv, 4500)])
    for rec in (init, auth):
        _assert_label(rec, pcap, "vpn_tunnel", "ike", "confirmed")
        assert rec["src"] == cip, f"initiator should be the client: {rec}"
    assert any("IKE_SA_INIT" in e for e in init["evidence"]), init
    assert any("NAT-T" in e for e in auth["evidence"]), auth
    _assert_nothing_else_flagged(records, init, auth)
    return records


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_strongswan_ikev2_psk_exchange_is_ike_confirmed(tmp_path: Path, family: str) -> None:
    require_tools(*TUNNEL_TOOLS)
    cip, srv = (CLIENT_IP, SERVER_IP) if family == "ipv4" else (CLIENT_IP6, SERVER_IP6)
    pcap = tmp_path / "ikev2.pcap"
    with lab(tmp_path) as lb, lb.capture(lb.router, "wan0", pcap):
        ikev2_exchange(lb, tmp_path / "swan", cip, srv)
        # the DELETE is answered before the capture stops
        wait_for(pcap, lambda p: (srv, "INFORMATIONAL", "response") in ike_messages(p), "IKE DELETE reply")
    _check_ike(pcap, cip, srv, f"strongswan-ikev2-psk-{family}")


def test_strongswan_tunnel_carrying_esp_in_udp_is_ike_confirmed(tmp_path: Path) -> None:
    require_tools(*TUNNEL_TOOLS, LIBIPSEC_PLUGIN)
    pcap = tmp_path / "ikev2-esp.pcap"
    with lab(tmp_path) as lb, lb.capture(lb.router, "wan0", pcap):
        ikev2_exchange(lb, tmp_path / "swan", CLIENT_IP, SERVER_IP, userspace_esp=True)
        wait_for(pcap, lambda p: (SERVER_IP, "INFORMATIONAL", "response") in ike_messages(p),
                 "IKE DELETE reply")
    esp = esp_in_udp(read(pcap))
    for sender in (CLIENT_IP, SERVER_IP):
        mine = [(spi, seq) for src, spi, seq in esp if src == sender]
        assert len(mine) >= 3 and len({spi for spi, _ in mine}) == 1, f"ESP from {sender}: {mine}"
        assert [seq for _, seq in mine] == sorted(seq for _, seq in mine), mine
    # IKE_AUTH opens the 4500 flow, so it is decided as IKE before the ESP packets follow on it.
    _check_ike(pcap, CLIENT_IP, SERVER_IP, "strongswan-ikev2-esp-in-udp")


def test_xl2tpd_control_channel_is_l2tp_confirmed(tmp_path: Path) -> None:
    require_tools(*TUNNEL_TOOLS)
    pcap = tmp_path / "l2tp.pcap"
    with lab(tmp_path) as lb, lb.capture(lb.router, "wan0", pcap):
        l2tp_call(lb, tmp_path / "l2tp")
        wait_for(pcap, lambda p: any(t == "CDN" for _, t in l2tp_control(p)), "Call-Disconnect-Notify")
    ctl = l2tp_control(read(pcap))
    for m in ((CLIENT_IP, "SCCRQ"), (SERVER_IP, "SCCRP"), (CLIENT_IP, "SCCCN"), (CLIENT_IP, "ICRQ"),
              (SERVER_IP, "ICRP"), (CLIENT_IP, "ICCN")):
        assert m in ctl, f"{m} missing from {ctl}"

    records = _classify(pcap, "xl2tpd-control")
    rec = _one(records, "udp", [(CLIENT_IP, 1701), (SERVER_IP, 1701)])
    _assert_label(rec, pcap, "vpn_tunnel", "l2tp", "confirmed")
    assert rec["src"] == CLIENT_IP, rec
    _assert_nothing_else_flagged(records, rec)


def test_pptp_control_connection_is_pptp_confirmed(tmp_path: Path) -> None:
    require_tools(*TUNNEL_TOOLS)
    pcap = tmp_path / "pptp.pcap"
    with lab(tmp_path) as lb, lb.capture(lb.router, "wan0", pcap):
        start_pptpd(lb, tmp_path / "pptp")
        start_pptp_client(lb)
        # pptp logs only to syslog, which this box lacks: the wire itself says when the call was answered.
        wait_for(pcap, lambda p: (SERVER_IP, "OCRP") in pptp_control(p), "Outgoing-Call-Reply")
        lb.stop("pptp")
    ctl = pptp_control(read(pcap))
    for m in ((CLIENT_IP, "SCCRQ"), (SERVER_IP, "SCCRP"), (CLIENT_IP, "OCRQ"), (SERVER_IP, "OCRP")):
        assert m in ctl, f"{m} missing from {ctl}"

    records = _classify(pcap, "pptp-control")
    control = [r for r in records if r["transport"] == "tcp" and 1723 in (r["sport"], r["dport"])]
    assert len(control) == 1, f"expected one TCP 1723 connection: {records}"
    rec = control[0]
    _assert_label(rec, pcap, "vpn_tunnel", "pptp", "confirmed")
    assert rec["src"] == CLIENT_IP, rec
    _assert_nothing_else_flagged(records, rec)


def test_baresip_call_is_sip_and_rtp(tmp_path: Path) -> None:
    require_tools(*VOIP_TOOLS)
    pcap = tmp_path / "sip.pcap"
    with lab(tmp_path) as lb, lb.capture(lb.router, "wan0", pcap):
        call = start_call(lb, tmp_path / "voip")

        def offer_answer(pkts: list[Any]) -> tuple[tuple[str, int], tuple[str, int]] | None:
            sdp = [sdp_audio(m) for _, line, m in sip_messages(pkts)
                   if line.startswith(("INVITE", "SIP/2.0 200"))]
            found = [s for s in sdp if s is not None]
            return (found[0], found[1]) if len(found) >= 2 else None

        def media_both_ways(pkts: list[Any]) -> bool:
            ends = offer_answer(pkts)
            return ends is not None and min(rtp_counts(pkts, *ends)) >= RTP_EACH_WAY

        wait_for(pcap, media_both_ways, f"{RTP_EACH_WAY} RTP packets each way", timeout=15)
        hang_up(lb, call)
        wait_for(pcap, lambda p: any(ln.startswith("SIP/2.0 200") and b"CSeq: " in m and b" BYE\r\n" in m
                                     for _, ln, m in sip_messages(p)), "200 OK to BYE")
    pkts = read(pcap)
    lines = [(src, line.split(" ")[0] if not line.startswith("SIP/") else line.split(" ")[1])
             for src, line, _ in sip_messages(pkts)]
    for m in ((CLIENT_IP, "INVITE"), (SERVER_IP, "200"), (CLIENT_IP, "ACK"), (CLIENT_IP, "BYE")):
        assert m in lines, f"{m} missing from {lines}"
    ends = offer_answer(pkts)
    assert ends is not None and ends[0][0] == CLIENT_IP and ends[1][0] == SERVER_IP, ends

    records = _classify(pcap, "baresip-call")
    sig = _one(records, "udp", [(CLIENT_IP, 5060), (SERVER_IP, 5060)])
    _assert_label(sig, pcap, "voip", "sip", "confirmed")
    assert sig["src"] == CLIENT_IP, sig
    media = _one(records, "udp", ends)
    _assert_label(media, pcap, "voip", "rtp", "confirmed")
    # baresip also runs RTCP on the next port up (RFC 3550's default, implied by the SDP): the call's too.
    rtcp_ends = [(addr, port + 1) for addr, port in ends]
    assert sum(rtp_counts(pkts, *rtcp_ends, rtcp=True)) >= 2, "no RTCP on the wire"
    rtcp = _one(records, "udp", rtcp_ends)
    _assert_label(rtcp, pcap, "voip", "rtcp", "confirmed")
    _assert_nothing_else_flagged(records, sig, media, rtcp)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_capture_keeps_its_labels(name: str) -> None:
    """The same real sessions, trimmed and stored: runs anywhere, no root or peers needed."""
    path = GOLDEN_DIR / f"{name}.pcap"
    assert path.exists(), f"{path} missing: refresh with TUNNELWATCH_WRITE_GOLDEN=1 (as root)"
    records = _classify(path)
    flagged = sorted((r["transport"], r["klass"], r["protocol"], r["confidence"]) for r in records
                     if r["klass"] in FLAGGED)
    assert flagged == sorted(GOLDEN[name]), records


def test_golden_esp_in_udp_without_its_ike_is_esp(tmp_path: Path) -> None:
    """A capture that starts after the IKE exchange (say, the box rebooted mid-session): ESP alone."""
    src = GOLDEN_DIR / "strongswan-ikev2-esp-in-udp.pcap"
    assert src.exists(), f"{src} missing: refresh with TUNNELWATCH_WRITE_GOLDEN=1 (as root)"
    only_esp = tmp_path / "esp-only.pcap"
    assert trim(src, only_esp, keep=lambda p: bool(esp_in_udp([p]))) >= 6
    records = _classify(only_esp)
    assert len(records) == 1, records
    _assert_label(records[0], only_esp, "vpn_tunnel", "esp", "confirmed")
