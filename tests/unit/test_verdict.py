"""The bottom vocabulary: the confidence order and the verdict ranking every wing relies on."""

from __future__ import annotations

import itertools

from tunnelwatch.verdict import (
    CONFIDENCES,
    FLAGGED,
    KLASSES,
    Verdict,
    confidence_at_least,
    is_flagged,
    strength,
)


def test_confidence_order_is_the_listed_order() -> None:
    assert [strength(c) for c in CONFIDENCES] == sorted((strength(c) for c in CONFIDENCES), reverse=True)
    for stronger, weaker in itertools.combinations(CONFIDENCES, 2):
        assert confidence_at_least(stronger, weaker) and not confidence_at_least(weaker, stronger)
    assert not confidence_at_least("rumour", "port")  # an unknown level is weaker than any


def test_flagged_classes() -> None:
    assert {"vpn_tunnel", "voip", "proxy_obfuscated"} == FLAGGED and set(KLASSES) > FLAGGED
    assert is_flagged("voip") and not is_flagged("benign") and not is_flagged("unknown")


def test_rank_confirmed_beats_heuristic_and_a_port_guess_never_beats_benign() -> None:
    tunnel = {c: Verdict("vpn_tunnel", "openvpn", c) for c in CONFIDENCES}  # type: ignore[arg-type]
    benign = {c: Verdict("benign", "tls", c) for c in CONFIDENCES}  # type: ignore[arg-type]
    assert tunnel["confirmed"].beats(tunnel["heuristic"])
    assert not tunnel["heuristic"].beats(tunnel["confirmed"])
    assert tunnel["heuristic"].beats(benign["heuristic"])  # flagged wins a tie of confidence
    assert benign["port"].beats(tunnel["port"]) and not tunnel["port"].beats(benign["port"])
    assert Verdict("vpn_tunnel", "tor", "heuristic", supersedes=frozenset({"tls"})).beats(benign["confirmed"])
    assert tunnel["confirmed"].final and not tunnel["heuristic"].final and not benign["confirmed"].final
