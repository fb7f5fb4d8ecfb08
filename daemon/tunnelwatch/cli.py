"""The `tunnelwatch` command line: one subcommand per job, stable exit codes.

Exit codes: 0 ok, 1 some input failed (others still processed), 2 usage, 78 configuration error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tunnelwatch import __version__
from tunnelwatch.classify.engine import DEFAULT_BUDGET

if TYPE_CHECKING:
    from tunnelwatch.classify.endpoints import EndpointIndex, Endpoints
    from tunnelwatch.config.runconfig import RunConfig
    from tunnelwatch.policy.registry import Registry

EX_OK = 0
EX_PARTIAL = 1
EX_USAGE = 2
EX_CONFIG = 78


def _endpoint_index(files: list[str]) -> EndpointIndex | None:
    """The YAML endpoint lists given with --endpoints, or None after printing every problem."""
    from tunnelwatch.classify.endpoints import EndpointIndex, ListSource, load_list
    from tunnelwatch.config.yamlcheck import ConfigError

    lists, problems = [], []
    for f in files:
        if not f.endswith((".yaml", ".yml")):
            problems.append(f"{f}: --endpoints takes YAML lists (docs/endpoints.md); a text list needs its "
                            "labels from tunnelwatch.yaml")
            continue
        try:
            lists.append(load_list(ListSource(Path(f))))
        except ConfigError as exc:
            problems += exc.problems
    for p in problems:
        print(p, file=sys.stderr)
    return EndpointIndex(lists) if not problems else None


def _cmd_classify(args: argparse.Namespace) -> int:
    from tunnelwatch.classify.engine import INLINE_BUDGET
    from tunnelwatch.offline.classify import FileStats, classify_file
    from tunnelwatch.offline.output import write_jsonl, write_table
    from tunnelwatch.offline.pcapfile import PcapError

    endpoints = _endpoint_index(args.endpoints) if args.endpoints else None
    if args.endpoints and endpoints is None:
        return EX_CONFIG
    status = EX_OK
    table_rows: list[dict[str, object]] = []
    totals = {"files": 0, "flows": 0}
    for path in args.pcap:
        st = FileStats(path)
        try:
            budget = args.budget if args.budget is not None else \
                INLINE_BUDGET if args.inline else DEFAULT_BUDGET
            records = classify_file(path, budget=budget, idle_timeout=args.idle_timeout,
                                    progress=False if args.no_progress else None, stats=st,
                                    endpoints=endpoints, inline=args.inline)
            if args.format == "jsonl":
                write_jsonl(records, sys.stdout)
            else:
                table_rows.extend(records)
        except PcapError as exc:
            print(f"tunnelwatch: error: {exc}", file=sys.stderr)
            status = EX_PARTIAL
            continue
        totals["files"] += 1
        totals["flows"] += st.flows
        for w in st.warnings:
            print(f"tunnelwatch: warning: {path}: {w}", file=sys.stderr)
    if args.format == "table":
        write_table(table_rows, sys.stdout, only_flagged=args.flagged)
    return status


def _load(path: str) -> tuple[RunConfig, Registry, Endpoints] | None:
    """The config, its registry and its endpoint lists, or None after printing every problem (exit 78)."""
    from tunnelwatch.classify.endpoints import Endpoints
    from tunnelwatch.config.runconfig import ConfigError, load_config
    from tunnelwatch.policy.registry import Registry

    try:
        cfg = load_config(Path(path))
        endpoints = Endpoints(cfg.endpoints, strict=True)  # the list files too: typos show here
        registry = Registry.load(cfg.registry) if cfg.registry is not None else Registry()
        return cfg, registry, endpoints
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"tunnelwatch: {len(exc.problems)} problem(s) in the configuration", file=sys.stderr)
        return None


def _cmd_check_config(args: argparse.Namespace) -> int:
    from tunnelwatch.config.runconfig import summary

    loaded = _load(args.file)
    if loaded is None:
        return EX_CONFIG
    cfg, registry, endpoints = loaded
    from tunnelwatch.policy.advice import warnings

    now = dt.datetime.now(dt.UTC)
    list_protocols = {lst.protocol for lst in endpoints.lists.values()} | {
        e.protocol for lst in endpoints.lists.values() for e in lst.entries if e.protocol}
    for w in warnings(cfg, registry, now, list_protocols):
        print(f"tunnelwatch: warning: {w}", file=sys.stderr)
    dropins = f" + {len(cfg.sources) - 1} drop-in(s): {', '.join(Path(s).name for s in cfg.sources[1:])}" \
        if len(cfg.sources) > 1 else ""
    print(f"configuration OK: {args.file}{dropins}")
    reg = f"{cfg.registry}: {len(registry.entries)} registrations" if cfg.registry is not None else "none"
    for line in [*summary(cfg), f"registry: {reg}"]:
        print(f"  {line}")
    return EX_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from tunnelwatch.appliance.service import setup_logging
    from tunnelwatch.inline.daemon import run
    from tunnelwatch.inline.firewall import FirewallError

    loaded = _load(args.config)
    if loaded is None:
        return EX_CONFIG
    cfg, registry, endpoints = loaded
    setup_logging("debug" if args.verbose else cfg.log_level, journal=cfg.log_journal)
    try:
        return run(cfg, registry, Path(args.config), verbose=args.verbose, endpoints=endpoints)
    except FirewallError as exc:
        print(f"tunnelwatch: error: firewall: {exc}", file=sys.stderr)
        return EX_PARTIAL
    except (OSError, RuntimeError) as exc:  # e.g. the queue is bound by another daemon
        print(f"tunnelwatch: error: {exc}", file=sys.stderr)
        return EX_PARTIAL


def _cmd_explain(args: argparse.Namespace) -> int:
    import json

    from tunnelwatch.policy.explain import explain

    loaded = _load(args.config)
    if loaded is None:
        return EX_CONFIG
    cfg, registry, _ = loaded
    try:
        ans = explain(cfg, registry, host=args.host, server=args.server, protocol=args.protocol,
                      port=args.port, transport=args.transport, confidence=args.confidence)
    except ValueError as exc:
        print(f"tunnelwatch: error: {exc}", file=sys.stderr)
        return EX_USAGE
    if args.json:
        print(json.dumps(ans.__dict__, indent=2))
    else:
        print(f"{args.protocol} ({ans.klass}) from {args.host} to {args.server}:{args.port}/"
              f"{args.transport}, confidence {args.confidence}:")
        for line in ans.lines():
            print(line)
    return EX_OK if ans.action != "block" else 1


def _cmd_status(args: argparse.Namespace) -> int:
    from tunnelwatch.appliance.statussock import cli_status

    return cli_status(args)


def _cmd_discover(args: argparse.Namespace) -> int:
    from tunnelwatch.appliance.discovery import cli_discover

    return cli_discover(args)


def _cmd_firewall(args: argparse.Namespace) -> int:
    from tunnelwatch.inline.firewall import FirewallError, remove

    try:
        remove()
    except FirewallError as exc:
        print(f"tunnelwatch: error: firewall: {exc}", file=sys.stderr)
        return EX_PARTIAL
    return EX_OK


def _cmd_lab(args: argparse.Namespace) -> int:
    from tunnelwatch.lab.demo import main as lab_main

    return lab_main(keep=args.keep)


#: ISP-side tools reachable as `tunnelwatch NAME ...` (and as the tunnelwatch-NAME entry points): their
#: own parsers take every argument; imported only when run, so the box's CLI never loads isp/.
_ISP_TOOLS = {
    "registry": ("tunnelwatch.policy.regsync",
                 "ISP side: sign and check registry documents (keygen, sign, verify)"),
    "collector": ("tunnelwatch.isp.collector", "ISP side: run the reference event collector"),
    "provision": ("tunnelwatch.isp.provsign",
                  "ISP side: sign and check a box's provisioning file (keygen, sign, verify)"),
}


def _isp_tool(name: str, argv: list[str]) -> int:
    import importlib

    module = importlib.import_module(_ISP_TOOLS[name][0])
    try:
        return int(module.main(argv))
    except SystemExit as exc:  # argparse's --help and usage errors
        return exc.code if isinstance(exc.code, int) else EX_USAGE


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with all subcommands."""
    p = argparse.ArgumentParser(
        prog="tunnelwatch", description=__doc__.splitlines()[0] if __doc__ else "",
        epilog="exit codes: 0 done / healthy / the flow passes; 1 partly done (a capture failed), not "
               "healthy, or the flow would be blocked; 2 bad arguments; 78 invalid configuration "
               "(check-config prints every problem as file:line:col).")
    p.add_argument("--version", action="version", version=f"tunnelwatch {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    c = sub.add_parser("classify", help="classify the flows of pcap/pcapng files",
                       description="Classify every bidirectional flow of the given captures. "
                                   "One JSON object per flow with --format jsonl.")
    c.add_argument("pcap", nargs="+", metavar="PCAP")
    c.add_argument("--format", choices=("jsonl", "table"), default="jsonl")
    c.add_argument("--flagged", action="store_true", help="table: only tunnel/VoIP/proxy flows")
    c.add_argument("--budget", type=int, default=None,
                   help=f"packets per flow given to classifiers (default {DEFAULT_BUDGET}; with --inline "
                        "the daemon's default queue.packets)")
    c.add_argument("--inline", action="store_true",
                   help="the daemon's view: only the packets the kernel rules would queue reach the "
                        "classifiers (first window, later windows, no payload-less TCP, the quiet rule)")
    c.add_argument("--idle-timeout", type=float, default=120.0, help="seconds (default 120)")
    c.add_argument("--no-progress", action="store_true", help="never draw a progress bar")
    c.add_argument("--endpoints", action="append", default=[], metavar="FILE",
                   help="YAML endpoint list (docs/endpoints.md); repeatable")
    c.set_defaults(func=_cmd_classify)

    r = sub.add_parser("run", help="the inline daemon: NFQUEUE, policy, kernel enforcement",
                       description="Install the firewall rules, classify the first packets of each "
                                   "connection from NFQUEUE and enforce the policy until SIGTERM.")
    r.add_argument("--config", required=True, metavar="FILE", help="tunnelwatch.yaml")
    r.set_defaults(func=_cmd_run)

    cc = sub.add_parser("check-config", help="validate a configuration (and its drop-ins and registry)",
                        description="Load FILE, its FILE.d/*.yaml drop-ins and the registry it names like "
                                    "`tunnelwatch run` would. Exit 0 with a summary, or 78 with every "
                                    "problem as file:line:col: message.")
    cc.add_argument("file", metavar="FILE", help="tunnelwatch.yaml")
    cc.set_defaults(func=_cmd_check_config)

    st = sub.add_parser("status", help="health, mode and recent flagged flows of the running daemon",
                        description="Ask the running daemon over its local socket (root only). Exit 0 when "
                                    "healthy, 1 otherwise or when the daemon is unreachable.")
    st.add_argument("--socket", default="/run/tunnelwatch/status.sock", metavar="PATH",
                    help="status socket (default /run/tunnelwatch/status.sock)")
    st.add_argument("--json", action="store_true", help="the full snapshot as JSON")
    st.add_argument("--host", metavar="ADDR",
                    help="one LAN host's recent decisions: what, why, evidence, and the `explain` line that "
                         "says what would let it through")
    st.set_defaults(func=_cmd_status)

    ex = sub.add_parser("explain", help="dry-run: would this flow pass? which rule, which registration",
                        description="Decide a flow from a LAN host to a server with the policy and registry "
                                    "of a configuration, as the daemon would, and say why. Exit 0 when it "
                                    "passes or is only reported, 1 when it would be blocked, 78 for a bad "
                                    "configuration.")
    ex.add_argument("--config", default="/etc/tunnelwatch/tunnelwatch.yaml", metavar="FILE",
                    help="tunnelwatch.yaml (default /etc/tunnelwatch/tunnelwatch.yaml)")
    ex.add_argument("--host", required=True, metavar="ADDR", help="the LAN host (subscriber side)")
    ex.add_argument("--server", required=True, metavar="ADDR", help="the server it talks to")
    ex.add_argument("--protocol", required=True, help="what the daemon would detect, e.g. openvpn, wireguard")
    ex.add_argument("--port", type=int, default=0, help="the server's port (default: any)")
    ex.add_argument("--transport", choices=("udp", "tcp"), default="udp", help="default udp")
    ex.add_argument("--confidence", choices=("confirmed", "heuristic", "list", "port"), default="confirmed",
                    help="how sure the detection is (default confirmed)")
    ex.add_argument("--json", action="store_true", help="the answer as JSON")
    ex.set_defaults(func=_cmd_explain)

    dc = sub.add_parser("discover", help="list tunnelwatch boxes on this network (mDNS)",
                        description="Browse _tunnelwatch._tcp.local. and list the boxes that answer.")
    dc.add_argument("--timeout", type=float, default=3.0, help="seconds to listen (default 3)")
    dc.add_argument("--json", action="store_true", help="one JSON object per box")
    dc.set_defaults(func=_cmd_discover)

    f = sub.add_parser("firewall", help="manage tunnelwatch's own firewall rules",
                       description="Remove every tunnelwatch rule (e.g. after a kill -9).")
    f.add_argument("--remove", action="store_true", required=True, help="remove our chains and jumps")
    f.set_defaults(func=_cmd_firewall)

    lb = sub.add_parser("lab", help="demo: real tunnels through the daemon in throw-away namespaces",
                        description="Build client/router/server network namespaces, run the daemon in the "
                                    "router (vpn_tunnel: enforce), drive OpenVPN, WireGuard, HTTPS and SIP "
                                    "through it, print what was blocked and allowed, and clean up. "
                                    "Needs root.")
    lb.add_argument("--keep", action="store_true", help="keep the work directory with every log")
    lb.set_defaults(func=_cmd_lab)
    for name, (module, text) in _ISP_TOOLS.items():
        sub.add_parser(name, help=text, add_help=False,
                       description=f"{text}. Every argument goes to {module} (also: tunnelwatch-{name}).")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    given = list(sys.argv[1:] if argv is None else argv)
    if given and given[0] in _ISP_TOOLS:  # before our parser: `tunnelwatch registry --help` is the tool's
        return _isp_tool(given[0], given[1:])
    parser = build_parser()
    args = parser.parse_args(given)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="tunnelwatch: %(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EX_USAGE
    if (getattr(args, "budget", 1) or 1) < 1:
        parser.error("--budget must be at least 1")
    try:
        return int(args.func(args))
    except BrokenPipeError:
        return EX_OK
    except KeyboardInterrupt:
        return 130
