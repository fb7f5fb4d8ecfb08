"""Shared set-up of the multi-queue lab tests: a daemon with two queue workers that keeps its events in the
spool, and the extra client/server addresses that put traffic on both workers."""

from __future__ import annotations

from pathlib import Path

from support.netns import Lab

#: two client addresses: the initiator address's low bit picks the queue, so one host per worker
HOSTS = ["198.51.100.2", "198.51.100.3"]


def two_workers_config(tmp: Path, queue: int, *, extra: str = "", report: str = "heartbeat: 300") -> Path:
    """A config with queues `queue` and `queue`+1, monitor mode, and an uplink that never answers."""
    (tmp / "registry.yaml").write_text("registrations: []\n")
    cfg = tmp / "tunnelwatch.yaml"
    cfg.write_text(f"queue: {{num: {queue}, count: 2}}\nfirewall: {{hooks: [forward], ipv6: false}}\n"
                   "registry: registry.yaml\npolicy: {default: monitor}\nlog: {level: debug}\n" + extra +
                   f"status: {{socket: {tmp / 'status.sock'}}}\n"
                   # a closed loopback port: the events stay in the spool for the test to read
                   f"report: {{state_dir: state, {report}, uplink: {{url: 'https://127.0.0.1:9'}}}}\n")
    return cfg


def add_addresses(lb: Lab, servers: list[str]) -> None:
    """The second client address, and the server addresses, in their namespaces."""
    lb.run(lb.client, "ip", "addr", "add", f"{HOSTS[1]}/24", "dev", "eth0")
    for addr in servers:
        lb.run(lb.server, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")


def queue_packets(text: str) -> dict[int, int]:
    """Packets each queue has handed to userspace, from /proc/net/netfilter/nfnetlink_queue
    (queue_num portid waiting copy_mode copy_range dropped ... id_seq 1)."""
    return {int(f[0]): int(f[7]) for f in (ln.split() for ln in text.splitlines()) if len(f) >= 8}
