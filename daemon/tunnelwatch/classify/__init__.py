"""The classifier registry: the explicit, ordered list of protocol-family classifiers.

Order matters only for ties between equally confident verdicts (the earlier one wins). Each entry's
contract is checked when loaded, so a broken classifier fails at start-up, not on the first packet.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from tunnelwatch.classify import (  # voice apps and Teredo (issue 14)
    amneziawg,
    anyconnect,
    common,
    discord,
    dnstunnel,
    fastd,
    fep,
    h323,
    iax2,
    icmptunnel,
    imo,
    ipsec,
    l2tp,
    linecall,
    megaco,
    mgcp,
    mumble,
    n2n,
    names,
    openvpn,
    openvpn_obfs,
    pptp,
    rtp,
    sccp,
    sip,
    softether,
    sshfwd,
    sstp,
    stun,
    tailscale,
    teamspeak,
    telegram,
    teredo,
    tinc,
    tor,
    trojan,
    viber,
    wireguard,
    zerotier,
    zoom,
)
from tunnelwatch.classify.base import Classifier, ContractError, check_contract

REGISTRY: tuple[type[Classifier], ...] = (
    openvpn.OpenVPN,
    openvpn_obfs.OpenVPNObfs,
    wireguard.WireGuard,
    amneziawg.AmneziaWG,
    ipsec.IPsec,
    l2tp.L2TP,
    pptp.PPTP,
    anyconnect.AnyConnect,
    tinc.Tinc,
    n2n.N2N,
    fastd.Fastd,
    zerotier.ZeroTier,
    tailscale.Tailscale,
    softether.SoftEther,
    sstp.SSTP,
    dnstunnel.DnsTunnel,
    icmptunnel.IcmpTunnel,
    sip.SIP,
    stun.STUN,
    rtp.RTP,
    iax2.IAX2,
    h323.H323,
    mgcp.MGCP,
    sccp.SCCP,
    teamspeak.TeamSpeak,
    mumble.Mumble,
    discord.Discord,
    zoom.Zoom,
    telegram.Telegram,
    viber.Viber,
    linecall.LineCall,
    imo.Imo,
    megaco.Megaco,
    teredo.Teredo,
    tor.Tor,
    trojan.Trojan,
    sshfwd.SshForward,
    fep.FullyEncrypted,
    common.Common,
    names.Names,
)


def classifier_names() -> list[str]:
    """Names of all registered classifiers (their config keys)."""
    return [c.name for c in REGISTRY]


def known_protocols() -> frozenset[str]:
    """Every protocol name a registered classifier can report (policy rules and registrations name them)."""
    return frozenset(p for c in REGISTRY for p in c.protocols)


def suggest_protocol(name: str) -> str | None:
    """The known protocol a mistyped name most likely meant (None when nothing is close)."""
    close = difflib.get_close_matches(name, sorted(known_protocols()), n=1, cutoff=0.75)
    return close[0] if close else None


def load_classifiers(names: Iterable[str] | None = None) -> list[Classifier]:
    """Instantiate the registered classifiers (all, or those named), checking each one's contract."""
    wanted = set(names) if names is not None else None
    if wanted is not None:
        unknown = wanted - set(classifier_names())
        if unknown:
            raise ContractError(f"unknown classifier(s): {', '.join(sorted(unknown))}")
    out: list[Classifier] = []
    seen: set[str] = set()
    for cls in REGISTRY:
        if wanted is not None and cls.name not in wanted:
            continue
        c = cls()
        check_contract(c)
        if c.name in seen:
            raise ContractError(f"duplicate classifier name {c.name!r}")
        seen.add(c.name)
        out.append(c)
    return out
