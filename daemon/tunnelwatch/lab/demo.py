"""`tunnelwatch lab`: the self-contained demo of inline enforcement with real tunnels.

Builds client / router / server namespaces (tunnelwatch.lab.netlab), runs `tunnelwatch run` in the router
with vpn_tunnel in enforce mode and one registered OpenVPN server, then drives real software through it:
an unregistered OpenVPN tunnel, a registered one, a WireGuard (wireguard-go) tunnel, plain HTTPS and a SIP
call. Prints per scenario what was expected, what the client saw and the daemon's decision lines, then
removes every namespace and process, also on Ctrl-C, SIGTERM or failure. Progress goes to stderr, the
report to stdout. Exit: 0 every scenario as expected, 1 otherwise, 2 not root or a package is missing.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final, TextIO

from tunnelwatch.lab import peers
from tunnelwatch.lab.netlab import CLIENT_IP, SERVER_IP, Lab, can_run_lab, lab, missing_packages
from tunnelwatch.verdict import is_flagged

REGISTERED_IP: Final = "203.0.113.10"  # a second server address: the registered VPN's endpoint
SIP_PORT: Final = 5060
REQUIRED: Final = ("ip", "ss", "ping", "sysctl", "iptables", "ip6tables", "iptables-save", "iptables-restore",
                   "openvpn", "openssl", "curl")
OPTIONAL: Final = {"WireGuard": ("wireguard-go", "wg"), "SIP": ("sipp",)}
STEPS: Final = 7


@dataclass
class Result:
    """One scenario's outcome: expectation, what the client saw, and the daemon's matching decisions."""

    name: str
    expected: str  # "blocked" or "allowed"
    observed: str = ""
    passed: bool | None = None  # None: skipped
    decisions: list[str] = field(default_factory=list)
    note: str = ""


class Demo:
    """The scenarios, run in order against one lab and one daemon."""

    def __init__(self, lb: Lab, work: Path, err: TextIO) -> None:
        self.lb = lb
        self.work = work
        self.err = err
        self.step = 0
        self.pki = work / "pki"

    def progress(self, msg: str) -> None:
        """One numbered progress line on stderr."""
        self.step += 1
        print(f"[{self.step}/{STEPS}] {msg}", file=self.err, flush=True)

    def decisions(self, needle: str, wait: float = 0.0) -> list[str]:
        """The daemon's decision lines about flows to `needle` ("ip:port"), waiting up to `wait` s for one."""
        deadline = time.monotonic() + wait
        while True:
            lines = [ln[ln.index("decided "):] for ln in self.lb.log("daemon").splitlines()
                     if "decided " in ln and f"-> {needle} " in ln]
            if lines or time.monotonic() >= deadline:
                return lines
            time.sleep(0.05)

    def start_daemon(self) -> None:
        """Write the config and registry, start the daemon, wait until its rules are in."""
        (self.work / "registry.yaml").write_text(
            "registrations:\n  - id: LAB-1\n    customer: lab demo\n    protocols: [openvpn]\n"
            f"    servers:\n      - {{address: {REGISTERED_IP}, ports: [{peers.OPENVPN_PORT}]}}\n")
        cfg = self.work / "tunnelwatch.yaml"
        cfg.write_text("queue: {num: 0, packets: 16}\nfirewall: {hooks: [forward], ipv6: true}\n"
                       "registry: registry.yaml\npolicy:\n  default: {mode: monitor}\n"
                       "  klass: {vpn_tunnel: enforce, voip: monitor, proxy_obfuscated: monitor}\n"
                       "log: {level: debug}\n"
                       f"status: {{socket: {self.work / 'status.sock'}}}\n")  # never the box's own socket
        self.lb.spawn(self.lb.router, [sys.executable, "-m", "tunnelwatch", "run", "--config", str(cfg)],
                      "daemon")
        self.lb.wait_for_log("daemon", "ready:", timeout=30)

    def openvpn(self, name: str, server_ip: str, tun_net: int, expected: str) -> Result:
        """An OpenVPN/UDP tunnel to `server_ip`; blocked means no tunnel and no ping through it."""
        res = Result(name, expected)
        tun = (f"10.99.{tun_net}.1", f"10.99.{tun_net}.2")
        tag = f"ovpn{tun_net}"
        pair = peers.openvpn_pair(self.work / tag, server_ip=server_ip, tun=tun, pki=self.pki)
        peers.start_openvpn(self.lb, pair, tag)
        needle = f"{server_ip}:{peers.OPENVPN_PORT}"
        try:
            if expected == "blocked":
                self.lb.wait_for_log("daemon", f"-> {needle} ", timeout=20)
            else:
                self.lb.wait_for_log(f"{tag}-client", "Initialization Sequence Completed", timeout=20)
        except AssertionError:
            pass  # the client-side observation below says what happened
        up = "Initialization Sequence Completed" in self.lb.log(f"{tag}-client")
        ping = peers.tunnel_ping(self.lb, 3, tun[0])
        res.observed = (f"tunnel {'up' if up else 'down'}, ping {tun[0]} through it "
                        f"{'ok' if ping else 'fails'}")
        res.decisions = self.decisions(needle)
        res.passed = _consistent(res, (up and ping) if expected == "allowed" else not (up or ping))
        if not res.decisions and server_ip == REGISTERED_IP:
            res.note = "registered endpoint: the kernel bypasses the queue, no packet reached the daemon"
        self.lb.stop(f"{tag}-client")
        self.lb.stop(f"{tag}-server")
        return res

    def wireguard(self) -> Result:
        """A wireguard-go tunnel; the handshake is confirmed on its response, then the flow is dropped."""
        res = Result("WireGuard unregistered", "blocked")
        peers.start_wireguard(self.lb, self.work / "wg", tun=("10.99.2.1", "10.99.2.2"))
        ping = peers.tunnel_ping(self.lb, 3, "10.99.2.1")
        res.observed = f"ping 10.99.2.1 through the tunnel {'ok' if ping else 'fails'}"
        res.decisions = self.decisions(f"{SERVER_IP}:{peers.WIREGUARD_PORT}", wait=3.0)
        res.passed = _consistent(res, not ping)
        return res

    def https(self) -> Result:
        """curl to the Python HTTPS server."""
        res = Result("HTTPS (curl)", "allowed")
        r = peers.fetch(self.lb, f"https://{SERVER_IP}:{peers.HTTPS_PORT}/index.html", insecure=True)
        ok = r.returncode == 0 and r.stdout.startswith("200 ")
        res.observed = f"curl: HTTP {r.stdout.split()[0]}" if ok else f"curl failed: {r.stderr.strip()[:60]}"
        res.decisions = self.decisions(f"{SERVER_IP}:{peers.HTTPS_PORT}", wait=3.0)
        res.passed = _consistent(res, ok)
        return res

    def sip(self) -> Result:
        """One SIP call with sipp's built-in uac/uas scenarios."""
        res = Result("SIP call (sipp)", "allowed")
        self.lb.spawn(self.lb.server, ["sipp", "-sn", "uas", "-i", SERVER_IP, "-p", str(SIP_PORT), "-nostdin",
                                       "-timeout", "30s"], "sipp-uas")
        self.lb.wait_until(self.lb.server, ["sh", "-c", f"ss -lun | grep -q ':{SIP_PORT} '"])
        r = self.lb.run(self.lb.client, "sipp", "-sn", "uac", "-m", "1", "-i", CLIENT_IP, "-p", "5061",
                        "-nostdin", "-timeout", "10s", "-timeout_error", f"{SERVER_IP}:{SIP_PORT}",
                        check=False, timeout=20)
        res.observed = "call completed (INVITE .. BYE)" if r.returncode == 0 else f"call failed (sipp exit " \
                                                                                  f"{r.returncode})"
        res.decisions = self.decisions(f"{SERVER_IP}:{SIP_PORT}", wait=3.0)
        res.passed = _consistent(res, r.returncode == 0)
        self.lb.stop("sipp-uas")
        return res


def _consistent(res: Result, client_ok: bool) -> bool:
    """The client saw the expected outcome and the daemon agrees: a blocked scenario needs a block
    decision (a tunnel that failed for another reason proves nothing), an allowed one has none."""
    blocks = any(" block" in d.split(" (")[0] for d in res.decisions)
    return client_ok and blocks == (res.expected == "blocked")


def _skipped(name: str, expected: str, tools: tuple[str, ...]) -> Result:
    pkgs = " ".join(missing_packages(*tools))
    return Result(name, expected, f"skipped: apt-get install {pkgs}", None)


def report(results: list[Result], out: TextIO) -> None:
    """The table: scenario, expected, observed from the client, verdict; the daemon's lines below each."""
    print(f"\nclient {CLIENT_IP} -> router (tunnelwatch run: vpn_tunnel enforce, voip monitor; registered: "
          f"LAB-1 openvpn {REGISTERED_IP}:{peers.OPENVPN_PORT}) -> server {SERVER_IP}", file=out)
    print(f"\n{'SCENARIO':<26} {'EXPECTED':<9} {'OBSERVED FROM THE CLIENT':<48} RESULT", file=out)
    for r in results:
        verdict = "skipped" if r.passed is None else "ok" if r.passed else "UNEXPECTED"
        print(f"{r.name:<26} {r.expected:<9} {r.observed:<48} {verdict}", file=out)
        for d in r.decisions:
            print(f"    daemon: {d}", file=out)
        if r.note:
            print(f"    ({r.note})", file=out)
        elif not r.decisions and r.passed is not None:
            print("    (no decision line from the daemon)", file=out)
    tagged = [d.split()[1:3] for r in results for d in r.decisions
              if is_flagged(d.split()[1])]
    blocked = sum(1 for r in results for d in r.decisions if " block" in d.split(" (")[0])
    print(f"\ndaemon: {len(tagged)} flows tagged ({', '.join(' '.join(t) for t in tagged) or 'none'}), "
          f"{blocked} blocked", file=out)
    done = [r for r in results if r.passed is not None]
    good = sum(1 for r in done if r.passed)
    print(f"{good}/{len(done)} scenarios as expected"
          f"{f', {len(results) - len(done)} skipped' if len(done) < len(results) else ''}", file=out)


def _scenarios(demo: Demo, results: list[Result]) -> None:
    lb = demo.lb
    demo.progress(f"starting the daemon in the router namespace {lb.router} (vpn_tunnel: enforce; "
                  f"registered: {REGISTERED_IP}:{peers.OPENVPN_PORT})")
    peers.start_web(lb, demo.work / "www", pki=demo.pki)
    lb.run(lb.server, "ip", "addr", "add", f"{REGISTERED_IP}/24", "dev", "eth0")
    demo.start_daemon()
    plan: list[tuple[str, str, tuple[str, ...], Callable[[], Result]]] = [
        ("OpenVPN/UDP unregistered", "blocked", (),
         lambda: demo.openvpn("OpenVPN/UDP unregistered", SERVER_IP, 0, "blocked")),
        ("OpenVPN/UDP registered", "allowed", (),
         lambda: demo.openvpn("OpenVPN/UDP registered", REGISTERED_IP, 1, "allowed")),
        ("WireGuard unregistered", "blocked", OPTIONAL["WireGuard"], demo.wireguard),
        ("HTTPS (curl)", "allowed", (), demo.https),
        ("SIP call (sipp)", "allowed", OPTIONAL["SIP"], demo.sip),
    ]
    for name, expected, tools, fn in plan:
        demo.progress(f"{name} ...")
        if missing_packages(*tools):
            results.append(_skipped(name, expected, tools))
            continue
        t0 = time.monotonic()
        try:
            res = fn()
        except (AssertionError, RuntimeError, OSError) as exc:
            res = Result(name, expected, f"error: {str(exc).splitlines()[0][:60]}", False)
        results.append(res)
        print(f"      {res.observed} ({time.monotonic() - t0:.1f} s)", file=demo.err, flush=True)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # The first Ctrl-C/SIGTERM unwinds into the lab's cleanup; later ones must not interrupt it.
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(keep: bool = False, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the demo; the exit code of `tunnelwatch lab`."""
    reason = can_run_lab()
    if reason:
        print(f"tunnelwatch lab: {reason}: run it as root (e.g. sudo tunnelwatch lab)", file=err)
        return 2
    pkgs = missing_packages(*REQUIRED)
    if pkgs:
        names = " ".join(pkgs)
        print(f"tunnelwatch lab: missing Debian packages: {names} (apt-get install {names})", file=err)
        return 2
    for what, tools in OPTIONAL.items():
        if missing_packages(*tools):
            names = " ".join(missing_packages(*tools))
            print(f"tunnelwatch lab: {what} scenario skipped: apt-get install {names}", file=err)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)
    work = Path(tempfile.mkdtemp(prefix="tunnelwatch-lab-"))
    results: list[Result] = []
    status = 0
    t0 = time.monotonic()
    try:
        with lab(work, ipv6=True) as lb:
            demo = Demo(lb, work, err)
            demo.progress(f"building namespaces {lb.prefix}-{{c,r,s}} and a throw-away PKI in {work}")
            peers.make_pki(demo.pki)
            try:
                _scenarios(demo, results)
            except (AssertionError, RuntimeError, OSError) as exc:
                print(f"tunnelwatch lab: error: {exc}", file=err)
                print(f"--- daemon log (tail) ---\n{lb.log('daemon')[-2000:]}", file=err)
                status = 1
            print(f"cleaning up namespaces {lb.prefix}-{{c,r,s}} and their processes", file=err, flush=True)
    except KeyboardInterrupt:
        print("tunnelwatch lab: interrupted; namespaces and processes removed", file=err)
        return 130
    finally:
        if keep:
            print(f"tunnelwatch lab: logs kept in {work}", file=err)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(results, out)
    print(f"lab finished in {time.monotonic() - t0:.0f} s", file=err)
    if any(r.passed is False for r in results) or len(results) < STEPS - 2:
        status = 1
    return status
