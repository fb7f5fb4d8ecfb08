"""The shared vocabulary at the bottom of the tree: classes, confidence levels (with their order), Verdict.

Every wing reads these names from here and nowhere else: the classifiers emit a `Verdict`, the policy
compares confidences with `confidence_at_least`, config, events, status and the offline tools check and
list classes with `KLASSES` / `FLAGGED`. This module imports nothing of tunnelwatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Klass = Literal["vpn_tunnel", "voip", "proxy_obfuscated", "benign", "unknown"]
Confidence = Literal["confirmed", "heuristic", "list", "port"]
KLASSES: Final[tuple[str, ...]] = ("vpn_tunnel", "voip", "proxy_obfuscated", "benign", "unknown")
#: the classes policy acts on (tunnels, VoIP, proxies); the others are never blocked or reported per flow
FLAGGED: Final[frozenset[str]] = frozenset({"vpn_tunnel", "voip", "proxy_obfuscated"})
#: the flagged classes in display order
FLAGGED_ORDER: Final[tuple[str, ...]] = KLASSES[:3]
#: strongest first; "list" = the endpoint is on an operator-supplied list (e.g. a VPN provider's servers)
CONFIDENCES: Final[tuple[str, ...]] = ("confirmed", "heuristic", "list", "port")
_STRENGTH: Final = {c: len(CONFIDENCES) - i for i, c in enumerate(CONFIDENCES)}


def strength(confidence: str) -> int:
    """A number that orders confidences: confirmed 4 > heuristic 3 > list 2 > port 1 (0 if unknown)."""
    return _STRENGTH.get(confidence, 0)


def confidence_at_least(confidence: str, minimum: str) -> bool:
    """Whether `confidence` is as strong as `minimum` or stronger."""
    return strength(confidence) >= strength(minimum)


def is_flagged(klass: str) -> bool:
    """True for tunnel, VoIP and proxy classes."""
    return klass in FLAGGED


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a flow is, how sure we are, and why."""

    klass: Klass
    protocol: str
    confidence: Confidence
    evidence: tuple[str, ...] = ()
    #: benign carrier protocols this verdict looked inside (e.g. "tls" for Tor or Trojan, "ssh" for
    #: port forwarding): it outranks a confirmed benign verdict for one of them on the same flow
    supersedes: frozenset[str] = frozenset()

    @property
    def flagged(self) -> bool:
        """True for tunnel, VoIP and proxy verdicts (the ones policy acts on)."""
        return self.klass in FLAGGED

    @property
    def rank(self) -> int:
        """Higher wins: confirmed > heuristic > list > port; flagged wins ties, except port-only guesses."""
        s = strength(self.confidence)
        if s <= 1:  # a port-only guess never beats the benign verdict it would be tied with
            return 1 if self.flagged else 2
        return 2 * s if self.flagged else 2 * s - 1

    def beats(self, other: Verdict | None) -> bool:
        """Whether this verdict should replace `other` as a flow's best verdict."""
        if other is None:
            return True
        if self.flagged and other.klass == "benign" and other.protocol in self.supersedes:
            return True
        if other.flagged and self.klass == "benign" and self.protocol in other.supersedes:
            return False
        # Same rank and protocol: the later verdict has accumulated more evidence.
        return self.rank > other.rank or (self.rank == other.rank and self.protocol == other.protocol)

    @property
    def final(self) -> bool:
        """A confirmed flagged verdict ends inspection of the flow."""
        return self.confidence == "confirmed" and self.flagged


UNKNOWN: Final = Verdict("unknown", "unknown", "heuristic", ())
