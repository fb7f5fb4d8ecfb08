"""What `tunnelwatch classify` prints: JSON lines for programs, an aligned table for people."""

from __future__ import annotations

import io
import json
from typing import Any

from tunnelwatch.offline.output import write_jsonl, write_table


def _rec(**kw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"pcap": "a.pcap", "src": "192.0.2.10", "sport": 40000, "dst": "198.51.100.7",
                         "dport": 1194, "transport": "udp", "klass": "vpn_tunnel", "protocol": "openvpn",
                         "confidence": "confirmed", "evidence": ["opcode 7", "key id 0"], "packets": 4}
    r.update(kw)
    return r


def test_jsonl_is_one_compact_object_per_line() -> None:
    out = io.StringIO()
    recs = [_rec(), _rec(klass="benign", protocol="tls", evidence=[])]
    assert write_jsonl(recs, out) == 2
    lines = out.getvalue().splitlines()
    assert [json.loads(x) for x in lines] == recs
    assert ", " not in lines[0] and ": " not in lines[0]
    assert write_jsonl([], io.StringIO()) == 0


def test_table_has_a_header_and_aligned_columns() -> None:
    out = io.StringIO()
    assert write_table([_rec(), _rec(src="2001:db8::1", sport=5, klass="benign", protocol="tls",
                                     evidence=[])], out) == 2
    header, first, second = out.getvalue().splitlines()
    assert header.split() == ["pcap", "transport", "src", "dst", "klass", "protocol", "confidence",
                              "packets", "evidence"]
    assert first.index("vpn_tunnel") == second.index("benign")
    assert first.endswith("opcode 7; key id 0")
    assert "[2001:db8::1]:5" in second and "198.51.100.7:1194" in first
    assert second.endswith("4")  # no evidence: no trailing blanks


def test_only_flagged_leaves_benign_and_unknown_flows_out() -> None:
    out = io.StringIO()
    recs = [_rec(), _rec(klass="benign"), _rec(klass="unknown"), _rec(klass="voip", protocol="sip")]
    assert write_table(recs, out, only_flagged=True) == 2
    rows = out.getvalue().splitlines()[1:]
    assert [r.split()[4] for r in rows] == ["vpn_tunnel", "voip"]


def test_columns_fit_their_cells_and_long_ones_are_cut_visibly() -> None:
    out = io.StringIO()
    names = ["a-very-long-capture-file-name-1.pcap", "a-very-long-capture-file-name-2.pcap"]
    write_table([_rec(pcap=n) for n in names], out, columns=120)
    rows = out.getvalue().splitlines()[1:]
    assert [r.split()[0] for r in rows] == names  # two captures never print the same name
    out = io.StringIO()
    write_table([_rec(pcap="x" * 80, evidence=["e" * 500])], out, columns=200)
    row = out.getvalue().splitlines()[1]
    assert row.startswith("x" * 47 + "… ") and len(row) <= 200 and row.endswith("…")


def test_header_names_stand_over_their_columns() -> None:
    out = io.StringIO()
    write_table([_rec()], out)
    header, row = out.getvalue().splitlines()
    assert row.index("vpn_tunnel") == header.index("klass")
    assert row.index("192.0.2.10") == header.index("src")
