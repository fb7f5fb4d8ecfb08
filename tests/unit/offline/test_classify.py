"""`tunnelwatch classify` on capture files written here: one record per flow in the contract format, the
file's statistics (packets, frames without IP, flows), warnings for a cut capture, and a clear error for
a file that cannot be read."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from support.wgcraft import CP, SP, C, S, wg_session
from tunnelwatch.offline.classify import FileStats, classify_file
from tunnelwatch.offline.pcapfile import PcapError

ETH_IP = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
ARP = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x06" + bytes(28)


def _pcap(path: Path, frames: list[bytes], *, cut: int = 0) -> Path:
    """A little-endian pcap of Ethernet frames, one per 10 ms; `cut` bytes lost off the end."""
    data = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i, f in enumerate(frames):
        ts = 1_700_000_000 + i // 100
        data += struct.pack("<IIII", ts, (i % 100) * 10_000, len(f), len(f)) + f
    path.write_bytes(data[: len(data) - cut] if cut else data)
    return path


def _wg_frames(n_junk: int = 0) -> list[bytes]:
    return [ETH_IP + bytes(p) for p in wg_session(random.Random(5), junk_count=n_junk, data=3)]


def test_a_wireguard_flow_becomes_one_contract_record(tmp_path: Path) -> None:
    path = _pcap(tmp_path / "wg.pcap", [ARP, *_wg_frames(), ARP])
    stats = FileStats("wg.pcap")
    (rec,) = list(classify_file(str(path), stats=stats))
    assert (rec["pcap"], rec["src"], rec["sport"], rec["dst"], rec["dport"], rec["transport"]) == (
        "wg.pcap", C, CP, S, SP, "udp")
    assert (rec["klass"], rec["protocol"]) == ("vpn_tunnel", "wireguard")
    assert rec["confidence"] in ("confirmed", "likely") and rec["evidence"]
    assert rec["packets"] == 8 and rec["bytes"] > 0
    assert 1_700_000_000 <= rec["first_seen"] <= rec["last_seen"]
    assert (stats.packets, stats.not_ip, stats.flows, stats.error, stats.warnings) == (10, 2, 1, "", [])


def test_the_inline_view_marks_what_was_queued(tmp_path: Path) -> None:
    path = _pcap(tmp_path / "wg.pcap", _wg_frames())
    (rec,) = list(classify_file(str(path), inline=True))
    assert rec["protocol"] == "wireguard" and "queued" in rec


def test_a_cut_capture_is_classified_up_to_the_cut_with_a_warning(tmp_path: Path) -> None:
    path = _pcap(tmp_path / "cut.pcap", _wg_frames(), cut=20)
    stats = FileStats("cut.pcap")
    (rec,) = list(classify_file(str(path), stats=stats))
    assert rec["packets"] == 7 and stats.packets == 7
    assert any("truncated" in w for w in stats.warnings)


def test_an_unreadable_file_raises_a_pcap_error(tmp_path: Path) -> None:
    with pytest.raises(PcapError, match="cannot open"):
        list(classify_file(str(tmp_path / "missing.pcap")))
    (tmp_path / "text.pcap").write_text("not a capture at all, just text\n")
    with pytest.raises(PcapError):
        list(classify_file(str(tmp_path / "text.pcap")))


def test_an_empty_capture_has_no_flows(tmp_path: Path) -> None:
    stats = FileStats("empty.pcap")
    assert list(classify_file(str(_pcap(tmp_path / "empty.pcap", [])), stats=stats)) == []
    assert (stats.packets, stats.flows) == (0, 0)
