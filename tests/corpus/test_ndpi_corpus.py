"""The classifiers on the nDPI capture corpus (../shared/corpus/ndpi, outside the repository): third-party
captures of the real thing, checked when the corpus is present and skipped otherwise.

Each check here has an in-repo counterpart that never skips: the annotated samples of
tests/data/captures (samples.toml, tests/unit/classify/test_samples.py) cover what each of these
asserts, named in the docstrings.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest
from scapy.layers.inet import IP
from scapy.utils import rdpcap

from support import run_engine
from tunnelwatch.classify.openvpn_obfs import OpenVPNObfs
from tunnelwatch.offline.classify import classify_file

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "ndpi" / "pcap"
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"nDPI corpus not present ({CORPUS})")


def test_anyconnect_and_dtls_hard_negative() -> None:
    """In repo: crafted-anyconnect.pcap (legacy DTLS 0x0100), crafted-anyconnect-near-miss.pcap (WebRTC
    DTLS)."""
    ac = [r for r in classify_file(str(CORPUS / "anyconnect-vpn.pcap")) if r["protocol"] == "anyconnect"]
    assert [(r["transport"], r["dport"], r["confidence"]) for r in ac] == [("udp", 443, "confirmed")]
    assert not [r for r in classify_file(str(CORPUS / "dtls.pcap")) if r["protocol"] == "anyconnect"]


def test_iodine_confirmed_and_mid_session_heuristic() -> None:
    """In repo: real-iodine.pcap, real-iodine-mid-session.pcap, crafted-dnstunnel.pcap."""
    recs = [r for r in classify_file(str(CORPUS / "dns-tunnel-iodine.pcap")) if r["klass"] != "benign"]
    assert [(r["protocol"], r["confidence"]) for r in recs] == [("iodine", "confirmed")]
    # the same capture without its handshake: only what the data queries carry is left
    pkts = [p[IP] for p in rdpcap(str(CORPUS / "dns-tunnel-iodine.pcap")) if IP in p][60:]
    flagged = [v for _, v in run_engine(pkts) if v.flagged]
    assert [(v.protocol, v.confidence) for v in flagged] == [("dns_tunnel", "heuristic")]


@pytest.mark.parametrize("name", ["dns.pcap", "dns_doh.pcap", "doh.pcapng", "dns_dot.pcap",
                                  "mullvad_dns.pcap", "dnscrypt_skype_false_positive.pcapng",
                                  "anyconnect-vpn.pcap"])
def test_benign_dns_is_never_a_tunnel(name: str) -> None:
    """In repo: crafted-dnstunnel-near-miss.pcap, real-https-and-dns.pcap."""
    bad = [r for r in classify_file(str(CORPUS / name)) if r["protocol"] in ("iodine", "dns_tunnel")]
    assert not bad, bad


def test_h323_flows_are_confirmed() -> None:
    """In repo: crafted-h323.pcap (Q.931 call signalling, H.245, RAS)."""
    rs = list(classify_file(str(CORPUS / "h323.pcap"), progress=False))
    assert len(rs) == 6 and all((r["protocol"], r["confidence"]) == ("h323", "confirmed") for r in rs)


def test_iax_call_is_confirmed() -> None:
    """In repo: crafted-iax2.pcap."""
    rs = [r for r in classify_file(str(CORPUS / "iax.pcap"), progress=False) if r["transport"] == "udp"]
    assert [(r["protocol"], r["confidence"]) for r in rs] == [("iax2", "confirmed")]


def test_icmp_tunnel_confirmed() -> None:
    """In repo: crafted-icmptunnel.pcap (IP in ICMP both ways), real-ptunnel.pcap."""
    recs = [r for r in classify_file(str(CORPUS / "icmp-tunnel.pcap")) if r["transport"] == "icmp"]
    assert recs and all((r["protocol"], r["confidence"]) == ("icmp_tunnel", "confirmed") for r in recs)


def test_ipsec_captures() -> None:
    """In repo: crafted-ipsec.pcap (IKEv1 main mode, IKEv2, ESP and AH as IP protocols 50/51), the
    strongswan-*.pcap captures."""
    recs = list(classify_file(str(CORPUS / "ipsec_isakmp_esp.pcap")))
    assert recs and all((r["protocol"], r["confidence"]) == ("ike", "confirmed") for r in recs)
    for name, proto in (("esp.pcapng", "esp"), ("ah.pcapng", "ah")):
        got = {(r["transport"], r["protocol"], r["confidence"]) for r in classify_file(str(CORPUS / name))}
        assert got == {("udp", "ike", "confirmed"), (proto, proto, "confirmed")}


def test_mgcp_flows() -> None:
    """In repo: crafted-mgcp.pcap (a dialogue confirmed, a lone RQNT heuristic)."""
    rs = list(classify_file(str(CORPUS / "mgcp.pcap"), progress=False))
    got = sorted((r["protocol"], r["confidence"]) for r in rs)
    # two dialogues with responses, three lone RQNT commands
    assert got == [("mgcp", "confirmed")] * 2 + [("mgcp", "heuristic")] * 3


def test_obfuscated_openvpn_detected_and_no_other_flow_flagged() -> None:
    """In repo: crafted-openvpn-obfs.pcap (UDP and TCP), and test_openvpn_obfs.py's run of the classifier
    alone over every sample."""
    hits: dict[str, list[tuple[str, int]]] = {}
    for f in sorted(glob.glob(str(CORPUS / "*"))):
        for r in classify_file(f, classifiers=[OpenVPNObfs()], budget=16, progress=False):
            if r["klass"] != "unknown":
                hits.setdefault(os.path.basename(f), []).append((r["transport"], r["dport"]))
    assert hits == {"openvpn_obfuscated.pcapng": [("tcp", 465), ("udp", 1214)]}


def test_pptp_and_gre() -> None:
    """In repo: pptp-control.pcap (pptpd), crafted-pptp-gre.pcap."""
    recs = list(classify_file(str(CORPUS / "pptp.pcap")))
    assert [(r["protocol"], r["confidence"]) for r in recs] == [("pptp", "confirmed")]
    recs = list(classify_file(str(CORPUS / "gre.pcapng")))
    assert [(r["protocol"], r["confidence"]) for r in recs] == [("gre", "confirmed")]
    assert "PPTP enhanced GRE" in recs[0]["evidence"]


@pytest.mark.parametrize("name", ["skinny.pcap", "sccp_hw_conf_register.pcapng"])
def test_skinny_sessions_are_confirmed(name: str) -> None:
    """In repo: crafted-sccp.pcap."""
    rs = [r for r in classify_file(str(CORPUS / name), progress=False) if r["transport"] == "tcp"]
    assert rs and all((r["protocol"], r["confidence"]) == ("sccp", "confirmed") for r in rs)


def test_softether() -> None:
    """In repo: crafted-softether.pcap (UDP confirmed, the DDNS POST on TCP 80 heuristic)."""
    recs = list(classify_file(str(CORPUS / "softether.pcap")))
    assert recs and all(r["protocol"] == "softether" for r in recs)
    udp = [r for r in recs if r["transport"] == "udp"]
    assert udp and all(r["confidence"] == "confirmed" for r in udp)
    tcp = [r for r in recs if r["transport"] == "tcp"]
    assert [(r["dport"], r["confidence"]) for r in tcp] == [(80, "heuristic")]


def test_tailscale() -> None:
    """In repo: crafted-tailscale.pcap."""
    recs = list(classify_file(str(CORPUS / "tailscale.pcap")))
    assert [(r["protocol"], r["confidence"]) for r in recs] == [("tailscale", "confirmed")]


def test_tinc() -> None:
    """In repo: real-tinc-ipv4.pcap (tinc 1.0.36), crafted-tinc.pcap."""
    recs = list(classify_file(str(CORPUS / "tinc.pcap")))
    tincs = [r for r in recs if r["protocol"] == "tinc" and r["confidence"] == "confirmed"]
    assert {r["transport"] for r in tincs} == {"tcp", "udp"} and len(tincs) == 4


def test_cloudflare_warp() -> None:
    """In repo: crafted-wireguard.pcap (the WARP flow)."""
    udp = [r for r in classify_file(str(CORPUS / "cloudflare-warp.pcap")) if r["transport"] == "udp"]
    assert [(r["dport"], r["protocol"], r["confidence"]) for r in udp] == [(2408, "warp", "confirmed")]


def test_vpn_app_names_with_the_catalogue() -> None:
    """In repo: crafted-names.pcap, real-openssl-tls-names.pcap, real-chromium-quic-names.pcap (and their
    near misses). nDPI names these flows by TLS SNI or by the server certificate; with the shipped catalogue
    they are `list` flows of the right provider, and the benign captures gain none."""
    from tunnelwatch.classify.endpoints import EndpointIndex, ListSource, load_list

    catalogue = Path(__file__).resolve().parents[2] / "config" / "endpoints" / "vpn-apps.yaml"
    idx = EndpointIndex([load_list(ListSource(catalogue))])

    def listed(name: str) -> list[tuple[str, str]]:
        return [(r["protocol"], r["evidence"][0].split(" is on ")[0]) for r in
                classify_file(str(CORPUS / name), endpoints=idx) if r["confidence"] == "list"]

    opera = listed("opera-vpn.pcapng")
    assert len(opera) >= 61 and set(opera) == {("opera_vpn", "eu0.sec-tunnel.com (TLS SNI)")}
    assert ("tunnelbear", "api.polargrizzly.com (TLS SNI)") in listed("tunnelbear.pcap")
    assert ("vpn_app", "Private Internet Access (server certificate organisation)") in listed("pia.pcap")
    assert ("vpn_app", "Windscribe (server certificate organisation)") in listed("windscribe.pcapng")
    assert {p for p, _ in listed("forticlient.pcap")} == {"fortinet_sslvpn"}
    for name in ("443-chrome.pcap", "443-firefox.pcap", "443-curl.pcap", "443-safari.pcap"):
        assert listed(name) == [], name
