"""Megaco/H.248 text: a transaction request confirmed by a reply with its id; near-misses."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from support import feed_raw, mutate, one_verdict, verdicts
from tunnelwatch.classify.megaco import message

MGC, MG = "192.0.2.10", "198.51.100.7"
# RFC 3525 appendix A style (long form) and the short form seen in nDPI's capture
REQ = (b"MEGACO/1 [124.124.124.222]:55555\nTransaction = 9998 {\n  Context = - {\n"
       b"    ServiceChange = ROOT {Services {Method=Restart, ServiceChangeAddress=55555, "
       b"Profile=ResGW/1}}}}\n")
REPLY = (b"MEGACO/1 [123.123.123.4]:55555\nReply = 9998 {\n"
         b"  Context = - {ServiceChange = ROOT {Services {}}}}\n")
SHORT_REQ = b"!/1 <iMSS>\nT=5552827134{C=-{AV=DS/1/5{AT{M}}}}"
SHORT_REPLY = b"!/1 [10.23.1.42]:2944 P=5552827134{C=-{AV=DS/1/5{M{O{MO=SR}}}}}"


def u(src: str, dst: str, sp: int, dp: int, b: bytes) -> IP:
    return IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(b)


def test_message_parser() -> None:
    assert message(REQ) == ("request", 9998) and message(REPLY) == ("reply", 9998)
    assert message(SHORT_REQ) == ("request", 5552827134) and message(SHORT_REPLY) == ("reply", 5552827134)
    assert message(b"MEGACO/1 [1.2.3.4]:2944\nPending = 7 {}") == ("pending", 7)
    assert message(b"MEGACO/4 [1.2.3.4] T=1{") is None and message(b"!/1 <x> Q=1{") is None


@pytest.mark.parametrize(("req", "rep", "port"), [(REQ, REPLY, 2944), (SHORT_REQ, SHORT_REPLY, 40000)])
def test_request_answered_is_confirmed(req: bytes, rep: bytes, port: int) -> None:
    v = one_verdict([u(MGC, MG, port, port, req), u(MG, MGC, port, port, rep)])
    assert (v.klass, v.protocol, v.confidence) == ("voip", "megaco", "confirmed")
    assert v.evidence[1] == "reply with the same transaction id"


def test_lone_request_heuristic_other_id_does_not_confirm() -> None:
    assert one_verdict([u(MGC, MG, 2944, 2944, REQ)]).confidence == "heuristic"
    other = REPLY.replace(b"9998", b"9999")
    assert one_verdict([u(MGC, MG, 2944, 2944, REQ), u(MG, MGC, 2944, 2944, other)]).confidence == "heuristic"


def test_replies_alone_and_lookalikes_are_not_flagged() -> None:
    for pkts in ([u(MG, MGC, 40000, 40001, REPLY)],
                 [u(MGC, MG, 40000, 40001, b"MEGA/1 [1.2.3.4] T=1{C=-{}}")],
                 [u(MGC, MG, 40000, 40001, b"!/1 hello world T=1")]):
        assert all(v.protocol != "megaco" for v in verdicts(pkts))


def test_random_and_truncated_bytes_never_raise() -> None:
    rnd = random.Random(7)
    raws = [bytes(u(MGC, MG, 2944, 2944, mutate(rnd, [REQ, REPLY, SHORT_REQ]))) for _ in range(400)]
    assert feed_raw(["megaco"], raws).classifier_errors == 0
