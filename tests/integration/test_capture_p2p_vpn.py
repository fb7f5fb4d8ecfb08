"""Real peer-to-peer VPNs between lab namespaces, captured on the router and classified offline.

tinc 1.0 (TCP meta connection + UDP data, over IPv4 and over IPv6), n2n 1.x (edges + supernode, the
v1 protocol Debian ships) and fastd each bring a tunnel up between the client and server namespaces
and prove it with a ping through it; tcpdump records the router's wan0; the capture must show the
tunnel's flows with the expected verdicts and nothing else flagged. Keys are generated per test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from peers_vpn import ping_through

from support.captures import capture_classify, flow_table
from support.netns import CLIENT_IP, CLIENT_IP6, SERVER_IP, SERVER_IP6, Lab, sh

pytestmark = pytest.mark.integration

Record = dict[str, Any]
BENIGN = ("benign", "unknown")
TINC_PORT = 655
N2N_PORT = 7654
FASTD_PORT = 10000
TUN_SERVER, TUN_CLIENT = "10.44.0.1", "10.44.0.2"


def _between(records: list[Record], transport: str, a: str, b: str) -> list[Record]:
    return [r for r in records if r["transport"] == transport and {r["src"], r["dst"]} == {a, b}]


def _assert_labels(records: list[Record], tunnel: list[Record], protocol: str,
                   confidences: tuple[str, ...] = ("confirmed",)) -> None:
    """Each tunnel flow carries the protocol at one of the confidences; nothing else is flagged."""
    assert tunnel, f"no tunnel flow in the capture:\n{flow_table(records)}"
    for r in tunnel:
        assert (r["klass"], r["protocol"]) == ("vpn_tunnel", protocol) and r["confidence"] in confidences, \
            f"tunnel flow mislabelled:\n{flow_table([r])}\nall flows:\n{flow_table(records)}"
        assert r["evidence"], "a flagged flow must say why"
    others = [r for r in records if r not in tunnel and r["klass"] not in BENIGN]
    assert not others, f"flows wrongly flagged:\n{flow_table(others)}\nall flows:\n{flow_table(records)}"


# --- tinc 1.0 ---------------------------------------------------------------------------------------

def _tinc_node(d: Path, name: str, tun_ip: str, extra: str) -> Path:
    conf = d / name
    (conf / "hosts").mkdir(parents=True)
    (conf / "tinc.conf").write_text(f"Name = {name}\nAddressFamily = any\nPort = {TINC_PORT}\n"
                                    f"Interface = tinc-{name}\n{extra}")
    up = conf / "tinc-up"
    up.write_text(f"#!/bin/sh\nip addr add {tun_ip}/24 dev $INTERFACE\nip link set $INTERFACE up\n")
    up.chmod(0o755)
    sh("tincd", "-c", str(conf), "-K2048", input="")  # stdin answered: default key file names
    return conf


def _tinc_pair(d: Path, server_addr: str) -> tuple[Path, Path]:
    server = _tinc_node(d, "server", TUN_SERVER, "")
    client = _tinc_node(d, "client", TUN_CLIENT, "ConnectTo = server\n")
    s_host = f"Address = {server_addr}\nPort = {TINC_PORT}\nSubnet = {TUN_SERVER}/32\n"
    s_host += (server / "hosts" / "server").read_text()
    c_host = f"Subnet = {TUN_CLIENT}/32\n" + (client / "hosts" / "client").read_text()
    for conf in (server, client):
        (conf / "hosts" / "server").write_text(s_host)
        (conf / "hosts" / "client").write_text(c_host)
    return server, client


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_tinc_meta_and_udp(tmp_path: Path, family: str) -> None:
    client_ip, server_ip = (CLIENT_IP, SERVER_IP) if family == "ipv4" else (CLIENT_IP6, SERVER_IP6)

    def drive(lb: Lab) -> None:
        server, client = _tinc_pair(tmp_path / "tinc", server_ip)
        for ns, conf, name in ((lb.server, server, "tinc-server"), (lb.client, client, "tinc-client")):
            lb.spawn(ns, ["tincd", "-c", str(conf), "-D", "-d1", f"--pidfile={conf}/pid"], name)
            if name == "tinc-server":
                lb.wait_until(ns, ["sh", "-c", f"ss -ltn | grep -q ':{TINC_PORT} '"])
        ping_through(lb, TUN_SERVER, sizes=(56, 1000))

    records = capture_classify(tmp_path, ("tincd",), drive)
    meta = [r for r in _between(records, "tcp", client_ip, server_ip) if r["dport"] == TINC_PORT]
    data = [r for r in _between(records, "udp", client_ip, server_ip)
            if r["sport"] == TINC_PORT and r["dport"] == TINC_PORT]
    assert len(meta) == 1 and len(data) == 1, f"expected one meta and one data flow:\n{flow_table(records)}"
    assert meta[0]["src"] == client_ip
    _assert_labels(records, meta + data, "tinc")


# --- n2n 1.x (v1 protocol) -----------------------------------------------------------------------------

def test_n2n_edges_and_supernode(tmp_path: Path) -> None:
    def drive(lb: Lab) -> None:
        lb.spawn(lb.server, ["supernode", "-l", str(N2N_PORT)], "supernode")
        lb.wait_until(lb.server, ["sh", "-c", f"ss -lun | grep -q ':{N2N_PORT} '"])
        for ns, ip, name in ((lb.server, TUN_SERVER, "edge-server"), (lb.client, TUN_CLIENT, "edge-client")):
            lb.spawn(ns, ["edge", "-d", "n2n0", "-a", ip, "-c", "twlab", "-l", f"{SERVER_IP}:{N2N_PORT}"],
                     name, env={"N2N_KEY": "lab-secret"})
        ping_through(lb, TUN_SERVER, sizes=(56, 1000))

    records = capture_classify(tmp_path, ("edge", "supernode"), drive)
    udp = _between(records, "udp", CLIENT_IP, SERVER_IP)
    to_supernode = [r for r in udp if r["dport"] == N2N_PORT and r["src"] == CLIENT_IP]
    assert len(to_supernode) == 1, f"expected one edge -> supernode flow:\n{flow_table(records)}"
    assert to_supernode[0]["confidence"] == "confirmed", flow_table(to_supernode)
    # edge <-> edge flows (after the supernode introduced them) are n2n too
    _assert_labels(records, udp, "n2n", ("confirmed", "heuristic"))


# --- fastd ----------------------------------------------------------------------------------------------

def _fastd_conf(d: Path, side: str, secret: str, peer_key: str, tun_ip: str, peer_ip: str,
                bind: str, remote: str) -> Path:
    conf = d / f"fastd-{side}.conf"
    text = (f'log level info;\ninterface "fastd-{side}";\nmode tun;\nmethod "salsa2012+umac";\n'
            f'secret "{secret}";\nmtu 1400;\n'
            f'on up "ip addr add {tun_ip} peer {peer_ip} dev $INTERFACE; ip link set up dev $INTERFACE";\n')
    if bind:
        text += f"bind {bind};\n"
    text += f'peer "{"client" if side == "server" else "server"}" {{ key "{peer_key}"; {remote} }}\n'
    conf.write_text(text)
    return conf


def _fastd_keys() -> tuple[str, str]:
    secret = sh("fastd", "--generate-key", "--machine-readable").stdout.split()[0]
    public = sh("fastd", "--machine-readable", "--show-key", "--config", "/dev/stdin",
                input=f'secret "{secret}";\n').stdout.strip()
    return secret, public


def test_fastd_handshake(tmp_path: Path) -> None:
    def drive(lb: Lab) -> None:
        d = tmp_path / "fastd"
        d.mkdir()
        (s_sec, s_pub), (c_sec, c_pub) = _fastd_keys(), _fastd_keys()
        sconf = _fastd_conf(d, "server", s_sec, c_pub, TUN_SERVER, TUN_CLIENT, f"{SERVER_IP}:{FASTD_PORT}",
                            "")
        cconf = _fastd_conf(d, "client", c_sec, s_pub, TUN_CLIENT, TUN_SERVER, "",
                            f"remote {SERVER_IP}:{FASTD_PORT};")
        lb.spawn(lb.server, ["fastd", "--config", str(sconf)], "fastd-server")
        lb.wait_until(lb.server, ["sh", "-c", f"ss -lun | grep -q ':{FASTD_PORT} '"])
        lb.spawn(lb.client, ["fastd", "--config", str(cconf)], "fastd-client")
        ping_through(lb, TUN_SERVER, sizes=(56, 1000))

    records = capture_classify(tmp_path, ("fastd",), drive)
    flows = [r for r in _between(records, "udp", CLIENT_IP, SERVER_IP)
             if FASTD_PORT in (r["sport"], r["dport"])]
    assert len(flows) == 1, f"expected one fastd flow:\n{flow_table(records)}"
    _assert_labels(records, flows, "fastd")
