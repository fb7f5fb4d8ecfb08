"""Agreement with nDPI's labels on the nDPI regression corpus (`make eval`).

Joins our per-flow records with labels.tsv by pcap + unordered endpoints + IP protocol, then prints:
per-klass agreement (a confusion matrix), per-protocol agreement for the protocol families we detect,
and every flow of a `benign` capture that we flag. nDPI's labels are one classifier's opinion, not
ground truth: disagreements are listed so that they can be judged, not hidden.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tunnelwatch.classify.endpoints import EndpointIndex, ListSource, load_list
from tunnelwatch.classify.engine import DEFAULT_BUDGET, INLINE_BUDGET
from tunnelwatch.config.yamlcheck import ConfigError
from tunnelwatch.offline.classify import classify_file
from tunnelwatch.offline.pcapfile import PcapError
from tunnelwatch.verdict import FLAGGED, KLASSES

KLASS_ORDER = KLASSES
# nDPI application name part -> the protocol family it corresponds to here (for per-protocol rows)
NDPI_FAMILY = {
    "OpenVPN": "openvpn", "WireGuard": "wireguard", "IPSec": "ipsec", "PPTP": "pptp", "GRE": "gre",
    "L2TP": "l2tp", "CiscoVPN": "anyconnect", "SIP": "sip", "RTP": "rtp", "RTCP": "rtcp", "SRTP": "rtp",
    "STUN": "stun", "TURN": "turn", "Tor": "tor",
    "TINC": "tinc", "Tailscale": "tailscale", "CloudflareWarp": "warp",
    "Softether": "softether", "IAX": "iax2", "H323": "h323", "MGCP": "mgcp", "CiscoSkinny": "sccp",
    "WhatsAppCall": "whatsapp_call", "SignalVoip": "signal_call", "TelegramVoip": "telegram_call",
    "TeamSpeak": "teamspeak", "Mumble": "mumble", "Discord": "discord", "Zoom": "zoom", "Viber": "viber",
    "LineCall": "line_call", "IMO": "imo", "Megaco": "megaco", "Teredo": "teredo", "TeamsCall": "teams_call",
}
#: STUN/TURN relays carry the media of every messenger: one group when comparing protocols
MEDIA: frozenset[str] = frozenset({"rtp", "rtcp", "stun", "turn", "whatsapp_call", "signal_call",
                                   "telegram_call", "teams_call", "zoom", "discord"})
# protocols we report -> family (so ike/esp/ah all count as ipsec)
OUR_FAMILY = {"ike": "ipsec", "esp": "ipsec", "ah": "ipsec"}

Key = tuple[str, frozenset[tuple[str, int]], int]
_PROTO_NUM = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "gre": 47, "esp": 50, "ah": 51}


def _key(pcap: str, a: str, ap: int, b: str, bp: int, proto: int) -> Key:
    return (pcap, frozenset({(a, ap), (b, bp)}), proto)


def load_labels(path: str) -> tuple[dict[Key, list[dict[str, str]]], dict[str, str]]:
    """labels.tsv rows by flow key, and manifest groups by pcap name."""
    labels: dict[Key, list[dict[str, str]]] = defaultdict(list)
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            try:
                k = _key(row["pcap"], row["src_ip"], int(row["src_port"]), row["dst_ip"],
                         int(row["dst_port"]), int(row["protocol"]))
            except (KeyError, ValueError):
                continue
            labels[k].append(row)
    groups: dict[str, str] = {}
    manifest = os.path.join(os.path.dirname(path), "manifest.tsv")
    if os.path.exists(manifest):
        with open(manifest, newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                groups[row["pcap"]] = row["group"]
    return labels, groups


def ndpi_family(app: str) -> str:
    """Our family name for an nDPI application name like 'STUN.WhatsAppCall' (the most specific known
    part: whatsapp_call), or ''."""
    for part in reversed(app.split(".")):
        if part in NDPI_FAMILY:
            return NDPI_FAMILY[part]
    return ""


def evaluate(corpus: str, pcaps: Iterable[str] | None = None, progress: bool = True,
             inline: bool = False, endpoints: EndpointIndex | None = None) -> dict[str, Any]:
    """Classify the corpus and compute agreement figures; `inline`: the daemon's view (kernelview.py)."""
    labels, groups = load_labels(os.path.join(corpus, "labels.tsv"))
    pcap_dir = os.path.join(corpus, "pcap")
    names = sorted(pcaps) if pcaps else sorted(os.listdir(pcap_dir))
    ours: dict[Key, dict[str, Any]] = {}
    errors: list[str] = []
    packets = 0
    t0 = time.perf_counter()
    for i, name in enumerate(names, 1):
        if progress:
            print(f"\r[{i}/{len(names)}] {name[:50]:50}", end="", file=sys.stderr, flush=True)
        try:
            budget = INLINE_BUDGET if inline else DEFAULT_BUDGET
            for r in classify_file(os.path.join(pcap_dir, name), progress=False, inline=inline,
                                   budget=budget, endpoints=endpoints):
                packets += r["packets"]
                k = _key(name, r["src"], r["sport"], r["dst"], r["dport"], _PROTO_NUM.get(r["transport"], -1))
                prev = ours.get(k)
                # one 5-tuple split by idle timeouts: keep the most telling verdict
                if prev is None or _rank(r) > _rank(prev):
                    ours[k] = r
        except PcapError as exc:
            errors.append(str(exc))
    if progress:
        print("\r" + " " * 70 + "\r", end="", file=sys.stderr)
    elapsed = time.perf_counter() - t0

    confusion: Counter[tuple[str, str]] = Counter()
    fam_total: Counter[str] = Counter()
    fam_klass_ok: Counter[str] = Counter()
    fam_proto_ok: Counter[str] = Counter()
    misses: list[str] = []
    unmatched = 0
    for k, rows in labels.items():
        if k[0] not in names:
            continue
        row = rows[0]
        found = ours.get(k)
        if found is None:
            unmatched += 1
            continue
        r = found
        theirs = row["klass"]
        mine = r["klass"]
        confusion[(theirs, mine)] += 1
        fam = ndpi_family(row["ndpi_application_name"])
        if fam:
            fam_total[fam] += 1
            if mine == theirs:
                fam_klass_ok[fam] += 1
            ours_fam = OUR_FAMILY.get(r["protocol"], r["protocol"])
            if ours_fam == fam or (fam in MEDIA and ours_fam in MEDIA):
                fam_proto_ok[fam] += 1
        if theirs != mine and not (theirs == "benign" and mine in ("benign", "unknown")):
            misses.append(f"{k[0]}: {r['transport']} {r['src']}:{r['sport']} -> {r['dst']}:{r['dport']} "
                          f"nDPI={row['ndpi_application_name']}/{theirs} ours={r['protocol']}/{mine}"
                          f"/{r['confidence']}")
    benign_fp = [r for k, r in ours.items() if groups.get(k[0]) == "benign" and r["klass"] in FLAGGED]
    return {
        "pcaps": len(names), "packets": packets, "seconds": elapsed, "flows": len(ours),
        "labelled_flows": sum(1 for k in labels if k[0] in names), "unmatched": unmatched,
        "confusion": {f"{a}->{b}": n for (a, b), n in sorted(confusion.items())},
        "families": {f: {"flows": fam_total[f], "klass_agree": fam_klass_ok[f],
                         "protocol_agree": fam_proto_ok[f]} for f in sorted(fam_total)},
        "benign_flagged": [_short(r) for r in benign_fp],
        "disagreements": misses, "errors": errors, "view": "inline" if inline else "offline",
        "flagged": {_flow_id(r): f"{r['klass']}/{r['protocol']}/{r['confidence']}"
                    for r in ours.values() if r["klass"] in FLAGGED},
    }


def _flow_id(r: dict[str, Any]) -> str:
    return f"{r['pcap']}: {r['transport']} {r['src']}:{r['sport']} -> {r['dst']}:{r['dport']}"


def _rank(r: dict[str, Any]) -> int:
    flagged = r["klass"] in FLAGGED
    return {"confirmed": 4, "heuristic": 2, "port": 1}.get(r["confidence"], 0) + (1 if flagged else 0)


def _short(r: dict[str, Any]) -> str:
    return (f"{r['pcap']}: {r['transport']} {r['src']}:{r['sport']} -> {r['dst']}:{r['dport']} "
            f"{r['klass']}/{r['protocol']}/{r['confidence']} ({'; '.join(r['evidence'])})")


def print_report(res: dict[str, Any], out: Any = None) -> None:
    """Human-readable report."""
    w = (out or sys.stdout).write
    w(f"corpus: {res['pcaps']} pcaps, {res['packets']} packets, {res['flows']} flows of ours, "
      f"{res['labelled_flows']} labelled by nDPI ({res['unmatched']} labelled flows not matched), "
      f"{res['seconds']:.1f} s\n\n")
    conf = {tuple(k.split("->")): v for k, v in res["confusion"].items()}
    w("klass agreement (rows: nDPI's klass, columns: ours)\n")
    w(f"{'':18}" + "".join(f"{c:>17}" for c in KLASS_ORDER) + f"{'agree':>9}\n")
    for a in KLASS_ORDER[:4]:
        row = [conf.get((a, b), 0) for b in KLASS_ORDER]
        total = sum(row)
        if not total:
            continue
        ok = sum(conf.get((a, b), 0) for b in ((a, "unknown") if a == "benign" else (a,)))
        w(f"{a:18}" + "".join(f"{n:17}" for n in row) + f"{ok / total:9.1%}\n")
    w("\nper protocol family (flows nDPI names with it)\n")
    w(f"{'family':12}{'flows':>7}{'same klass':>12}{'same protocol':>15}\n")
    for f, d in res["families"].items():
        w(f"{f:12}{d['flows']:7}{d['klass_agree']:7} {d['klass_agree'] / d['flows']:4.0%}"
          f"{d['protocol_agree']:9} {d['protocol_agree'] / d['flows']:4.0%}\n")
    w(f"\nflows of benign captures that we flag: {len(res['benign_flagged'])}\n")
    for line in res["benign_flagged"]:
        w(f"  {line}\n")
    w(f"\ndisagreements with nDPI (excluding benign vs unknown): {len(res['disagreements'])}\n")
    for line in res["disagreements"]:
        w(f"  {line}\n")
    for e in res["errors"]:
        w(f"error: {e}\n")


def print_views(off: dict[str, Any], inl: dict[str, Any], out: Any = None) -> None:
    """Offline and inline figures side by side; the inline column is the product's figure."""
    w = (out or sys.stdout).write
    w(f"corpus: {off['pcaps']} pcaps, {off['packets']} packets, {off['labelled_flows']} flows labelled by "
      f"nDPI; offline {off['seconds']:.1f} s, inline {inl['seconds']:.1f} s\n")
    w("offline = every packet of a flow (budget 24); inline = what the kernel queues to the daemon "
      "(classify --inline)\n\n")
    w(f"{'family':14}{'flows':>6}{'klass offline':>15}{'klass inline':>14}{'proto offline':>15}"
      f"{'proto inline':>14}\n")
    for f, d in off["families"].items():
        i = inl["families"].get(f, {"klass_agree": 0, "protocol_agree": 0})
        w(f"{f:14}{d['flows']:6}{d['klass_agree']:15}{i['klass_agree']:14}{d['protocol_agree']:15}"
          f"{i['protocol_agree']:14}\n")
    for key, what in (("klass_agree", "same klass"), ("protocol_agree", "same protocol")):
        a = sum(d[key] for d in off["families"].values())
        b = sum(d[key] for d in inl["families"].values())
        w(f"{'all (' + what + ')':34}{a:>9}{b:>14}\n")
    w(f"\nflows of benign captures flagged: offline {len(off['benign_flagged'])}, "
      f"inline {len(inl['benign_flagged'])}\n")
    for line in sorted(set(off["benign_flagged"]) | set(inl["benign_flagged"])):
        w(f"  {line}\n")
    lost = sorted(set(off["flagged"]) - set(inl["flagged"]))
    w(f"\nflagged offline, not inline (the daemon would miss them): {len(lost)}\n")
    for flow in lost:
        w(f"  {flow} {off['flagged'][flow]}\n")
    confirmed = {f for f, v in off["flagged"].items() if v.endswith("/confirmed")}
    weaker = sorted(f for f in confirmed & set(inl["flagged"])
                    if not inl["flagged"][f].endswith("/confirmed"))
    w(f"confirmed offline, only heuristic inline: {len(weaker)}\n")
    for flow in weaker:
        w(f"  {flow} {off['flagged'][flow]} -> {inl['flagged'][flow]}\n")
    gained = sorted(set(inl["flagged"]) - set(off["flagged"]))
    w(f"flagged inline, not offline: {len(gained)}\n")
    for flow in gained:
        w(f"  {flow} {inl['flagged'][flow]}\n")


def main(argv: list[str] | None = None) -> int:
    """`python -m tunnelwatch.offline.evaluate --corpus DIR [--json] [PCAP...]`."""
    ap = argparse.ArgumentParser(prog="tunnelwatch-eval",
                                 description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--corpus", default="../shared/corpus/ndpi")
    ap.add_argument("--json", action="store_true", help="machine-readable result")
    ap.add_argument("--view", choices=("both", "offline", "inline"), default="both",
                    help="both (default): offline and inline side by side; or one view in full")
    ap.add_argument("--endpoints", action="append", default=[], metavar="LIST.yaml",
                    help="apply this YAML endpoint list (repeatable), e.g. config/endpoints/vpn-apps.yaml")
    ap.add_argument("pcaps", nargs="*", help="only these pcap names")
    a = ap.parse_args(argv)
    if not os.path.exists(os.path.join(a.corpus, "labels.tsv")):
        print(f"tunnelwatch-eval: no corpus at {a.corpus} (labels.tsv missing); nothing to evaluate",
              file=sys.stderr)
        return 0
    try:
        index = EndpointIndex([load_list(ListSource(Path(f))) for f in a.endpoints]) if a.endpoints else None
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 78
    tty = sys.stderr.isatty()
    views = ("offline", "inline") if a.view == "both" else (a.view,)
    res = {v: evaluate(a.corpus, a.pcaps or None, progress=tty, inline=v == "inline",
                          endpoints=index) for v in views}
    if a.json:
        json.dump(res if a.view == "both" else res[a.view], sys.stdout, indent=1)
        print()
    elif a.view == "both":
        print_views(res["offline"], res["inline"])
    else:
        print_report(res[a.view])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
