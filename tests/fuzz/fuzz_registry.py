"""Harness: the registry loader (registry.parse_registry) and lookups in what it accepted.

Arbitrary YAML text gives a list of entries or a ConfigError; accepted entries are looked up for a set of
v4/v6 flows at several instants, which must never raise.
"""

from __future__ import annotations

import datetime as dt

from fuzz._fuzzlib import fuzz_main, instrumented

with instrumented():
    from fuzz._flows import flows
    from tunnelwatch.config.yamlcheck import ConfigError
    from tunnelwatch.policy.registry import Registry, parse_registry

FLOWS = flows()
NOW = [dt.datetime(1970, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 11, 23, tzinfo=dt.UTC),
       dt.datetime(9999, 12, 31, tzinfo=dt.UTC)]


def one_input(data: bytes) -> None:
    """Parse the text as a registry; look flows up in it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    try:
        entries = parse_registry(text, "<fuzz-registry>")
    except ConfigError as exc:
        assert exc.problems, "a ConfigError must say what is wrong"
        return
    reg = Registry(entries)
    for now in NOW:
        reg.active(now)
        for f in FLOWS:
            for protocol in ("openvpn", "wireguard", "sip", ""):
                reg.lookup(f, protocol, now)


if __name__ == "__main__":
    fuzz_main(one_input)
