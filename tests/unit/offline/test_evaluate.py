"""`make eval` (offline.evaluate) on a corpus made here: the repo's own captures and labels written by the
test, so a broken join, family mapping or benign count shows as a wrong figure, not as "all agree"."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from tunnelwatch.offline.evaluate import evaluate, main, ndpi_family, print_report

CAPTURES = Path(__file__).resolve().parents[2] / "data" / "captures"
HEADER = "pcap\tsrc_ip\tsrc_port\tdst_ip\tdst_port\tprotocol\tndpi_application_name\tklass\n"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    (tmp_path / "pcap").mkdir()
    for name in ("strongswan-ikev2-psk-ipv4.pcap", "pptp-control.pcap", "baresip-call.pcap"):
        shutil.copy(CAPTURES / name, tmp_path / "pcap" / name)
    ike = "strongswan-ikev2-psk-ipv4.pcap"
    rows = [
        # IKE, labelled from the responder's side: the join must not depend on direction
        (ike, "203.0.113.2", 500, "198.51.100.2", 500, 17, "IPSec", "vpn_tunnel"),
        (ike, "198.51.100.2", 4500, "203.0.113.2", 4500, 17, "IPSec", "vpn_tunnel"),
        # nDPI calls the PPTP control channel benign here: a disagreement that must be listed
        ("pptp-control.pcap", "198.51.100.2", 39214, "203.0.113.2", 1723, 6, "HTTP", "benign"),
        ("baresip-call.pcap", "198.51.100.2", 5060, "203.0.113.2", 5060, 17, "SIP", "voip"),
        # the media relay family: RTP/RTCP/STUN count as one group when comparing protocols
        ("baresip-call.pcap", "203.0.113.2", 16002, "198.51.100.2", 16002, 17, "STUN.WhatsAppCall", "voip"),
        # a labelled flow we never saw
        ("baresip-call.pcap", "192.0.2.9", 1, "192.0.2.10", 2, 17, "DNS", "benign"),
    ]
    (tmp_path / "labels.tsv").write_text(HEADER + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    # the PPTP capture is filed as benign: our flagged verdict on it must be counted as a false positive
    (tmp_path / "manifest.tsv").write_text("pcap\tgroup\npptp-control.pcap\tbenign\n"
                                          "strongswan-ikev2-psk-ipv4.pcap\tvpn\nbaresip-call.pcap\tvoip\n")
    return tmp_path


def test_family_names_map_the_most_specific_known_part() -> None:
    assert ndpi_family("STUN.WhatsAppCall") == "whatsapp_call"
    assert ndpi_family("IPSec") == "ipsec" and ndpi_family("TLS.OperaVPN") == ""


def test_figures_on_a_known_corpus(corpus: Path) -> None:
    res = evaluate(str(corpus), progress=False)
    assert res["pcaps"] == 3 and res["labelled_flows"] == 6 and res["unmatched"] == 1
    assert res["families"]["ipsec"] == {"flows": 2, "klass_agree": 2, "protocol_agree": 2}
    assert res["families"]["sip"] == {"flows": 1, "klass_agree": 1, "protocol_agree": 1}
    assert res["families"]["whatsapp_call"] == {"flows": 1, "klass_agree": 1, "protocol_agree": 1}
    assert res["confusion"] == {"benign->vpn_tunnel": 1, "voip->voip": 2, "vpn_tunnel->vpn_tunnel": 2}
    [miss] = res["disagreements"]
    assert "pptp-control.pcap" in miss and "nDPI=HTTP/benign" in miss and "ours=pptp/vpn_tunnel" in miss
    [fp] = res["benign_flagged"]
    assert fp.startswith("pptp-control.pcap: tcp") and "vpn_tunnel/pptp/confirmed" in fp
    out = io.StringIO()
    print_report(res, out)
    text = out.getvalue()
    assert "flows of benign captures that we flag: 1" in text and "ipsec" in text


def test_missing_corpus_is_said_not_crashed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--corpus", str(tmp_path / "nowhere")]) == 0
    assert "no corpus" in capsys.readouterr().err


def test_offline_and_inline_side_by_side(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--corpus", str(corpus)]) == 0
    out = capsys.readouterr().out
    assert "klass offline" in out and "klass inline" in out
    ipsec = next(ln for ln in out.splitlines() if ln.startswith("ipsec"))
    assert ipsec.split() == ["ipsec", "2", "2", "2", "2", "2"]  # the kernel's view keeps every IKE flow
    assert "flows of benign captures flagged: offline 1, inline 1" in out
    assert "flagged offline, not inline (the daemon would miss them): 0" in out


def test_endpoint_lists_apply_and_a_bad_list_is_refused(corpus: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`--endpoints`: the corpus is classified with the lists (make eval passes the VPN app catalogue)."""
    from tunnelwatch.classify.endpoints import EndpointIndex, parse_yaml_list

    lst = "provider: Lab\nklass: vpn_tunnel\nprotocol: lab_vpn\nentries:\n  - 203.0.113.2/32\n"
    idx = EndpointIndex([parse_yaml_list(lst, "lab.yaml")])
    res = evaluate(str(corpus), progress=False, endpoints=idx)
    assert any(v.startswith("vpn_tunnel/") for v in res["flagged"].values())
    assert res["confusion"].get("voip->vpn_tunnel", 0) == 0  # confirmed SIP keeps its own verdict
    bad = tmp_path / "bad.yaml"
    bad.write_text("provider: P\nklass: vpn_tunnel\nprotocol: x1\nentries:\n  - {domain: com}\n")
    assert main(["--corpus", str(corpus), "--endpoints", str(bad)]) == 78
    assert "bad.yaml:5:14: domain 'com'" in capsys.readouterr().err
    shipped = Path(__file__).resolve().parents[3] / "config" / "endpoints" / "vpn-apps.yaml"
    assert main(["--corpus", str(corpus), "--view", "offline", "--endpoints", str(shipped)]) == 0
