"""The shipped voice-app catalogue, config/endpoints/voice-apps.yaml: it loads with the real loader, stays
narrow (no CDN or cloud-wide entry, no huge block), cites a public source for every entry, and matches the
services it names (and not their near misses)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from tunnelwatch.classify.endpoints import EndpointIndex, EndpointList, ListSource, load_list
from tunnelwatch.classify.packet import TCP, UDP

CATALOGUE = Path(__file__).resolve().parents[3] / "config" / "endpoints" / "voice-apps.yaml"
# CDN and cloud host names: every customer's content comes from them, so no entry may sit at or below one
CDN = ("cloudfront.net", "akamaiedge.net", "akamai.net", "akamaihd.net", "edgekey.net",
       "googleusercontent.com", "amazonaws.com", "azureedge.net", "fastly.net", "fbcdn.net")
# platforms with many services: a service's own name below one is fine, the whole platform is not
PLATFORM = ("google.com", "googleapis.com", "gstatic.com", "apple.com", "icloud.com", "facebook.com",
            "microsoft.com", "live.com", "office.com", "cloudflare.com")


@pytest.fixture(scope="module")
def catalogue() -> EndpointList:
    """The catalogue as the daemon loads it (raises ConfigError with every located problem)."""
    return load_list(ListSource(CATALOGUE))


@pytest.fixture(scope="module")
def raw_entries() -> list[dict[str, Any]]:
    """The entries as written (the loader keeps no `source:`, which is for people)."""
    doc = yaml.safe_load(CATALOGUE.read_text())
    entries = doc["entries"]
    assert isinstance(entries, list)
    return entries


def test_loads_without_problems_and_covers_the_services(catalogue: EndpointList) -> None:
    assert catalogue.name == "voice-apps" and catalogue.klass == "voip"
    providers = {e.provider for e in catalogue.entries}
    assert len(providers) >= 12, providers
    for p in ("Webex", "Zoom", "Microsoft Teams", "Discord", "Telegram", "WhatsApp", "Viber", "LINE",
              "imo", "Snapchat", "Signal", "Mumble", "TeamSpeak", "Google Meet"):
        assert p in providers, p
    assert all(e.protocol for e in catalogue.entries), "every entry names its app's protocol"


def test_every_entry_is_voip_with_a_public_source(raw_entries: list[dict[str, Any]]) -> None:
    for e in raw_entries:
        assert isinstance(e, dict), e
        assert e.get("klass", "voip") == "voip", e
        assert "https://" in str(e.get("source", "")), f"no source URL: {e}"


def test_no_block_is_broader_than_a_slash_12(catalogue: EndpointList) -> None:
    nets = [e.net for e in catalogue.entries if e.net is not None]
    assert len(nets) >= 50
    for n in nets:
        assert n.prefixlen >= (12 if n.version == 4 else 32), n
        assert n.is_global, n


def test_no_cdn_or_platform_wide_domain(catalogue: EndpointList) -> None:
    """Nothing at or below a CDN's names; on a many-service platform only a service's own names
    (meet.google.com, *.teams.microsoft.com), never the platform itself."""
    named = [e for e in catalogue.entries if e.domain]
    assert len(named) >= 25
    for e in named:
        assert not any(e.domain == c or e.domain.endswith("." + c) for c in CDN), e.domain
        assert e.domain not in PLATFORM, e.domain


def _index(catalogue: EndpointList) -> EndpointIndex:
    return EndpointIndex([catalogue])


@pytest.mark.parametrize(("name", "protocol"), [
    ("radcom.webex.com", "webex"), ("us04web.zoom.us", "zoom"), ("teams.microsoft.com", "teams_call"),
    ("rotterdam1234.discord.media", "discord"), ("g.whatsapp.net", "whatsapp_call"),
    ("publist.mumble.info", "mumble"), ("sfu.voip.signal.org", "signal_call"),
    ("meet.google.com", "google_meet"),
])
def test_service_names_match(catalogue: EndpointList, name: str, protocol: str) -> None:
    hits = list(_index(catalogue).domains.candidates(name))
    assert hits and hits[0][1][2] == protocol, (name, hits)


@pytest.mark.parametrize("name", [
    "webex.com.example.net", "notwebex.com", "www.google.com", "chat.signal.org", "mail.google.com",
    "d1234.cloudfront.net",
])
def test_near_miss_names_do_not_match(catalogue: EndpointList, name: str) -> None:
    assert list(_index(catalogue).domains.candidates(name)) == []


@pytest.mark.parametrize(("addr", "proto", "port", "protocol"), [
    ("62.109.229.158", UDP, 9000, "webex"), ("64.68.105.103", TCP, 443, "webex"),
    ("170.114.10.10", UDP, 8801, "zoom"), ("52.114.77.33", UDP, 3478, "teams_call"),
    ("149.154.167.91", TCP, 443, "telegram_call"), ("2001:67c:4e8::1", TCP, 443, "telegram_call"),
])
def test_published_blocks_match(catalogue: EndpointList, addr: str, proto: int, port: int,
                                protocol: str) -> None:
    t = _index(catalogue).lookup(ipaddress.ip_address(addr).packed, port, proto)
    assert t is not None and t[2] == protocol, (addr, t)


@pytest.mark.parametrize("addr", ["23.44.253.243", "18.184.138.142", "13.35.253.42", "8.8.8.8"])
def test_cdn_and_cloud_addresses_do_not_match(catalogue: EndpointList, addr: str) -> None:
    """An Akamai edge serving www.webex.com, an Amazon host, a CloudFront edge, Google's resolver."""
    assert _index(catalogue).lookup(ipaddress.ip_address(addr).packed, 443, TCP) is None
