"""Harness: every registered classifier, through the real Engine, on arbitrary packets and flows.

The classifier list is REGISTRY itself (load_classifiers()), so classifiers added later are fuzzed too.
Each one is wrapped so that an exception it raises escapes the engine's guard (which would otherwise only
count it) as a crash. Every verdict must also be reportable: a flow_tagged event built the way the daemon
builds it (evidence cut to 16 x 128) must validate.

Input: byte 0 = mode (even: synthetic packets on up to three flows; odd: length-prefixed raw IP packets),
then per packet: flow, direction, transport, ports and a payload.
"""

from __future__ import annotations

from typing import Any

from fuzz._fuzzlib import Bytes, fuzz_main, instrumented

with instrumented():
    from tunnelwatch.classify import load_classifiers
    from tunnelwatch.classify.base import CONFIDENCES, KLASSES, Classifier, Context, InspectResult, Verdict
    from tunnelwatch.classify.engine import Engine
    from tunnelwatch.classify.flow import Flow
    from tunnelwatch.classify.packet import Packet, parse_ip, transport_name
    from tunnelwatch.report.events import EventError, make_event


class ClassifierCrash(BaseException):
    """A classifier raised; BaseException so the engine's `except Exception` guard cannot swallow it."""


class Strict(Classifier):
    """Delegates to a real classifier and turns its exceptions into ClassifierCrash."""

    def __init__(self, inner: Classifier) -> None:
        self.inner = inner
        for attr in ("name", "klass", "transports", "ports", "protocols", "follow"):
            setattr(self, attr, getattr(inner, attr))

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """The wrapped classifier's answer."""
        try:
            return self.inner.inspect(flow, pkt, direction, ctx)
        except Exception as exc:
            raise ClassifierCrash(f"classifier {self.name} raised on {pkt!r}") from exc


CLASSIFIERS = load_classifiers()
TRANSPORTS = sorted({t for c in CLASSIFIERS for t in c.transports} | {1, 58})
_COMMON_PORTS = {53, 80, 123, 443, 500, 1194, 1701, 1723, 3478, 4500, 5060, 5061, 8080, 51820}
PORTS = sorted({p for c in CLASSIFIERS for (_t, p) in c.ports} | _COMMON_PORTS)
ADDRS = {4: (bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2])),
         6: (bytes.fromhex("20010db8" + "0" * 23 + "1"), bytes.fromhex("20010db8" + "0" * 23 + "2"))}


def check_verdict(flow: Flow, v: Verdict) -> None:
    """A verdict must be well-formed and fit the event schema the daemon reports it in."""
    assert v.klass in KLASSES and v.confidence in CONFIDENCES, v
    assert all(isinstance(e, str) for e in v.evidence), v
    if v.klass in ("benign", "unknown"):
        return
    fields: dict[str, Any] = {
        "sport": flow.sport, "dport": flow.dport, "transport": transport_name(flow.proto), "klass": v.klass,
        "protocol": v.protocol, "confidence": v.confidence, "evidence": [e[:128] for e in v.evidence[:16]],
        "action": "report", "packets": flow.packets, "bytes": flow.bytes}
    try:
        make_event("flow_tagged", device_id="fuzz", ts=1.0, **fields)
    except EventError as exc:
        raise AssertionError(f"verdict {v!r} cannot be reported: {exc}") from exc


def _port(b: Bytes) -> int:
    sel = b.byte()
    return int(PORTS[sel % len(PORTS)]) if sel < 200 else b.u16()


def one_input(data: bytes) -> None:
    """Feed the packets described by `data` through an Engine holding every registered classifier."""
    b = Bytes(data)
    mode = b.byte()
    ended: list[tuple[Flow, Verdict]] = []
    engine = Engine([Strict(c) for c in load_classifiers()], budget=1 + mode % 32,
                    on_end=lambda f, v: ended.append((f, v)), on_decided=check_verdict)
    ts = 1.0
    if mode & 1:
        for _ in range(64):
            if b.left() <= 0:
                break
            ts += b.byte() / 100
            pkt = parse_ip(b.take(b.u16() % 2048), ts)
            if pkt is not None:
                engine.process(pkt)
    else:
        version = 6 if mode & 2 else 4
        flows = [(b.pick(TRANSPORTS), _port(b), _port(b)) for _ in range(1 + b.byte() % 3)]
        for _ in range(64):
            if b.left() <= 0:
                break
            sel = b.byte()
            proto, p1, p2 = flows[sel % len(flows)]
            ports = (p1, p2) if proto in (6, 17) else (0, 0)
            a, z = ADDRS[version]
            src, dst, sp, dp = (z, a, ports[1], ports[0]) if sel & 0x80 else (a, z, ports[0], ports[1])
            payload = b.take(b.u16() % 1600)
            ts += (sel & 0x0F) / 50
            engine.process(Packet(ts, version, src, dst, proto, sp, dp, 40 + len(payload), payload,
                                  0x18 if proto == 6 else 0))
    engine.flush()
    assert engine.classifier_errors == 0
    for flow, v in ended:
        check_verdict(flow, v)


if __name__ == "__main__":
    fuzz_main(one_input)
