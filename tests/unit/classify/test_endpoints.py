"""Endpoint lists: strict loading with located problems, longest-prefix lookup, the engine's list
fallback (confirmed/heuristic beat list, list beats port), the config section, hot reload keeping the last
good list."""

from __future__ import annotations

import ipaddress
import os
import random
import time
from pathlib import Path
from typing import ClassVar

import pytest

from tunnelwatch.classify.base import Classifier, Context, InspectResult, Klass, Verdict
from tunnelwatch.classify.endpoints import (
    EndpointIndex,
    EndpointList,
    Endpoints,
    EndpointsConfig,
    Entry,
    ListSource,
    load_list,
    parse_text_list,
    parse_yaml_list,
)
from tunnelwatch.classify.engine import Engine
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import ICMP, TCP, UDP, Packet
from tunnelwatch.cli import main
from tunnelwatch.config.runconfig import ConfigError, parse_config

EXAMPLES = Path(__file__).resolve().parents[3] / "config" / "endpoints"
CLIENT = bytes([198, 51, 100, 2])
SERVER = bytes([203, 0, 113, 2])
OTHER = bytes([203, 0, 113, 99])

GOOD = """\
name: lab-vpn
provider: LabVPN
klass: vpn_tunnel
protocol: vpn_provider
entries:
  - 203.0.113.0/24
  - {address: 203.0.113.2, ports: [1194], transport: udp, protocol: openvpn}
  - {address: "2001:db8:1::/48", ports: [443], transport: tcp}
"""


def _problems(text: str, path: str = "l.yaml") -> list[str]:
    with pytest.raises(ConfigError) as ei:
        parse_yaml_list(text, path)
    return ei.value.problems


# ---------------------------------------------------------------- loader


def test_good_yaml_list_parses_with_defaults_and_overrides() -> None:
    lst = parse_yaml_list(GOOD, "lab.yaml")
    assert (lst.name, lst.provider, lst.klass) == ("lab-vpn", "LabVPN", "vpn_tunnel")
    assert lst.protocol == "vpn_provider"
    assert lst.entries[0] == Entry(ipaddress.ip_network("203.0.113.0/24"))
    assert lst.entries[1] == Entry(ipaddress.ip_network("203.0.113.2/32"), frozenset({1194}), UDP, "openvpn")
    assert lst.entries[2].transport == TCP and lst.entries[2].net.version == 6


def test_name_defaults_to_the_file_stem() -> None:
    lst = parse_yaml_list(GOOD.replace("name: lab-vpn\n", ""), "/etc/x/my-provider.yaml")
    assert lst.name == "my-provider"


@pytest.mark.parametrize(("text", "expected"), [
    ("provider: P\nklass: vpn_tunnel\nprotocol: x1\nentries: [203.0.113.300]\n",
     "l.yaml:4:11: not an IP address or CIDR block: '203.0.113.300'"),
    ("provider: P\nklass: vpn_tunnel\nprotocol: x1\nentries: [203.0.113.1/24]\n",
     "l.yaml:4:11: '203.0.113.1/24' has host bits set; did you mean 203.0.113.0/24?"),
    ("provider: P\nklass: tunnel\nprotocol: x1\nentries: []\n",
     "l.yaml:2:8: klass must be one of vpn_tunnel, voip, proxy_obfuscated (got 'tunnel')"),
    ("provider: P\nklass: vpn_tunnel\nprotocol: Open-VPN\nentries: []\n",
     "l.yaml:3:11: protocol must match"),
    ("provider: P\nklass: vpn_tunnel\nprotocol: x1\nentry: []\n",
     "l.yaml:4:1: unknown key 'entry' in the endpoint list: did you mean 'entries'?"),
    ("klass: vpn_tunnel\nprotocol: x1\nentries: []\n", "l.yaml:1:1: the endpoint list needs provider:"),
    ("provider: P\nklass: vpn_tunnel\nprotocol: x1\nentries:\n  - {address: 203.0.113.1, ports: [0]}\n",
     "l.yaml:5:36: port must be between 1 and 65535 (got 0)"),
    ("provider: P\nklass: vpn_tunnel\nprotocol: x1\nentries:\n  - {address: 203.0.113.1, transport: sctp}\n",
     "l.yaml:5:39: transport must be one of any, tcp, udp (got 'sctp')"),
    ("provider: P\nklass: vpn_tunnel\nprotocol: x1\nentries:\n  - {ports: [1]}\n",
     "l.yaml:5:5: entry needs address: IP or CIDR"),
    ("provider: P\nklass: vpn_tunnel\nprotocol: x1\nentries: 203.0.113.0/24\n",
     "l.yaml:4:10: entries must be a list"),
    ("provider: P\n  klass: vpn_tunnel\n", "l.yaml:2:8: YAML syntax"),
    ("", "l.yaml:1:1: empty list file"),
])
def test_bad_yaml_lists_are_refused_with_a_located_message(text: str, expected: str) -> None:
    problems = _problems(text)
    assert any(p.startswith(expected) for p in problems), problems


def test_every_problem_of_a_list_is_reported_at_once() -> None:
    problems = _problems("provider: P\nklass: vpn\nprotocol: x1\nentries: [1.2.3, 203.0.113.1/24]\n")
    assert len(problems) == 3, problems


def test_text_list_good_and_bad_lines() -> None:
    src = ListSource(Path("tor.txt"), "text", "Tor", "proxy_obfuscated", "tor")
    lst = parse_text_list("# relays\n\n203.0.113.10\n  2001:db8::1  # v6\n203.0.113.64/28\n", src)
    assert (lst.name, lst.klass, lst.protocol, len(lst.entries)) == ("tor", "proxy_obfuscated", "tor", 3)
    with pytest.raises(ConfigError) as ei:
        parse_text_list("203.0.113.10\n\n  relay.example.net\n203.0.113.65/28\n", src)
    assert ei.value.problems == [
        "tor.txt:3:3: not an IP address or CIDR block: 'relay.example.net'",
        "tor.txt:4:1: not an IP address or CIDR block: '203.0.113.65/28'; did you mean 203.0.113.64/28?",
    ]


def test_a_file_that_is_not_a_list_stops_after_fifty_problems() -> None:
    src = ListSource(Path("x.txt"), "text", "P", "vpn_tunnel", "x1")
    with pytest.raises(ConfigError) as ei:
        parse_text_list("word\n" * 1000, src)
    assert len(ei.value.problems) == 51 and "stopping after 50 problems" in ei.value.problems[-1]


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml:1:1: cannot read"):
        load_list(ListSource(tmp_path / "missing.yaml"))
    bad = tmp_path / "bin.txt"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"bin\.txt:1:1: cannot read"):
        load_list(ListSource(bad, "text", "P", "vpn_tunnel", "x1"))


def test_shipped_examples_load_and_use_documentation_addresses_only() -> None:
    yml = load_list(ListSource(EXAMPLES / "example-vpn-provider.yaml"))
    txt = load_list(ListSource(EXAMPLES / "example-tor-relays.txt", "text", "Tor", "proxy_obfuscated", "tor"))
    doc = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
                                             "2001:db8::/32")]
    for e in (*yml.entries, *txt.entries):
        assert any(e.net.version == d.version and e.net.subnet_of(d) for d in doc), e.net  # type: ignore[arg-type]
    assert len(yml.entries) == 4 and len(txt.entries) == 4


# ---------------------------------------------------------------- lookup


def _index(text: str = GOOD) -> EndpointIndex:
    return EndpointIndex([parse_yaml_list(text, "lab.yaml")])


def test_lookup_longest_prefix_with_ports_and_transport() -> None:
    idx = _index()
    hit = idx.lookup(SERVER, 1194, UDP)
    assert hit is not None and hit[2] == "openvpn" and str(hit[4].net) == "203.0.113.2/32"
    # the /32 entry is UDP 1194 only: other ports and TCP fall back to the /24 (any port)
    for port, proto in ((1194, TCP), (443, UDP)):
        hit = idx.lookup(SERVER, port, proto)
        assert hit is not None and hit[2] == "vpn_provider" and str(hit[4].net) == "203.0.113.0/24"
    assert idx.lookup(bytes([203, 0, 114, 2]), 1194, UDP) is None
    assert idx.lookup(bytes([192, 0, 2, 1]), 1194, UDP) is None


def test_lookup_ipv6_ports_and_families_do_not_mix() -> None:
    idx = _index()
    v6 = ipaddress.ip_address("2001:db8:1:ffff::7").packed
    assert idx.lookup(v6, 443, TCP) is not None
    assert idx.lookup(v6, 443, UDP) is None  # transport: tcp
    assert idx.lookup(v6, 80, TCP) is None  # ports: [443]
    assert idx.lookup(ipaddress.ip_address("2001:db8:2::1").packed, 443, TCP) is None
    # an IPv4 address whose bits match a v6 prefix's first bytes is still v4
    assert idx.lookup(bytes([0x20, 0x01, 0x0d, 0xb8]), 443, TCP) is None
    assert idx.lookup(b"\x01\x02", 443, TCP) is None  # malformed address length: no match, no error


def test_lookup_speed_with_100k_entries() -> None:
    rnd = random.Random(6)
    entries = [Entry(ipaddress.ip_network((rnd.getrandbits(32), 32))) for _ in range(60_000)]
    entries += [Entry(ipaddress.ip_network((rnd.getrandbits(24) << 8, 24))) for _ in range(20_000)]
    entries += [Entry(ipaddress.ip_network((rnd.getrandbits(64) << 64, 64)), frozenset({443}), TCP)
                for _ in range(20_000)]
    idx = EndpointIndex([EndpointList("big", "P", "vpn_tunnel", "x1", tuple(entries))])
    assert idx.count == 100_000
    listed = [int(e.net.network_address).to_bytes(e.net.max_prefixlen // 8, "big") for e in entries[::97]]
    probes = [rnd.getrandbits(32).to_bytes(4, "big") for _ in range(20_000)] + listed
    t0 = time.perf_counter()
    hits = sum(idx.lookup(a, 443, TCP) is not None for a in probes)
    rate = len(probes) / (time.perf_counter() - t0)
    print(f"endpoint lookups: {rate:,.0f}/s over {idx.count} entries (v4 and v6, mixed hits/misses)")
    assert hits >= len(listed)
    assert rate > 20_000  # generous: a shared 2-core CI box; typically several hundred thousand per second


# ---------------------------------------------------------------- engine fallback


class Says(Classifier):
    """A classifier that says whatever the test sets on the class."""

    name: ClassVar[str] = "says"
    klass: ClassVar[Klass] = "vpn_tunnel"
    transports: ClassVar[frozenset[int]] = frozenset({UDP, TCP})
    protocols: ClassVar[tuple[str, ...]] = ("said", "tls")
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 1194): "said", (UDP, 5000): "said"}
    answer: ClassVar[tuple[str, str, str] | None] = None

    def inspect(self, flow: Flow, pkt: Packet, direction: int, ctx: Context) -> InspectResult:
        """Answer once per flow."""
        if self.answer is None:
            return None
        klass, protocol, confidence = self.answer
        return Verdict(klass, protocol, confidence, ("said so",))  # type: ignore[arg-type]


def _decide(answer: tuple[str, str, str] | None, dst: bytes = SERVER, dport: int = 1194,
            lists: bool = True) -> Verdict:
    cls = type("S", (Says,), {"answer": answer})
    out: list[Verdict] = []
    eng = Engine([cls()], budget=4, on_end=lambda f, v: out.append(v),
                 endpoints=_index() if lists else None)
    for i in range(4):
        eng.process(Packet(1000.0 + i, 4, CLIENT, dst, UDP, 40000, dport, 60, b"\x01" * 32))
    eng.flush()
    assert len(out) == 1
    return out[0]


def test_confirmed_and_heuristic_flagged_verdicts_beat_the_list() -> None:
    for conf in ("confirmed", "heuristic"):
        v = _decide(("vpn_tunnel", "said", conf))
        assert (v.protocol, v.confidence) == ("said", conf)


def test_list_beats_port_hint_and_unknown() -> None:
    v = _decide(None)
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "openvpn", "list")
    assert v.evidence == ("203.0.113.2 is on endpoint list lab-vpn (LabVPN), entry 203.0.113.2/32",)
    # not listed: the port hint as before
    v = _decide(None, dst=bytes([192, 0, 2, 9]))
    assert (v.protocol, v.confidence) == ("said", "port")
    # no lists at all: unchanged behaviour
    v = _decide(None, lists=False)
    assert (v.protocol, v.confidence) == ("said", "port")


def test_list_flags_a_benign_looking_flow_to_a_listed_server() -> None:
    # e.g. a Tor relay's ORPort looks like TLS: the list still says what the address is
    v = _decide(("benign", "tls", "confirmed"), dport=9001)
    assert (v.klass, v.protocol, v.confidence) == ("vpn_tunnel", "vpn_provider", "list")
    v = _decide(("benign", "tls", "confirmed"), dst=bytes([192, 0, 2, 9]), dport=9001)
    assert (v.klass, v.confidence) == ("benign", "confirmed")


def test_icmp_to_a_listed_server_is_not_a_list_verdict() -> None:
    out: list[Verdict] = []
    eng = Engine([Says()], budget=2, on_end=lambda f, v: out.append(v), endpoints=_index())
    eng.process(Packet(1000.0, 4, CLIENT, SERVER, ICMP, 0, 0, 84, b"\x08\x00" + b"\x00" * 62))
    eng.flush()
    assert out[0].confidence != "list"


def test_reply_side_listed_address_matches_too() -> None:
    # a capture that starts with the server's packet: the listed address is the flow's "src"
    out: list[Verdict] = []
    eng = Engine([Says()], budget=2, on_end=lambda f, v: out.append(v), endpoints=_index())
    for i in range(2):
        eng.process(Packet(1000.0 + i, 4, OTHER, CLIENT, UDP, 7000, 40000, 60, b"\x01" * 8))
    eng.flush()
    assert out[0].confidence == "list" and "203.0.113.99 is on endpoint list" in out[0].evidence[0]


# ---------------------------------------------------------------- config section and live reload


def _cfg(tmp: Path, body: str) -> EndpointsConfig:
    return parse_config(f"endpoints:\n{body}", str(tmp / "tunnelwatch.yaml")).endpoints


def test_config_section_paths_formats_and_labels(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "  lists:\n    - lists/a.yaml\n"
                         "    - {path: tor.txt, provider: Tor, klass: proxy_obfuscated, protocol: tor}\n"
                         "  watch: 5\n")
    assert cfg.watch == 5
    assert cfg.lists[0] == ListSource(tmp_path / "lists/a.yaml", "yaml")
    assert cfg.lists[1] == ListSource(tmp_path / "tor.txt", "text", "Tor", "proxy_obfuscated", "tor")
    assert parse_config("log: {level: info}\n").endpoints == EndpointsConfig()


@pytest.mark.parametrize(("body", "expected"), [
    ("  lists:\n    - {path: tor.txt, provider: Tor}\n", "needs klass: in the config"),
    ("  lists:\n    - {path: a.yaml, klass: voip}\n", "klass of a YAML list is set inside the list file"),
    ("  lists:\n    - {path: t.txt, provider: T, klass: tunnel, protocol: tor}\n", "klass must be one of"),
    ("  lists:\n    - {path: t.txt, provider: T, klass: voip, protocol: Tor!}\n", "protocol must match"),
    ("  lists:\n    - {provider: T}\n", "needs path: FILE"),
    ("  lists:\n    - a.yaml\n    - a.yaml\n", "is listed twice"),
    ("  lists: a.yaml\n", "endpoints.lists must be a list"),
    ("  watch: -1\n", "endpoints.watch must be between 0 and 86400"),
    ("  list: []\n", "did you mean 'lists'?"),
])
def test_config_section_problems(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(ConfigError) as ei:
        _cfg(tmp_path, body)
    assert any(expected in p and "tunnelwatch.yaml:" in p for p in ei.value.problems), ei.value.problems


def _write(p: Path, text: str) -> None:
    p.write_text(text)
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a visibly newer mtime


def test_live_lists_reload_keeps_the_last_good_version(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    f = tmp_path / "lab.yaml"
    f.write_text(GOOD)
    live = Endpoints(EndpointsConfig((ListSource(f),)), strict=True)
    assert live.index.count == 3 and live.check() is False  # unchanged file: nothing re-read
    _write(f, GOOD + "  - 203.0.113.300\n")
    assert live.check() is True
    assert live.index.count == 3 and live.index.lookup(SERVER, 1, TCP) is not None  # the last good list
    assert any("lab.yaml:9:5: not an IP address" in r.message for r in caplog.records)
    assert any("keeping the last good list (3 entries)" in r.message for r in caplog.records)
    _write(f, GOOD.replace("203.0.113.0/24", "192.0.2.0/24"))
    assert live.reload() == []  # SIGHUP path
    assert live.index.lookup(OTHER, 1, TCP) is None and live.index.lookup(bytes([192, 0, 2, 1]), 1, TCP)


def test_strict_start_refuses_a_bad_list_and_reload_drops_removed_lists(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("nonsense\n")
    src = ListSource(bad, "text", "P", "vpn_tunnel", "x1")
    with pytest.raises(ConfigError, match=r"bad\.txt:1:1"):
        Endpoints(EndpointsConfig((src,)), strict=True)
    lenient = Endpoints(EndpointsConfig((src,)))  # a worker process: logs, runs without that list
    assert lenient.index.count == 0
    good = tmp_path / "lab.yaml"
    good.write_text(GOOD)
    lenient.reload(EndpointsConfig((ListSource(good),)))
    assert lenient.index.count == 3 and list(lenient.lists) == [good]


def test_cli_classify_accepts_endpoint_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("provider: P\nklass: vpn_tunnel\nprotocol: x1\nentries: [nonsense]\n")
    assert main(["classify", "--endpoints", str(bad), str(tmp_path / "none.pcap")]) == 78
    assert f"{bad}:4:11: not an IP address" in capsys.readouterr().err
    assert main(["classify", "--endpoints", str(tmp_path / "list.txt"), "x.pcap"]) == 78
    assert "takes YAML lists" in capsys.readouterr().err


def test_enforcer_uses_reloads_and_watches_the_lists(tmp_path: Path) -> None:
    from tunnelwatch.inline.enforcer import Enforcer
    from tunnelwatch.policy.registry import Registry

    f = tmp_path / "lab.yaml"
    f.write_text(GOOD)
    text = "endpoints: {lists: [lab.yaml], watch: 1}\n"
    cfg = parse_config(text, str(tmp_path / "tunnelwatch.yaml"))
    enf = Enforcer(cfg, Registry())
    assert enf.engine.endpoints is not None and enf.engine.endpoints.count == 3
    _write(f, GOOD.replace("203.0.113.0/24", "192.0.2.0/24"))
    enf.apply(cfg, Registry())  # the running config handed back (a registry change): lists not re-read
    assert enf.engine.endpoints.lookup(OTHER, 1, TCP) is not None
    enf.next_watch = 0.0  # the watch period is over
    enf.tick()
    assert enf.engine.endpoints.lookup(OTHER, 1, TCP) is None
    _write(f, GOOD)
    enf.apply(parse_config(text, str(tmp_path / "tunnelwatch.yaml")), Registry())  # SIGHUP: a new object
    assert enf.engine.endpoints.lookup(OTHER, 1, TCP) is not None
    enf.apply(parse_config("log: {level: info}\n"), Registry())  # lists removed from the config
    assert enf.engine.endpoints is None


# ---------------------------------------------------------------- domain entries

DOMAINS = """provider: Apps
klass: vpn_tunnel
protocol: vpn_app
entries:
  - {domain: "*.vpn.example", provider: ExampleVPN, source: "https://example.org/list"}
  - {domain: api.other.example, klass: proxy_obfuscated, protocol: other_proxy, ports: [443], transport: tcp}
"""


def test_domain_entries_parse_with_their_labels() -> None:
    lst = parse_yaml_list(DOMAINS, "apps.yaml")
    a, b = lst.entries
    assert (a.net, a.domain, a.wildcard, a.provider) == (None, "vpn.example", True, "ExampleVPN")
    assert (b.domain, b.wildcard, b.klass, b.protocol, b.ports, b.transport) == (
        "api.other.example", False, "proxy_obfuscated", "other_proxy", frozenset({443}), TCP)


@pytest.mark.parametrize(("entry", "expected"), [
    ('{domain: "vpn.*.example"}', "l.yaml:5:14: domain 'vpn.*.example': a wildcard may only be a leading"),
    ("{domain: com}", "l.yaml:5:14: domain 'com': 'com' is a top-level domain alone"),
    ("{domain: -bad.example}", "l.yaml:5:14: domain '-bad.example': label '-bad' is not a valid DNS label"),
    ("{domain: 192.0.2.1}", "l.yaml:5:14: domain '192.0.2.1': an IP address is an `address:` entry"),
    ("{domain: a.example, address: 192.0.2.1}", "l.yaml:5:5: entry needs address: IP or CIDR, or domain"),
    ("{domain: a.example, klass: benign}", "l.yaml:5:32: entry klass must be one of"),
    ("{domain: a.example, colour: red}", "l.yaml:5:25: unknown key 'colour'"),
])
def test_bad_domain_entries_are_located(entry: str, expected: str) -> None:
    problems = _problems(f"provider: P\nklass: vpn_tunnel\nprotocol: x1\nentries:\n  - {entry}\n")
    assert any(p.startswith(expected) for p in problems), problems


def test_domain_index_matches_names_most_specific_first() -> None:
    idx = EndpointIndex([parse_yaml_list(DOMAINS + '  - {domain: "*.eu.vpn.example", provider: EU}\n',
                                         "apps.yaml")])
    got = [(p, t[5]) for p, t in idx.domains.candidates("a.eu.vpn.example")]
    assert got == [("*.eu.vpn.example", "EU"), ("*.vpn.example", "ExampleVPN")]
    assert [p for p, _ in idx.domains.candidates("vpn.example")] == ["*.vpn.example"]  # the apex too
    assert list(idx.domains.candidates("vpn.example.evil")) == []
    assert list(idx.domains.candidates("xvpn.example")) == []


def test_shipped_vpn_app_catalogue_is_sourced_and_off_by_default() -> None:
    import yaml

    path = EXAMPLES / "vpn-apps.yaml"
    lst = load_list(ListSource(path))
    providers = {e.provider for e in lst.entries}
    assert len(providers) >= 30 and all((e.domain or e.organisation) and e.net is None for e in lst.entries)
    raw = yaml.safe_load(path.read_text())
    assert all(str(e.get("source", "")).strip() for e in raw["entries"]), "every entry names its source"
    shared = {"opera.com", "proton.me", "cloudflare.com", "google.com", "apple.com", "microsoft.com"}
    assert not shared & {e.domain for e in lst.entries}, "shared platforms must not be listed"
    cfg = parse_config((EXAMPLES.parent / "tunnelwatch.yaml").read_text(), "tunnelwatch.yaml")
    assert cfg.endpoints.lists == ()  # off by default, like every list


def test_organisation_entries() -> None:
    lst = parse_yaml_list("provider: P\nklass: vpn_tunnel\nprotocol: x1\nentries:\n"
                          "  - {organisation: Windscribe, provider: W}\n", "l.yaml")
    assert lst.entries[0].organisation == "Windscribe" and lst.entries[0].net is None
    problems = _problems("provider: P\nklass: vpn_tunnel\nprotocol: x1\nentries:\n  - {organisation: ''}\n")
    assert problems == ["l.yaml:5:20: organisation must be a non-empty string (got '')"], problems
    head = "provider: P\nklass: vpn_tunnel\nprotocol: x1\nentries:\n"
    problems = _problems(head + "  - {organisation: " + "x" * 200 + "}\n")
    assert any(p.startswith("l.yaml:5:20: organisation must be 1-128 characters") for p in problems), problems
