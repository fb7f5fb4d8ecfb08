"""mDNS discovery across namespaces: the router advertises on lan0 only; the client (LAN side) finds it,
the server (WAN side) does not, neither by multicast browsing nor by a unicast query to the router."""

from __future__ import annotations

import json
import random
import signal
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from support.netns import ROUTER_LAN_IP, ROUTER_WAN_IP, Lab, lab, require_tools

pytestmark = pytest.mark.integration

DEVICE = "cpe-test-1"
ADVERTISE = """
import logging, signal, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
from tunnelwatch.appliance.discovery import Advertiser
adv = Advertiser(interfaces=[sys.argv[1]], port=8443, device_id=sys.argv[2],
                 properties={"version": "0.1.0", "status": "/"})
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
adv.start()
assert adv.ready.wait(20)
print("advertising", flush=True)
while signal.sigwait({signal.SIGUSR1, signal.SIGTERM}) == signal.SIGUSR1:
    adv.update({"version": "0.1.1", "status": "/"})
    print("updated", flush=True)
adv.stop()
print("stopped", flush=True)
"""
DISCOVER = ("import argparse, sys; from tunnelwatch.appliance.discovery import cli_discover; "
            "sys.exit(cli_discover(argparse.Namespace(timeout=float(sys.argv[1]), json=True)))")
# A legacy unicast DNS-SD query (RFC 6762 s6.7: source port != 5353 asks for a direct answer).
UNICAST_QUERY = """
import socket, struct, sys
target, qid = sys.argv[1], int(sys.argv[2])
name = b"".join(bytes([len(p)]) + p for p in b"_tunnelwatch._tcp.local".split(b".")) + b"\\0"
query = struct.pack("!6H", qid, 0, 1, 0, 0, 0) + name + struct.pack("!2H", 12, 1)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.settimeout(2.0)
    s.connect((target, 5353))
    s.send(query)
    try:
        data = s.recv(9000)
    except (TimeoutError, ConnectionRefusedError):
        print("no answer"); sys.exit(1)
print("answer id=%d answers=%d" % (struct.unpack("!H", data[:2])[0], struct.unpack("!H", data[6:8])[0]))
"""


def _discover(lb: Lab, ns: str, timeout: float) -> tuple[int, list[dict[str, object]]]:
    r = lb.run(ns, sys.executable, "-c", DISCOVER, str(timeout), check=False, timeout=timeout + 20)
    assert r.returncode in (0, 1), r.stderr
    boxes = json.loads(r.stdout)
    assert isinstance(boxes, list)
    return r.returncode, boxes


def _discover_until(lb: Lab, ns: str, pred: Callable[[list[dict[str, object]]], bool],
                    attempts: int = 5) -> list[dict[str, object]]:
    """Browse until `pred` holds (bounded): one 2 s window can miss a reply on a loaded 2-core machine."""
    boxes: list[dict[str, object]] = []
    for _ in range(attempts):
        _, boxes = _discover(lb, ns, 2.0)
        if pred(boxes):
            return boxes
    raise AssertionError(f"{attempts} browse windows from {ns} never saw what was expected: {boxes}")


def _unicast(lb: Lab, ns: str, target: str) -> str:
    r = lb.run(ns, sys.executable, "-c", UNICAST_QUERY, target, str(random.randrange(1, 65535)),
               check=False, timeout=20)
    assert r.returncode in (0, 1), r.stderr
    return r.stdout.strip()


def test_box_is_discovered_on_lan_and_invisible_from_wan(tmp_path: Path) -> None:
    require_tools("ip")
    with lab(tmp_path) as lb:
        adv = lb.spawn(lb.router, [sys.executable, "-c", ADVERTISE, "lan0", DEVICE], "advertiser")
        lb.wait_for_log("advertiser", "advertising")
        assert "on lan0" in lb.log("advertiser")

        boxes = _discover_until(lb, lb.client, lambda bs: len(bs) >= 1)
        assert len(boxes) == 1, boxes
        box = boxes[0]
        assert box["name"] == DEVICE and box["port"] == 8443
        assert box["properties"] == {"txtvers": "1", "id": DEVICE, "version": "0.1.0", "status": "/"}
        addresses = box["addresses"]
        assert isinstance(addresses, list) and ROUTER_LAN_IP in addresses
        assert ROUTER_WAN_IP not in addresses and not any(a.startswith("2001:db8:2:") for a in addresses)

        # WAN side: nothing by multicast browsing (longer window than the one that found it on the LAN) ...
        rc, boxes = _discover(lb, lb.server, 3.0)
        assert (rc, boxes) == (1, [])
        # ... nor by a unicast query to either router address, while the same query from the LAN is answered
        assert _unicast(lb, lb.client, ROUTER_LAN_IP).startswith("answer"), "positive control"
        assert _unicast(lb, lb.server, ROUTER_WAN_IP) == "no answer"
        assert _unicast(lb, lb.server, ROUTER_LAN_IP) == "no answer"

        # update() re-announces the new TXT record
        # `ip netns exec` execs python, so the spawned pid is the advertiser itself
        adv.send_signal(signal.SIGUSR1)
        lb.wait_for_log("advertiser", "updated")
        _discover_until(lb, lb.client,
                        lambda bs: [b["properties"]["version"] for b in bs] == ["0.1.1"])  # type: ignore[index]

        # control: the WAN-side browse does work; a second advertiser told to use wan0 is seen there only
        lb.spawn(lb.router, [sys.executable, "-c", ADVERTISE, "wan0", "wan-control"], "control")
        lb.wait_for_log("control", "advertising")
        boxes = _discover_until(lb, lb.server, lambda bs: len(bs) >= 1)
        assert [b["name"] for b in boxes] == ["wan-control"]
        assert [b["name"] for b in _discover_until(lb, lb.client, lambda bs: len(bs) >= 1)] == [DEVICE]

        lb.stop("advertiser", signal.SIGTERM)
        assert "stopped" in lb.log("advertiser")


def test_query_wire_format_is_well_formed() -> None:
    """The hand-built query above must be a valid one-question DNS message (guards the negative tests)."""
    name = b"".join(bytes([len(p)]) + p for p in b"_tunnelwatch._tcp.local".split(b".")) + b"\0"
    query = struct.pack("!6H", 7, 0, 1, 0, 0, 0) + name + struct.pack("!2H", 12, 1)
    from zeroconf import DNSIncoming

    msg = DNSIncoming(query)
    assert msg.valid and msg.is_query()
    assert [q.name for q in msg.questions] == ["_tunnelwatch._tcp.local."]
