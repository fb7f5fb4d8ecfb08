"""Every classifier's annotated samples (tests/data/captures/samples.toml), classified with the whole
registry, offline and in the daemon's view: each flow gets the verdict written beside it, each near miss
stays clear of the protocols it resembles, and no registered classifier is without a positive sample and
a near miss."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tunnelwatch.classify import REGISTRY, classifier_names
from tunnelwatch.classify.base import CONFIDENCES
from tunnelwatch.classify.endpoints import EndpointIndex, ListSource, load_list
from tunnelwatch.offline.classify import classify_file

CAPTURES = Path(__file__).resolve().parents[2] / "data" / "captures"
INDEX = CAPTURES / "samples.toml"
SAMPLES: list[dict[str, Any]] = tomllib.loads(INDEX.read_text())["sample"]
PROTOCOLS = {c.name: set(c.protocols) for c in REGISTRY}
KLASSES = {c.name: c.klass for c in REGISTRY}
SAMPLE_KEYS = {"file", "positive", "near_miss", "made", "budget", "flows", "endpoints"}
FLOW_KEYS = {"flow", "src", "sport", "count", "what", "expect", "evidence", "never", "at_most"}


def strength(confidence: str) -> int:
    """Higher is stronger: confirmed > heuristic > list > port."""
    return len(CONFIDENCES) - CONFIDENCES.index(confidence)


@dataclass(frozen=True)
class FlowSpec:
    transport: str
    dport: int | None
    src: str | None
    sport: int | None
    count: int | None
    expect: tuple[str, str, str] | None
    evidence: str | None
    never: frozenset[str]
    at_most: str | None

    @classmethod
    def parse(cls, d: dict[str, Any]) -> FlowSpec:
        words = d["flow"].split()
        expect = tuple(d["expect"].split()) if "expect" in d else None
        assert expect is None or len(expect) == 3, d
        return cls(words[0], int(words[1]) if len(words) > 1 else None, d.get("src"), d.get("sport"),
                   d.get("count"), expect, d.get("evidence"),  # type: ignore[arg-type]
                   frozenset(d.get("never", ())), d.get("at_most"))

    def matches(self, r: dict[str, Any]) -> bool:
        return (r["transport"] == self.transport and (self.dport is None or r["dport"] == self.dport)
                and (self.src is None or r["src"] == self.src)
                and (self.sport is None or r["sport"] == self.sport))

    def problems(self, r: dict[str, Any]) -> list[str]:
        out = []
        if self.expect is not None:
            klass, protocol, least = self.expect
            got = (r["klass"], r["protocol"])
            if got != (klass, protocol) or strength(r["confidence"]) < strength(least):
                out.append(f"expected {klass} {protocol} (at least {least})")
        if self.evidence is not None and not any(self.evidence in e for e in r["evidence"]):
            out.append(f"no evidence mentions {self.evidence!r}")
        if r["protocol"] in self.never and (self.at_most is None
                                            or strength(r["confidence"]) > strength(self.at_most)):
            out.append(f"must not be {r['protocol']}" + (f" above {self.at_most}" if self.at_most else ""))
        return out


def show(r: dict[str, Any]) -> str:
    return (f"{r['transport']} {r['src']}:{r['sport']} -> {r['dst']}:{r['dport']}: {r['klass']} "
            f"{r['protocol']} {r['confidence']} {r['evidence']} ({r['packets']} packets)")


@pytest.mark.parametrize("view", ["offline", "inline"])
@pytest.mark.parametrize("sample", SAMPLES, ids=[s["file"] for s in SAMPLES])
def test_sample_verdicts(sample: dict[str, Any], view: str) -> None:
    """`inline`: the daemon's view of the same capture (what the kernel rules would queue)."""
    kw: dict[str, Any] = {"budget": sample["budget"]} if "budget" in sample else {}
    if "endpoints" in sample:  # endpoint lists the sample is classified with (paths relative to this folder)
        kw["endpoints"] = EndpointIndex([load_list(ListSource(CAPTURES / p)) for p in sample["endpoints"]])
    records = list(classify_file(str(CAPTURES / sample["file"]), progress=False, inline=view == "inline",
                                 **kw))
    specs = [FlowSpec.parse(f) for f in sample["flows"]]
    bad: list[str] = []
    for r in records:
        mine = [s for s in specs if s.matches(r)]
        if not mine:
            bad.append(f"flow not annotated: {show(r)}")
        bad += [f"{show(r)}: {p}" for s in mine for p in s.problems(r)]
    for s, d in zip(specs, sample["flows"], strict=True):
        n = sum(1 for r in records if s.matches(r))
        if n == 0 or (s.count is not None and n != s.count):
            bad.append(f"{d['flow']!r} ({d['what']}): {n} flows in the capture, annotated "
                       f"{s.count if s.count is not None else 'at least 1'}")
    assert not bad, "\n".join(bad)


def test_the_index_is_well_formed() -> None:
    names = set(classifier_names())
    on_disk = {p.name for p in CAPTURES.glob("*.pcap*")}
    files = [s["file"] for s in SAMPLES]
    assert len(files) == len(set(files)), "a file is annotated twice"
    assert set(files) == on_disk, f"unannotated: {on_disk - set(files)}, missing: {set(files) - on_disk}"
    for s in SAMPLES:
        assert set(s) <= SAMPLE_KEYS and {"file", "made", "flows"} <= set(s), s["file"]
        assert s.get("positive") or s.get("near_miss"), f"{s['file']}: neither positive nor near_miss"
        assert s["made"].startswith(("real:", "crafted")), f"{s['file']}: say what made it"
        for n in (*s.get("positive", ()), *s.get("near_miss", ())):
            assert n in names, f"{s['file']}: no classifier {n!r} in the registry"
        for f in s["flows"]:
            assert set(f) <= FLOW_KEYS and {"flow", "what"} <= set(f), f"{s['file']}: {f}"
            assert "expect" in f or "never" in f, f"{s['file']}: {f['flow']} expects nothing"
            assert f.get("at_most", "port") in CONFIDENCES and f.get("never", True), f
            if "expect" in f:
                assert f["expect"].split()[2] in CONFIDENCES, f


def test_every_classifier_has_a_positive_sample_and_a_near_miss() -> None:
    """A positive sample names the classifier and expects one of its protocols; a near miss names it and
    says `never` one of them. A classifier added to the registry without both fails here."""
    positive: dict[str, list[str]] = {n: [] for n in classifier_names()}
    near: dict[str, list[str]] = {n: [] for n in classifier_names()}
    for s in SAMPLES:
        specs = [FlowSpec.parse(f) for f in s["flows"]]
        for n in s.get("positive", ()):
            if any(sp.expect and sp.expect[1] in PROTOCOLS[n] and sp.expect[0] == KLASSES[n] for sp in specs):
                positive[n].append(s["file"])
        for n in s.get("near_miss", ()):
            if any(sp.never & PROTOCOLS[n] for sp in specs):
                near[n].append(s["file"])
    lacking = {n: [what for what, have in (("a positive sample", positive[n]), ("a near miss", near[n]))
                   if not have] for n in positive}
    missing = {n: w for n, w in lacking.items() if w}
    assert not missing, f"classifiers without samples in {INDEX.name}: {missing}"


def test_samples_are_small() -> None:
    big = {p.name: p.stat().st_size for p in CAPTURES.glob("*.pcap*") if p.stat().st_size > 40_000}
    assert not big, f"trim these to the packets that matter: {big}"
