"""Capture reading: pcap (both endians, ns), pcapng, link types; bad files give a clear PcapError."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import CookedLinux, Ether
from scapy.packet import Raw
from scapy.utils import PcapNgWriter, wrpcap

from tunnelwatch.packet import parse_ip
from tunnelwatch.pcapfile import PcapError, PcapReader, ip_offset

IPPKT = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / Raw(b"data")


def frames(path: Path) -> list[tuple[float, int, bytes]]:
    with open(path, "rb") as fh:
        return list(PcapReader(fh, path.name))


@pytest.mark.parametrize("frame", [Ether() / IPPKT, CookedLinux(proto=0x0800) / IPPKT, IPPKT],
                         ids=["ethernet", "linux-sll", "raw-ip"])
def test_link_types_yield_the_ip_packet(tmp_path: Path, frame: object) -> None:
    path = tmp_path / "x.pcap"
    wrpcap(str(path), [frame])
    [(ts, lt, data)] = frames(path)
    off = ip_offset(lt, data)
    p = parse_ip(data, ts, off)
    assert p is not None and p.payload == b"data" and (p.sport, p.dport) == (1, 2)


def test_big_endian_and_nanosecond_pcap() -> None:
    raw = bytes(IPPKT)
    hdr = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 101)
    rec = struct.pack(">IIII", 100, 500_000_000, len(raw), len(raw)) + raw
    [(ts, lt, data)] = list(PcapReader(io.BytesIO(hdr + rec)))
    assert ts == pytest.approx(100.5) and lt == 101 and data == raw


def test_pcapng(tmp_path: Path) -> None:
    path = tmp_path / "x.pcapng"
    pkt = Ether() / IPPKT
    pkt.time = 1234.25
    with PcapNgWriter(str(path)) as w:
        w.write(pkt)
        w.write(pkt)
    got = frames(path)
    assert len(got) == 2 and got[0][0] == pytest.approx(1234.25)
    assert parse_ip(got[0][2], 0, ip_offset(got[0][1], got[0][2])) is not None


def test_not_a_capture_is_a_clear_error() -> None:
    with pytest.raises(PcapError, match="not a pcap or pcapng"):
        PcapReader(io.BytesIO(b"hello world, not a capture"), "notes.txt")
    with pytest.raises(PcapError, match="empty"):
        PcapReader(io.BytesIO(b""), "empty.pcap")


def test_truncated_capture_stops_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "t.pcap"
    wrpcap(str(path), [Ether() / IPPKT] * 3)
    data = path.read_bytes()
    with open(path, "wb") as fh:
        fh.write(data[:-10])
    with open(path, "rb") as fh:
        r = PcapReader(fh)
        assert len(list(r)) == 2 and r.truncated
