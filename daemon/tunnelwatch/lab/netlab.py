"""Network-namespace lab: client <-> router <-> server over veth pairs (used by `tunnelwatch lab`, the
network bench and the integration tests).

Everything created is named with a per-lab prefix and removed on exit, even on failure or Ctrl-C:
namespaces (which takes their veths, routes and rules with them) and the processes started in them.
Traffic stays inside these namespaces. Addresses are from the documentation ranges, which exist only
inside the lab's own namespaces.

    client (198.51.100.2, 2001:db8:1::2) -- router (.1 / ::1 | 203.0.113.1 / 2001:db8:2::1)
                                             -- server (203.0.113.2, 2001:db8:2::2)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

CLIENT_IP = "198.51.100.2"
ROUTER_LAN_IP = "198.51.100.1"
ROUTER_WAN_IP = "203.0.113.1"
SERVER_IP = "203.0.113.2"
CLIENT_IP6 = "2001:db8:1::2"
ROUTER_LAN_IP6 = "2001:db8:1::1"
ROUTER_WAN_IP6 = "2001:db8:2::1"
SERVER_IP6 = "2001:db8:2::2"

# Debian package of each external program the lab, the demo and the bench may run.
PACKAGES: Final = {
    "ip": "iproute2", "ss": "iproute2", "ping": "iputils-ping", "sysctl": "procps", "curl": "curl",
    "openssl": "openssl", "openvpn": "openvpn", "wireguard-go": "wireguard-go", "wg": "wireguard-tools",
    "sipp": "sip-tester", "iperf3": "iperf3", "tcpdump": "tcpdump", "iptables": "iptables",
    "ip6tables": "iptables", "iptables-save": "iptables", "ip6tables-save": "iptables",
    "iptables-restore": "iptables", "ip6tables-restore": "iptables",
    "ss-server": "shadowsocks-libev", "ss-local": "shadowsocks-libev", "v2ray": "v2ray",
    "obfs4proxy": "obfs4proxy", "sshd": "openssh-server", "ssh": "openssh-client", "scp": "openssh-client",
    "ssh-keygen": "openssh-client", "mount": "mount", "umount": "mount", "dd": "coreutils",
    "tincd": "tinc", "edge": "n2n", "supernode": "n2n", "fastd": "fastd",
    "iodine": "iodine", "iodined": "iodine", "ptunnel": "ptunnel", "ocserv": "ocserv",
    "openconnect": "openconnect", "stdbuf": "coreutils",
    "kamailio": "kamailio", "baresip": "baresip", "turnserver": "coturn", "turnutils_uclient": "coturn",
    "turnutils_peer": "coturn", "conntrack": "conntrack", "murmurd": "mumble-server",
}


class LabError(RuntimeError):
    """The lab cannot be built here (not root, no iproute2)."""


def can_run_lab() -> str:
    """Empty string when namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2"
    return ""


def missing_tools(*tools: str) -> list[str]:
    """The programs (names on PATH or absolute paths) that are not installed."""
    return [t for t in tools if shutil.which(t) is None and not Path(t).exists()]


def missing_packages(*tools: str) -> list[str]:
    """Debian packages to install for the missing programs among `tools`, without duplicates."""
    pkgs: list[str] = []
    for t in missing_tools(*tools):
        pkg = PACKAGES.get(t, t)
        if pkg not in pkgs:
            pkgs.append(pkg)
    return pkgs


def sh(*args: str, check: bool = True, timeout: float = 30.0, input: str | None = None
       ) -> subprocess.CompletedProcess[str]:
    """Run a command on the host, capturing text output; raise with its stderr when it fails."""
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} -> {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
    return r


@dataclass
class Lab:
    """Three namespaces and the processes started inside them."""

    prefix: str
    workdir: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    @property
    def client(self) -> str:
        """Client namespace name."""
        return f"{self.prefix}-c"

    @property
    def router(self) -> str:
        """Router namespace name."""
        return f"{self.prefix}-r"

    @property
    def server(self) -> str:
        """Server namespace name."""
        return f"{self.prefix}-s"

    @property
    def namespaces(self) -> tuple[str, str, str]:
        """All three namespace names."""
        return self.client, self.router, self.server

    def run(self, ns: str, *args: str, check: bool = True, timeout: float = 30.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside a namespace and wait for it."""
        return sh("ip", "netns", "exec", ns, *args, check=check, timeout=timeout, input=input)

    def spawn(self, ns: str, args: Sequence[str], name: str, *, env: dict[str, str] | None = None,
              stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        """Start a background process in a namespace; its output goes to workdir/<name>.log."""
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the process
        # own session: a Ctrl-C on the terminal reaches only us, and we stop the peers in order
        p = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=log, stderr=subprocess.STDOUT,
                             stdin=stdin, env={**os.environ, **(env or {})}, start_new_session=True)
        log.close()
        self.procs.append((name, p))
        return p

    def log(self, name: str) -> str:
        """The output so far of a process started with spawn()."""
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_log(self, name: str, needle: str, timeout: float = 20.0) -> None:
        """Wait until a spawned process printed `needle`; raise AssertionError with its log otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log(name):
                return
            for n, p in self.procs:
                if n == name and p.poll() is not None:
                    raise AssertionError(
                        f"{name} exited ({p.returncode}) before {needle!r}:\n{self.log(name)[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {needle!r} from {name}:\n{self.log(name)[-3000:]}")

    def wait_until(self, ns: str, args: Sequence[str], timeout: float = 20.0) -> None:
        """Poll a command in a namespace until it succeeds (e.g. a port is listening)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            r = self.run(ns, *args, check=False, timeout=10)
            if r.returncode == 0:
                return
            last = r.stderr or r.stdout
            time.sleep(0.1)
        raise AssertionError(f"timed out: {' '.join(args)} in {ns}: {last[-500:]}")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        """Stop one spawned process (its whole process group)."""
        for n, p in self.procs:
            if n == name:
                _kill(p, sig, timeout)

    @contextmanager
    def capture(self, ns: str, iface: str, pcap: Path, bpf: str = "", timeout: float = 10.0
                ) -> Iterator[Path]:
        """tcpdump on an interface of a namespace for the block; stopped only once all of it is on disk.

        --immediate-mode: otherwise tcpdump hands packets over in blocks up to a second late and a short
        block ends before the first one. At the end the server pings the client with a random payload,
        which crosses every lab interface; tcpdump writes in order, so once that marker is in the file,
        every packet that crossed the interface before it is too.
        """
        name = f"tcpdump-{pcap.stem}"
        args = ["tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-s", "0", "-w", str(pcap)]
        if bpf:
            args += ["(", *bpf.split(), ")", "or", "icmp"]  # the marker must pass the filter
        p = self.spawn(ns, args, name)
        # tcpdump says "listening on" only once the socket is open: no packet is missed after this.
        self.wait_for_log(name, "listening on")
        try:
            yield pcap
            token = uuid.uuid4().hex[:16]
            marker = bytes.fromhex(token)
            deadline = time.monotonic() + timeout
            next_ping = 0.0
            while marker not in pcap.read_bytes():
                if time.monotonic() > deadline or p.poll() is not None:
                    raise AssertionError(
                        f"capture marker never reached {pcap.name}:\n{self.log(name)[-2000:]}")
                if time.monotonic() >= next_ping:  # again each second: one echo may be lost on a busy box
                    next_ping = time.monotonic() + 1.0
                    self.run(self.server, "ping", "-n", "-c1", "-W1", "-s", "64", "-p", token, CLIENT_IP,
                             check=False)
                time.sleep(0.02)  # polling the file for the marker, not a guess at timing
        finally:
            _kill(p, signal.SIGINT, 5.0)

    def teardown(self) -> None:
        """Stop every process started here and delete the namespaces (idempotent)."""
        for _, p in reversed(self.procs):
            _kill(p, signal.SIGTERM, 5.0)
        for ns in self.namespaces:
            # anything still inside (e.g. a daemonised child) would keep the namespace's devices alive
            for pid in _pids_in_ns(ns):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)


def _kill(p: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig)
        p.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def _pids_in_ns(ns: str) -> list[int]:
    r = sh("ip", "netns", "pids", ns, check=False)
    return [int(x) for x in r.stdout.split()]


def _build(lb: Lab, ipv6: bool) -> None:
    prefix = lb.prefix
    for ns in lb.namespaces:
        sh("ip", "netns", "add", ns)
        lb.run(ns, "ip", "link", "set", "lo", "up")
        # No DAD delay (set before any link exists, so every link inherits it): addresses,
        # link-local ones included, are usable at once and callers need no sleeps.
        lb.run(ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
    # veth pairs; interface names inside namespaces are fixed and short: lan0/wan0 on the router.
    sh("ip", "link", "add", f"{prefix}c", "netns", lb.client, "type", "veth", "peer", "name",
       f"{prefix}rl", "netns", lb.router)
    sh("ip", "link", "add", f"{prefix}s", "netns", lb.server, "type", "veth", "peer", "name",
       f"{prefix}rw", "netns", lb.router)
    lb.run(lb.client, "ip", "link", "set", f"{prefix}c", "name", "eth0")
    lb.run(lb.server, "ip", "link", "set", f"{prefix}s", "name", "eth0")
    lb.run(lb.router, "ip", "link", "set", f"{prefix}rl", "name", "lan0")
    lb.run(lb.router, "ip", "link", "set", f"{prefix}rw", "name", "wan0")
    for ns, dev, addr, addr6 in (
        (lb.client, "eth0", CLIENT_IP, CLIENT_IP6), (lb.router, "lan0", ROUTER_LAN_IP, ROUTER_LAN_IP6),
        (lb.router, "wan0", ROUTER_WAN_IP, ROUTER_WAN_IP6), (lb.server, "eth0", SERVER_IP, SERVER_IP6),
    ):
        lb.run(ns, "ip", "addr", "add", f"{addr}/24", "dev", dev)
        if ipv6:
            lb.run(ns, "ip", "-6", "addr", "add", f"{addr6}/64", "dev", dev, "nodad")
        lb.run(ns, "ip", "link", "set", dev, "up")
    lb.run(lb.client, "ip", "route", "add", "default", "via", ROUTER_LAN_IP)
    lb.run(lb.server, "ip", "route", "add", "default", "via", ROUTER_WAN_IP)
    if ipv6:
        lb.run(lb.client, "ip", "-6", "route", "add", "default", "via", ROUTER_LAN_IP6)
        lb.run(lb.server, "ip", "-6", "route", "add", "default", "via", ROUTER_WAN_IP6)
    lb.run(lb.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    if ipv6:
        lb.run(lb.router, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")


@contextmanager
def lab(workdir: Path, *, ipv6: bool = True) -> Iterator[Lab]:
    """Build client/router/server namespaces; tear everything down on exit. Raises LabError when the
    lab cannot be built here (see can_run_lab())."""
    reason = can_run_lab()
    if reason:
        raise LabError(reason)
    lb = Lab("tw" + uuid.uuid4().hex[:6], workdir)
    try:
        _build(lb, ipv6)
        yield lb
    finally:
        lb.teardown()
