"""Discovery pieces that need no network: names, TXT limits, interface addresses, result conversion of
hostile records and the `discover` table. The LAN/WAN behaviour is in
tests/integration/test_discovery_netns.py."""

from __future__ import annotations

import argparse
import json
import logging

import pytest
from zeroconf import ServiceInfo

from tunnelwatch.appliance import discovery
from tunnelwatch.appliance.discovery import (
    SERVICE_TYPE,
    Advertiser,
    _box,
    cli_discover,
    instance_name,
    interface_addresses,
)


def test_instance_name_drops_dots_and_fits_a_label() -> None:
    assert instance_name("cpe.42.example") == "cpe-42-example"
    assert instance_name("") == "tunnelwatch"
    long = instance_name("é" * 100)
    assert len(long.encode()) <= 63 and long == "é" * 31


def test_host_name_is_a_valid_hostname() -> None:
    assert discovery._host_name("CPE 42/Lahore") == "tunnelwatch-cpe-42-lahore.local."
    assert discovery._host_name("!!!") == "tunnelwatch-box.local."


def test_txt_has_id_and_rejects_oversized_entries() -> None:
    adv = Advertiser(interfaces=[], port=1, device_id="d1", properties={"version": "0.1.0"})
    assert adv.properties == {"txtvers": "1", "id": "d1", "version": "0.1.0"}
    with pytest.raises(ValueError):
        Advertiser(interfaces=[], port=1, device_id="d1", properties={"path": "x" * 300})


def test_interface_addresses_of_loopback_and_of_a_missing_interface() -> None:
    v4, _ = interface_addresses("lo")
    assert "127.0.0.1" in v4
    assert interface_addresses("tw-no-such-if0") == ([], None)
    assert "127.0.0.1" in discovery.lan_addresses("lo") and "::1" not in discovery.lan_addresses("lo")


def test_advertiser_skips_an_interface_without_addresses(caplog: pytest.LogCaptureFixture) -> None:
    adv = Advertiser(interfaces=["tw-no-such-if0"], port=8443, device_id="d1", properties={})
    with caplog.at_level(logging.WARNING, logger="tunnelwatch.appliance.discovery"):
        adv.start()
        assert adv.ready.wait(10)
    assert "tw-no-such-if0 has no address" in caplog.text
    adv.update({"mode": "monitor"})  # nothing registered: a no-op, not an error
    adv.stop()


def _hostile_info() -> ServiceInfo:
    return ServiceInfo(SERVICE_TYPE, f"evil\x85[2J.{SERVICE_TYPE}", port=1,
                       properties={b"id": b"\xff\xfe\x1b]0;owned\x07", b"mode": None, b"version": b"1"},
                       server="evil.local.", parsed_addresses=["192.0.2.9"])


def test_box_from_hostile_record_is_decoded_without_raising() -> None:
    box = _box(_hostile_info())
    assert box["name"] == "evil\x85[2J" and box["addresses"] == ["192.0.2.9"]
    props = box["properties"]
    assert isinstance(props, dict) and props["mode"] == "" and props["version"] == "1"
    json.dumps(box)


def test_cli_discover_table_is_terminal_safe(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(discovery, "browse", lambda timeout: [_box(_hostile_info())])
    assert cli_discover(argparse.Namespace(timeout=1.0, json=False)) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\x85" not in out
    header, row = out.splitlines()
    assert header.split() == ["NAME", "ID", "ADDRESSES", "PORT", "VERSION", "URL"]
    assert "192.0.2.9" in row and "http://192.0.2.9:1/" in row


def test_cli_discover_nothing_found(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(discovery, "browse", lambda timeout: [])
    assert cli_discover(argparse.Namespace(timeout=1.0, json=True)) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [] and "no boxes answered" in captured.err


def test_zeroconf_expected_address_warning_is_not_shown_others_are(caplog: pytest.LogCaptureFixture) -> None:
    zc = logging.getLogger("zeroconf")
    with caplog.at_level(logging.WARNING):
        zc.warning("Address not available when adding 192.0.2.1 to multicast group, "
                   "it is expected to happen on some systems")
        zc.warning("Error with socket 7: something real")
    texts = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert texts == ["Error with socket 7: something real"]


def test_the_instance_is_named_after_the_box_and_the_id_is_in_txt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery.socket, "gethostname", lambda: "router-7.example.net")
    assert discovery.box_name() == "router-7"
    adv = Advertiser(interfaces=["lo"], port=8787, device_id="tw-0123abcd", properties={},
                     name=discovery.box_name())
    info = adv._info("lo")
    assert info is not None and info.name == f"router-7.{SERVICE_TYPE}"
    assert info.properties[b"id"] == b"tw-0123abcd"
    for nameless in ("localhost", "", "localhost.localdomain"):
        monkeypatch.setattr(discovery.socket, "gethostname", lambda n=nameless: n)
        assert discovery.box_name() == ""
    fallback = Advertiser(interfaces=["lo"], port=1, device_id="tw-0123abcd", properties={}, name="")
    assert fallback.name == "tw-0123abcd"


def test_cli_discover_shows_name_id_and_the_page_url(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    boxes = [_box(ServiceInfo(SERVICE_TYPE, f"router-7.{SERVICE_TYPE}", port=8787,
                              properties={b"id": b"tw-0123abcd", b"version": b"0.2.0", b"path": b"/"},
                              server="tunnelwatch-tw-0123abcd.local.", parsed_addresses=["192.168.1.1"])),
             _box(ServiceInfo(SERVICE_TYPE, f"v6only.{SERVICE_TYPE}", port=8787,
                              properties={b"id": b"tw-v6"}, server="x.local.",
                              parsed_addresses=["fd00::1"]))]
    monkeypatch.setattr(discovery, "browse", lambda timeout: boxes)
    assert cli_discover(argparse.Namespace(timeout=1.0, json=False)) == 0
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "ID", "ADDRESSES", "PORT", "VERSION", "URL"]
    assert first.split() == ["router-7", "tw-0123abcd", "192.168.1.1", "8787", "0.2.0", "http://192.168.1.1:8787/"]
    assert second.split()[:2] == ["v6only", "tw-v6"] and second.endswith("http://[fd00::1]:8787/")
    assert discovery._urlhost(["fe80::1%eth0"]) == "[fe80::1%25eth0]"
