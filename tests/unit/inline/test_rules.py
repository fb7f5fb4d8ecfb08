"""The installed rule set: only registrations valid now become queue bypasses, and a reload or refresh
re-installs the rules only when what would be installed changed."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging

import pytest

from tunnelwatch.config.runconfig import RunConfig, parse_config
from tunnelwatch.inline import firewall, rules
from tunnelwatch.inline.rules import Rules, firewall_spec, log_ready
from tunnelwatch.policy.registry import Entry, Registry, Server

NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _entry(id_: str, server: str, *, ports: tuple[int, ...] = (), lan: tuple[str, ...] = (),
           valid_from: dt.datetime | None = None, valid_until: dt.datetime | None = None) -> Entry:
    return Entry(id=id_, customer="acme", protocols=("wireguard",),
                 servers=(Server(ipaddress.ip_network(server), ports),),
                 lan_hosts=tuple(ipaddress.ip_network(h) for h in lan),
                 valid_from=valid_from, valid_until=valid_until)


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> list[firewall.Spec]:
    specs: list[firewall.Spec] = []
    monkeypatch.setattr(firewall, "install", specs.append)
    monkeypatch.setattr(firewall, "choose_backend", lambda wanted: ("iptables", "test"))
    return specs


def test_only_registrations_valid_now_become_bypasses() -> None:
    reg = Registry([
        _entry("now", "198.51.100.0/24", ports=(51820,), lan=("192.168.1.10/32",)),
        _entry("ended", "203.0.113.1/32", valid_until=NOW - DAY),
        _entry("later", "203.0.113.2/32", valid_from=NOW + DAY),
        _entry("window", "2001:db8::/64", valid_from=NOW - DAY, valid_until=NOW + DAY),
    ])
    spec = firewall_spec(RunConfig(), reg, NOW, backend="nftables")
    assert spec.bypass == (
        firewall.Bypass("198.51.100.0/24", (51820,), ("192.168.1.10/32",)),
        firewall.Bypass("2001:db8::/64", (), ()),
    )
    assert spec.backend == "nftables"
    assert firewall_spec(RunConfig(), reg, NOW + 2 * DAY).bypass == (
        firewall.Bypass("198.51.100.0/24", (51820,), ("192.168.1.10/32",)),
        firewall.Bypass("203.0.113.2/32", (), ()))


def test_the_spec_follows_the_config() -> None:
    cfg = parse_config("queue: {num: 4, count: 2, packets: 12}\n")
    spec = firewall_spec(cfg, Registry(), NOW)
    assert (spec.queue_num, spec.queue_count, spec.packets, spec.bypass) == (4, 2, 12, ())


def test_apply_reinstalls_only_on_change(installed: list[firewall.Spec]) -> None:
    cfg = RunConfig()
    reg = Registry()
    r = Rules(cfg, reg)
    r.install()
    assert installed == [r.spec]
    r.apply(cfg, Registry())  # same rules: nothing is run
    r.refresh()
    assert len(installed) == 1
    grown = Registry([_entry("a", "198.51.100.7/32")])
    r.apply(cfg, grown)
    assert len(installed) == 2 and installed[-1].bypass == (firewall.Bypass("198.51.100.7/32"),)
    assert r.spec is installed[-1] and r.registry is grown
    r.refresh()
    assert len(installed) == 2
    grown.entries.append(_entry("b", "198.51.100.8/32"))  # a registration starts (reloaded in place)
    r.refresh()
    assert len(installed) == 3 and len(installed[-1].bypass) == 2
    r.apply(parse_config("queue: {packets: 12}\n"), grown)
    assert len(installed) == 4 and installed[-1].packets == 12


def test_a_failed_install_keeps_the_old_spec(installed: list[firewall.Spec],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    r = Rules(RunConfig(), Registry())
    old = r.spec

    def boom(spec: firewall.Spec) -> None:
        raise firewall.FirewallError("iptables-restore: exit 1")

    monkeypatch.setattr(firewall, "install", boom)
    with pytest.raises(firewall.FirewallError):
        r.apply(RunConfig(), Registry([_entry("a", "198.51.100.7/32")]))
    assert r.spec is old  # the next refresh tries again


@pytest.mark.parametrize(("extra", "flags", "want"), [
    ("queue: {count: 1}\n", [True, True], "queue 0, first 16 packets per connection, hooks forward, ipv6 on, "
                       "0 registered endpoints bypass the queue, kernel fail-open on"),
    ("queue: {num: 3, count: 2}\n", [True, False], "queues 3-4, "),
    ("", [True, None], "kernel fail-open unconfirmed"),
    ("", [True, False], "kernel fail-open FAILED"),
    ("queue: {fail_closed: true}\n", [False], "kernel fail-open off (fail_closed)"),
])
def test_the_ready_line(caplog: pytest.LogCaptureFixture, extra: str, flags: list[bool | None],
                        want: str) -> None:
    cfg = parse_config("log: {level: info}\n" + extra)
    with caplog.at_level(logging.INFO, rules.log.name):
        log_ready(cfg, firewall_spec(cfg, Registry(), NOW), flags)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ready: ")]
    assert want in line
