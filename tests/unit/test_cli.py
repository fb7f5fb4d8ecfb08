"""`tunnelwatch classify`: the JSON contract fields, table output, and a bad file not stopping the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

CONTRACT = {"pcap", "src", "sport", "dst", "dport", "transport", "klass", "protocol", "confidence",
            "evidence", "packets", "bytes"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunnelwatch", *args], capture_output=True, text=True,
                          timeout=60)


def wireguard_pcap(path: Path) -> None:
    init = b"\x01\x00\x00\x00" + (0x11223344).to_bytes(4, "little") + b"\xaa" * 140
    resp = b"\x02\x00\x00\x00" + (0x55667788).to_bytes(4, "little") + (0x11223344).to_bytes(4, "little") \
        + b"\xbb" * 80
    c, s = "192.0.2.10", "198.51.100.7"
    wrpcap(str(path), [Ether() / IP(src=c, dst=s) / UDP(sport=40000, dport=51820) / Raw(init),
                       Ether() / IP(src=s, dst=c) / UDP(sport=51820, dport=40000) / Raw(resp),
                       Ether() / IP(src=c, dst="192.0.2.53") / UDP(sport=40001, dport=53) / Raw(b"\x00" * 3)])


def test_jsonl_contract_and_bad_file_reported(tmp_path: Path) -> None:
    good = tmp_path / "wg.pcap"
    wireguard_pcap(good)
    bad = tmp_path / "bad.pcap"
    bad.write_text("not a capture")
    r = run("classify", str(bad), str(good), str(tmp_path / "missing.pcap"))
    assert r.returncode == 1
    assert "bad.pcap: not a pcap or pcapng file" in r.stderr
    assert "missing.pcap: cannot open" in r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(recs) == 2 and all(rec.keys() >= CONTRACT for rec in recs)
    wg = next(rec for rec in recs if rec["dport"] == 51820)
    assert (wg["src"], wg["sport"], wg["transport"], wg["packets"]) == ("192.0.2.10", 40000, "udp", 2)
    assert (wg["klass"], wg["protocol"], wg["confidence"]) == ("vpn_tunnel", "wireguard", "confirmed")
    assert wg["evidence"]


def test_table_format(tmp_path: Path) -> None:
    good = tmp_path / "wg.pcap"
    wireguard_pcap(good)
    r = run("classify", "--format", "table", str(good))
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["pcap", "transport", "src"]
    assert any("wireguard" in ln and "vpn_tunnel" in ln for ln in lines[1:])


def test_version_and_usage() -> None:
    assert run("--version").stdout.startswith("tunnelwatch ")
    assert run().returncode == 2


def test_classify_inline_reports_what_the_daemon_saw(capsys: pytest.CaptureFixture[str]) -> None:
    import json as _json

    from tunnelwatch.cli import main as _main

    pcap = Path(__file__).resolve().parents[1] / "data" / "captures" / "pptp-control.pcap"
    assert _main(["classify", "--inline", str(pcap)]) == 0
    [rec] = [_json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert rec["protocol"] == "pptp" and rec["confidence"] == "confirmed"
    # the TCP handshake and pure ACKs never reach the daemon
    assert 0 < rec["queued"] < rec["packets"]


def test_isp_tools_are_subcommands_and_entry_points(tmp_path: Path) -> None:
    import importlib
    import tomllib

    helptext = run("--help").stdout
    assert "registry" in helptext and "collector" in helptext
    key, reg, doc = tmp_path / "k.pem", tmp_path / "reg.yaml", tmp_path / "reg.signed"
    reg.write_text("registrations:\n  - id: A-1\n    customer: Acme\n    protocols: [wireguard]\n"
                   "    servers: [198.51.100.7]\n")
    made = run("registry", "keygen", "--out", str(key))
    assert made.returncode == 0, made.stderr
    public = made.stdout.strip()
    signed = run("registry", "sign", "--key", str(key), "--version", "3", str(reg))
    assert signed.returncode == 0, signed.stderr
    doc.write_text(signed.stdout)
    checked = run("registry", "verify", "--public-key", public, str(doc))
    assert checked.returncode == 0 and checked.stdout.startswith("version 3"), checked.stderr
    assert run("registry", "verify", "--public-key", public, str(reg)).returncode == 1
    usage = run("collector", "--help")
    assert usage.returncode == 0 and "--listen" in usage.stdout
    assert run("collector").returncode == 2  # its own usage error, passed through
    usage = run("provision", "--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: tunnelwatch provision"), usage.stderr
    scripts = tomllib.loads(Path(__file__).parents[2].joinpath("pyproject.toml").read_text())["project"][
        "scripts"]
    assert {"tunnelwatch", "tunnelwatch-registry", "tunnelwatch-collector", "tunnelwatch-provision"} \
        <= set(scripts)
    for target in scripts.values():
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func)), target


def test_the_box_cli_does_not_load_the_isp_side() -> None:
    code = ("import sys, tunnelwatch.cli as c; c.build_parser(); print(sorted(m for m in sys.modules "
            "if m.startswith(('tunnelwatch.isp', 'tunnelwatch.policy.regsync'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
