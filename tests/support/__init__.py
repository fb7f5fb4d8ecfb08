"""Shared test helpers: run crafted packets through the real engine and collect verdicts."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

from tunnelwatch.classify import load_classifiers
from tunnelwatch.classify.base import Verdict
from tunnelwatch.classify.engine import Engine
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import addr_text, parse_ip, transport_name


def run_engine(packets: Iterable[Any], *, names: Sequence[str] | None = None, budget: int = 24,
               t0: float = 1000.0, step: float = 0.01, deep: dict[tuple[int, int], int] | None = None
               ) -> list[tuple[Flow, Verdict]]:
    """Feed scapy packets (IP/IPv6 layer first) through an Engine; return (flow, verdict) per flow.
    `deep` as Engine's (None = the default deeper budgets, e.g. SSH)."""
    ended: list[tuple[Flow, Verdict]] = []
    engine = Engine(load_classifiers(names), budget=budget, on_end=lambda f, v: ended.append((f, v)),
                    deep=deep)
    ts = t0
    for p in packets:
        raw = bytes(p)
        pkt = parse_ip(raw, ts)
        assert pkt is not None, f"test packet not parsable: {p!r}"
        engine.process(pkt)
        ts += step
    engine.flush()
    return ended


def verdicts(packets: Iterable[Any], **kw: Any) -> list[Verdict]:
    """Only the verdicts, in flow-end order."""
    return [v for _, v in run_engine(packets, **kw)]


def one_verdict(packets: Iterable[Any], **kw: Any) -> Verdict:
    """The verdict of the single flow the packets form (asserts there is exactly one)."""
    vs = verdicts(packets, **kw)
    assert len(vs) == 1, f"expected one flow, got {len(vs)}: {vs}"
    return vs[0]


def describe(flow: Flow) -> str:
    """Text form of a flow for assertion messages."""
    return (f"{transport_name(flow.proto)} {addr_text(flow.src)}:{flow.sport}->"
            f"{addr_text(flow.dst)}:{flow.dport}")


def mutate(rnd: random.Random, seeds: Sequence[bytes]) -> bytes:
    """One of the seeds with up to four random bytes changed, cut at a random length (fuzz input)."""
    s = bytearray(rnd.choice(seeds))
    for _ in range(rnd.randint(0, 4)):
        s[rnd.randrange(len(s))] = rnd.randrange(256)
    return bytes(s[:rnd.randint(0, len(s))])


def feed_raw(names: Sequence[str], raws: Iterable[bytes], *, budget: int = 24, t0: float = 1000.0) -> Engine:
    """Feed raw IP packets (one a second of capture time) to an Engine of the named classifiers; flushed."""
    engine = Engine(load_classifiers(names), budget=budget)
    for i, raw in enumerate(raws):
        pkt = parse_ip(raw, t0 + i)
        assert pkt is not None, f"fuzz packet {i} not parsable"
        engine.process(pkt)
    engine.flush()
    return engine
