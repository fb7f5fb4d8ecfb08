"""SSH port forwarding from packet sizes: repeated channel open/confirm/request; not interactive or scp."""

from __future__ import annotations

import random

from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict

C, S = "192.0.2.10", "198.51.100.7"
NAMES = ["ssh_forwarding", "common"]
rnd = random.Random(3)


def pkt(d: int, n: int) -> IP:
    if d == 0:
        return IP(src=C, dst=S) / TCP(sport=40000, dport=22, flags="PA") / Raw(rnd.randbytes(n))
    return IP(src=S, dst=C) / TCP(sport=22, dport=40000, flags="PA") / Raw(rnd.randbytes(n))


def seq(sizes: str) -> list[IP]:
    """'C92 S44 C124' -> packets of those sizes and directions."""
    return [pkt(0 if w[0] == "C" else 1, int(w[1:])) for w in sizes.split()]


# OpenSSH 9.2 as captured in the lab: banners, key exchange, public-key authentication
HANDSHAKE = ("C1560 S1088 C1208 S1564 C16 C44 S44 C60 S52 C140 S100 C308 S28")


def flow(after: str) -> list[IP]:
    banner = [pkt(0, 0), pkt(1, 0)]
    banner[0][Raw].load = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
    banner[1][Raw].load = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
    return [*banner, *seq(HANDSHAKE), *seq(after)]


FORWARD = "C60 S288 S172 " + " ".join(["C92 S44 C124 S228 S4344 S708 C36 S72 C36"] * 4)


def test_dynamic_forwarding_is_flagged_with_a_deep_budget() -> None:
    v = one_verdict(flow(FORWARD), names=NAMES, budget=96)
    assert (v.klass, v.protocol, v.confidence) == ("proxy_obfuscated", "ssh_forwarding", "heuristic")
    assert "ssh" in v.supersedes


def test_close_exchanges_between_forwarded_connections_are_not_typing() -> None:
    # captured in CI: the server's global request lands inside the first triple, and every forwarded
    # connection ends with EOF/CLOSE both ways (two 36-byte pairs): over a flow that is as many small
    # pairs as a person typing six keys, but never six in a row between two triples
    closes = " ".join(["C92 S44 C124 S228 S4344 S708 C36 S36 C36 S36"] * 4)
    v = one_verdict(flow("C60 S296 C92 S180 S44 C124 S2236 C36 S36 C36 S36 " + closes), names=NAMES,
                    budget=128)
    assert (v.klass, v.protocol, v.confidence) == ("proxy_obfuscated", "ssh_forwarding", "heuristic")


def test_typing_between_forwarded_connections_still_reads_as_interactive() -> None:
    typing = " ".join(["C36 S36"] * 8)
    v = one_verdict(flow("C60 S296 C92 S44 C124 S228 " + typing + " C92 S44 C124 S228 " + typing),
                    names=NAMES, budget=128)
    assert v.protocol == "ssh"


def test_default_budget_ends_before_the_channels_so_it_stays_ssh() -> None:
    v = one_verdict(flow(FORWARD), names=NAMES, budget=24, deep={})
    assert (v.klass, v.protocol) == ("benign", "ssh")
    # the engine's default deeper budget for tcp/22 (queue.deep inline) is what makes it visible
    v = one_verdict(flow(FORWARD), names=NAMES, budget=24)
    assert v.protocol == "ssh_forwarding"


def test_interactive_session_is_not_flagged() -> None:
    typing = " ".join(["C36 S36"] * 30)
    v = one_verdict(flow("C112 S288 S216 C460 S108 " + typing), names=NAMES, budget=128)
    assert (v.klass, v.protocol) == ("benign", "ssh")


def test_session_setup_alone_is_not_flagged() -> None:
    # auth success -> session open -> confirmation -> pty/shell request: two triples, not three
    v = one_verdict(flow("C128 S48 C448 S112 S96 S64 S1232 C48 S48"), names=NAMES, budget=128)
    assert v.protocol == "ssh"


def test_scp_bulk_with_window_adjusts_is_not_flagged() -> None:
    bulk = " ".join(["C32804 C32804 S36"] * 20)
    v = one_verdict(flow("C112 S288 S216 C112 S72 C44 S356 C68 S76 C100 S68 C108 S52 " + bulk),
                    names=NAMES, budget=128)
    assert v.protocol == "ssh"
    down = " ".join(["S32804 S32804 C36"] * 20)
    v = one_verdict(flow("C112 S288 S216 C112 S72 C44 S356 C68 S76 C100 S76 C108 S52 " + down),
                    names=NAMES, budget=128)
    assert v.protocol == "ssh"


def test_not_ssh_is_rejected_on_the_first_packet() -> None:
    pk = seq("C92 S44 C124 " * 10)
    assert one_verdict(pk, names=NAMES, budget=128).klass != "proxy_obfuscated"


def test_hostile_input_never_raises() -> None:
    seeds = [bytes(p[Raw].load) for p in flow(FORWARD)[:20]]
    r = random.Random(2)
    for i in range(40):
        raws = [bytes(IP(src=C, dst=S) / TCP(sport=40000, dport=22) / Raw(b"SSH-2.0-x\r\n"))]
        for j in range(60):
            p = pkt(j % 2, 1)
            p[Raw].load = mutate(r, seeds) or b"\x00"
            raws.append(bytes(p))
        assert feed_raw(NAMES, raws, budget=128).classifier_errors == 0, i


# ---------------------------------------------------------------- which side is the client

def clear(code: int, n: int) -> bytes:
    """A clear (pre-NEWKEYS) SSH packet of `n` bytes carrying message `code`."""
    return (n - 4).to_bytes(4, "big") + bytes([4, code]) + rnd.randbytes(n - 6)


def kex_flow(after: str, server_first: bool) -> list[IP]:
    """Banners, then a key exchange with real clear message codes, then `after`; payload only (what the
    kernel queues to the daemon: no TCP handshake, no pure ACKs), the server's banner first if asked."""
    pkts = flow(after)
    if server_first:
        pkts[0], pkts[1] = pkts[1], pkts[0]
    kex = pkts[2:6]  # C1560 S1088 C1208 S1564: KEXINIT both ways, then the client's INIT, the server's REPLY
    for p, code in zip(kex, (20, 20, 30, 31), strict=True):
        p[Raw].load = clear(code, len(p[Raw].load))
    return pkts


def test_client_direction_from_the_clear_key_exchange() -> None:
    from tunnelwatch.classify.sshfwd import kex_client_direction
    assert kex_client_direction(clear(30, 1208), 1) == 1  # ECDH/hybrid INIT: its sender is the client
    assert kex_client_direction(clear(31, 1564), 1) == 0  # REPLY: the other side is
    assert kex_client_direction(clear(34, 24), 0) == 0  # group exchange REQUEST
    assert kex_client_direction(clear(20, 1088), 0) == -1  # KEXINIT: both sides send one
    assert kex_client_direction(clear(20, 1088) + clear(30, 44), 1) == 1  # two in one segment
    assert kex_client_direction(rnd.randbytes(1208), 0) == -1  # encrypted: nothing to learn
    for n in range(6):
        assert kex_client_direction(clear(30, 64)[:n], 0) == -1  # cut before the message code
    assert kex_client_direction(clear(30, 1208)[:600], 0) == 0  # a long INIT split by TCP: its head counts


def test_server_banner_first_in_the_daemons_view_is_still_flagged() -> None:
    # Inline the flow starts at the first queued packet: the server's banner makes the server the flow's
    # initiator. The key exchange says which side is the client. (budget=96: the deep window for SSH.)
    v = one_verdict(kex_flow(FORWARD, server_first=True), names=NAMES, budget=96)
    assert (v.klass, v.protocol) == ("proxy_obfuscated", "ssh_forwarding")
    v = one_verdict(kex_flow(FORWARD, server_first=False), names=NAMES, budget=96)
    assert (v.klass, v.protocol) == ("proxy_obfuscated", "ssh_forwarding")


def test_server_banner_first_interactive_session_is_not_flagged() -> None:
    typing = " ".join(["C36 S36"] * 30)
    v = one_verdict(kex_flow("C112 S288 S216 C460 S108 " + typing, server_first=True), names=NAMES,
                    budget=128)
    assert (v.klass, v.protocol) == ("benign", "ssh")
