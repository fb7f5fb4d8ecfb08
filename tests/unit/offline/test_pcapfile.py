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

from tunnelwatch.classify.packet import parse_ip
from tunnelwatch.offline.pcapfile import PcapError, PcapReader, ip_offset

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


def _linktype_cases() -> list[tuple[object, int | None]]:
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import CookedLinuxV2, Dot1AD, Dot1Q, Loopback
    from scapy.layers.ppp import PPP, PPPoE

    ip6 = IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1, dport=2) / Raw(b"data")
    return [
        (Ether() / Dot1Q(vlan=7) / IPPKT, None),                        # VLAN
        (Ether() / Dot1AD(vlan=100) / Dot1Q(vlan=7) / IPPKT, None),     # QinQ (802.1ad outer tag)
        (Ether() / Dot1Q(vlan=100) / Dot1Q(vlan=7) / ip6, None),        # double 802.1Q, IPv6 inside
        (Ether() / PPPoE(sessionid=0x1234) / PPP(proto=0x0021) / IPPKT, None),  # PPPoE session, IPv4
        (Ether() / PPPoE(sessionid=0x1234) / PPP(proto=0x0057) / ip6, None),    # PPPoE session, IPv6
        (CookedLinuxV2(proto=0x0800) / IPPKT, 276),                     # Linux cooked v2 (SLL2)
        (Loopback(type=2) / IPPKT, 0),                                  # BSD loopback (DLT_NULL), AF_INET
        (struct.pack(">I", 2) + bytes(IPPKT), 108),                     # OpenBSD loopback, big-endian family
    ]


@pytest.mark.parametrize(("frame", "linktype"), _linktype_cases(),
                         ids=["vlan", "qinq", "dot1q-dot1q-v6", "pppoe-v4", "pppoe-v6", "sll2", "bsd-null",
                              "openbsd-loop"])
def test_promised_link_types_yield_the_ip_packet(tmp_path: Path, frame: object, linktype: int | None) -> None:
    path = tmp_path / "x.pcap"
    wrpcap(str(path), [frame], **({"linktype": linktype} if linktype is not None else {}))
    [(ts, lt, data)] = frames(path)
    if linktype is not None:
        assert lt == linktype
    p = parse_ip(data, ts, ip_offset(lt, data))
    assert p is not None and p.payload == b"data" and (p.sport, p.dport) == (1, 2)
