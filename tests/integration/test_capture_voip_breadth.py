"""Real VoIP infrastructure between lab namespaces, captured on the router's WAN side and classified offline:
a kamailio registrar/proxy with baresip user agents calling through it (SIP over UDP, registration over
TLS on 5061), and a coturn TURN relay driven by its own test client. The call, TLS and relay flows get
their labels and nothing else is flagged.

As in test_capture_ipsec_l2tp_voip.py, each test first checks with pcap_facts (independently of
tunnelwatch) that the real software put the expected messages on the wire, so a labelling failure is
never a harness failure.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pcap_facts import Seen, read, rtp_counts, sdp_audio, sip_messages, wait_for
from peers_voip import write_tone

from support.netns import CLIENT_IP, SERVER_IP, Lab, lab, require_tools
from support.pki import leaf, make_pki
from tunnelwatch.offline.classify import classify_file

pytestmark = pytest.mark.integration

FLAGGED = frozenset({"vpn_tunnel", "voip", "proxy_obfuscated"})
TOOLS = ("kamailio", "baresip", "turnserver", "turnutils_uclient", "turnutils_peer", "tcpdump", "ss",
         "openssl")
# Debian's multiarch directory (x86_64-linux-gnu, aarch64-linux-gnu, ...)
KAMAILIO_MODULES = next((str(p) for p in sorted(Path("/usr/lib").glob("*/kamailio/modules"))),
                        "/usr/lib/x86_64-linux-gnu/kamailio/modules")
BOB_PORT = 5080  # bob shares the server namespace with kamailio
RTP_EACH_WAY = 50  # 1 s of 20 ms packets
TURN_USER, TURN_PASS = "tw", "secret-tw"
STUN_COOKIE = b"\x21\x12\xa4\x42"

KAMAILIO_CFG = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
tcp_children=1
auto_aliases=no
listen=udp:{ip}:5060
listen=tls:{ip}:5061
enable_tls=yes
mpath="{modules}/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "xlog.so"
loadmodule "tls.so"
modparam("tls", "config", "{tls_cfg}")
modparam("usrloc", "db_mode", 0)
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route() || is_method("ACK")) {{ t_relay(); exit; }}
        sl_send_reply("404", "Not here"); exit;
    }}
    if (is_method("REGISTER")) {{ xlog("L_INFO", "tw: REGISTER $fU over $pr\\n"); save("location"); exit; }}
    if (is_method("CANCEL")) {{ t_relay(); exit; }}
    record_route();
    if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
    t_relay();
}}
"""

TLS_CFG = """[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
private_key = {key}
certificate = {cert}

[client:default]
verify_certificate = no
require_certificate = no
"""


def _records(pcap: Path) -> list[dict[str, Any]]:
    return list(classify_file(str(pcap)))


def _flows(records: list[dict[str, Any]], transport: str, port: int) -> list[dict[str, Any]]:
    return [r for r in records if r["transport"] == transport and port in (r["sport"], r["dport"])]


def _label(r: dict[str, Any]) -> tuple[str, str, str]:
    return r["klass"], r["protocol"], r["confidence"]


def _nothing_else_flagged(records: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    others = [r for r in records if r not in expected and r["klass"] in FLAGGED]
    assert not others, f"flows flagged that carry no call, relay or SIP: {others}"


def start_kamailio(lb: Lab, d: Path) -> None:
    """kamailio on the server: registrar + record-routing proxy, UDP 5060 and TLS 5061."""
    if not (Path(KAMAILIO_MODULES) / "tls.so").exists():
        pytest.fail("kamailio's TLS module is missing (apt-get install kamailio-tls-modules)")
    d.mkdir(parents=True, exist_ok=True)
    pki = make_pki(d)
    cert, key = leaf(d, "ca", "sip", f"subjectAltName=IP:{SERVER_IP}\nextendedKeyUsage=serverAuth\n"
                                    "basicConstraints=CA:FALSE\n")
    (d / "tls.cfg").write_text(TLS_CFG.format(key=key, cert=cert))
    (d / "kamailio.cfg").write_text(KAMAILIO_CFG.format(ip=SERVER_IP, modules=KAMAILIO_MODULES,
                                                        tls_cfg=d / "tls.cfg"))
    assert pki.ca.exists()
    lb.spawn(lb.server, ["kamailio", "-f", str(d / "kamailio.cfg"), "-DD", "-E", "-Y", str(d), "-m", "32",
                         "-M", "8"], "kamailio")
    lb.wait_until(lb.server, ["sh", "-c", f"ss -lun | grep -q '{SERVER_IP}:5060 ' && "
                                          f"ss -ltn | grep -q '{SERVER_IP}:5061 '"])


def ua(d: Path, name: str, listen: str, account: str, tone: Path, rtp: tuple[int, int],
       cafile: Path | None = None) -> Path:
    """A baresip config directory for one user agent (no sound card: a tone file in, a null bridge out)."""
    d = d / name
    d.mkdir(parents=True, exist_ok=True)
    modules = "".join(f"module {m}.so\n" for m in ("stdio", "g711", "aufile", "aubridge"))
    (d / "config").write_text(
        f"poll_method epoll\nsip_listen {listen}\n" + (f"sip_cafile {cafile}\n" if cafile else "")
        + f"audio_source aufile,{tone}\naudio_player aubridge,tw\naudio_alert aubridge,tw\n"
        f"rtp_ports {rtp[0]}-{rtp[1]}\nmodule_path /usr/lib/baresip/modules\n{modules}"
        "module_app account.so\nmodule_app menu.so\n")
    (d / "accounts").write_text(account + "\n")
    (d / "contacts").write_text("")
    return d


def _registered(lb: Lab, user: str, transport: str) -> None:
    lb.wait_for_log("kamailio", f"tw: REGISTER {user} over {transport}")


def _offer_answer(pkts: list[Seen]) -> tuple[tuple[str, int], tuple[str, int]] | None:
    sdp = [sdp_audio(m) for src, line, m in sip_messages(pkts)
           if line.startswith(("INVITE", "SIP/2.0 200")) and src in (CLIENT_IP, SERVER_IP)]
    found = [s for s in sdp if s is not None]
    return (found[0], found[1]) if len(found) >= 2 else None


def test_kamailio_call_over_udp_and_registration_over_tls(tmp_path: Path) -> None:
    require_tools(*TOOLS)
    pcap = tmp_path / "kamailio.pcap"
    with lab(tmp_path) as lb, lb.capture(lb.router, "wan0", pcap):
        start_kamailio(lb, tmp_path / "kamailio")
        tone = write_tone(tmp_path / "tone.wav")
        bob = ua(tmp_path, "bob", f"{SERVER_IP}:{BOB_PORT}",
                 f"<sip:bob@{SERVER_IP}>;regint=600;answermode=auto", tone, (16020, 16030))
        lb.spawn(lb.server, ["baresip", "-f", str(bob)], "baresip-bob", stdin=subprocess.PIPE)
        _registered(lb, "bob", "udp")
        # carol registers over TLS (5061) and stays idle: the TLS connection is all there is to see
        carol = ua(tmp_path, "carol", f"{CLIENT_IP}:5070",
                   f"<sip:carol@{SERVER_IP};transport=tls>;regint=600", tone, (16040, 16050),
                   cafile=tmp_path / "kamailio" / "ca.pem")
        lb.spawn(lb.client, ["baresip", "-f", str(carol)], "baresip-carol", stdin=subprocess.PIPE)
        alice = ua(tmp_path, "alice", f"{CLIENT_IP}:5060", f"<sip:alice@{SERVER_IP}>;regint=600", tone,
                   (16000, 16010))
        caller = lb.spawn(lb.client, ["baresip", "-f", str(alice)], "baresip-alice", stdin=subprocess.PIPE)
        _registered(lb, "alice", "udp")
        _registered(lb, "carol", "tls")
        assert caller.stdin is not None
        caller.stdin.write(f"/dial sip:bob@{SERVER_IP}\n".encode())
        caller.stdin.flush()
        lb.wait_for_log("baresip-alice", f"Call established: sip:bob@{SERVER_IP}")

        def media_both_ways(pkts: list[Seen]) -> bool:
            ends = _offer_answer(pkts)
            return ends is not None and min(rtp_counts(pkts, *ends)) >= RTP_EACH_WAY

        wait_for(pcap, media_both_ways, f"{RTP_EACH_WAY} RTP packets each way", timeout=15)
        caller.stdin.write(b"/hangup\n")
        caller.stdin.flush()
        lb.wait_for_log("baresip-alice", f"Call with sip:bob@{SERVER_IP} terminated")
    pkts = read(pcap)
    lines = [(src, line.split(" ")[1] if line.startswith("SIP/") else line.split(" ")[0])
             for src, line, _ in sip_messages(pkts)]
    for m in ((CLIENT_IP, "REGISTER"), (SERVER_IP, "200"), (CLIENT_IP, "INVITE"), (CLIENT_IP, "ACK"),
              (CLIENT_IP, "BYE")):
        assert m in lines, f"{m} missing from {lines}"
    tls = [p for p in pkts if p.transport == "tcp" and 5061 in p.ports() and p.payload[:1] == b"\x16"]
    assert {p.src for p in tls} == {CLIENT_IP, SERVER_IP}, "no TLS handshake both ways on 5061"
    ends = _offer_answer(pkts)
    assert ends is not None and ends[0][0] == CLIENT_IP and ends[1][0] == SERVER_IP, ends

    records = _records(pcap)
    sig = [r for r in _flows(records, "udp", 5060) if CLIENT_IP in (r["src"], r["dst"])]
    assert [_label(r) for r in sig] == [("voip", "sip", "confirmed")], sig
    sips = _flows(records, "tcp", 5061)
    assert [_label(r) for r in sips] == [("voip", "sip_tls", "heuristic")], sips
    assert any("ServerHello" in e for e in sips[0]["evidence"]), sips
    media = [r for r in records if r["transport"] == "udp" and
             {(r["src"], r["sport"]), (r["dst"], r["dport"])} in ({ends[0], ends[1]},
                                                                  {(ends[0][0], ends[0][1] + 1),
                                                                   (ends[1][0], ends[1][1] + 1)})]
    want = [("voip", "rtcp", "confirmed"), ("voip", "rtp", "confirmed")]
    assert sorted(_label(r) for r in media) == want, media
    _nothing_else_flagged(records, sig + sips + media)


def _turn_methods(pkts: list[Seen], port: int = 3478) -> set[tuple[str, int]]:
    """(sender, STUN message type) of every STUN message with the magic cookie to or from `port`."""
    out = set()
    for p in pkts:
        if p.transport == "udp" and port in p.ports() and p.payload[4:8] == STUN_COOKIE:
            out.add((p.src, struct.unpack("!H", p.payload[:2])[0]))
    return out


@pytest.mark.parametrize(("realm", "protocol"), [("tunnelwatch.test", "turn"), ("signal.org", "signal_call")])
def test_coturn_relay_is_turn_and_a_signal_realm_names_the_app(tmp_path: Path, realm: str,
                                                                protocol: str) -> None:
    require_tools(*TOOLS)
    pcap = tmp_path / "turn.pcap"
    with lab(tmp_path) as lb, lb.capture(lb.router, "wan0", pcap):
        lb.spawn(lb.server, ["turnserver", "-n", "--listening-ip", SERVER_IP, "--relay-ip", SERVER_IP,
                             "--listening-port", "3478", "--min-port", "49160", "--max-port", "49200",
                             "--lt-cred-mech", "--user", f"{TURN_USER}:{TURN_PASS}", "--realm", realm,
                             "--no-tls", "--no-dtls", "--no-tcp", "--no-cli", "--log-file", "stdout",
                             "--simple-log", "--allow-loopback-peers"], "turnserver")
        lb.spawn(lb.server, ["turnutils_peer", "-L", SERVER_IP, "-p", "3480"], "turn-peer")
        lb.wait_until(lb.server, ["sh", "-c", f"ss -lun | grep -q '{SERVER_IP}:3478 ' && "
                                              f"ss -lun | grep -q '{SERVER_IP}:3480 '"])
        r = lb.run(lb.client, "turnutils_uclient", "-u", TURN_USER, "-w", TURN_PASS, "-e", SERVER_IP, "-r",
                   "3480", "-n", "20", "-m", "1", "-l", "120", SERVER_IP, check=False, timeout=30)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    pkts = read(pcap)
    msgs = _turn_methods(pkts)
    # Allocate request from the client, its error (401) and success responses from the relay
    for m in ((CLIENT_IP, 0x0003), (SERVER_IP, 0x0113), (SERVER_IP, 0x0103)):
        assert m in msgs, f"{m} missing from {sorted(msgs)}"
    records = _records(pcap)
    relay = _flows(records, "udp", 3478)
    # the test client opens a few allocations (one flow each), every one authenticated in the realm
    assert relay and {_label(r) for r in relay} == {("voip", protocol, "confirmed")}, relay
    if protocol == "signal_call":
        assert all(any("REALM is signal.org" in e for e in r["evidence"]) for r in relay), relay
    _nothing_else_flagged(records, relay)
