"""Harness: the operator endpoint-list loader (endpoints.py): YAML lists and text lists, then lookups.

Byte 0 picks the format (even: YAML, odd: text with one address or CIDR per line); the rest is the file.
Only ConfigError may escape the parsers; a loaded list must index and match flows without raising.
"""

from __future__ import annotations

from pathlib import Path

from fuzz._fuzzlib import fuzz_main, instrumented

with instrumented():
    from fuzz._flows import flows
    from tunnelwatch.classify.endpoints import EndpointIndex, ListSource, parse_text_list, parse_yaml_list
    from tunnelwatch.config.yamlcheck import ConfigError

FLOWS = flows()
SOURCE = ListSource(Path("/nonexistent/fuzz-list.txt"), "text", "fuzz", "vpn_tunnel", "listed")


def one_input(data: bytes) -> None:
    """Parse one list file and look flows up in it."""
    if not data:
        return
    try:
        text = data[1:].decode("utf-8")
    except UnicodeDecodeError:
        text = data[1:].decode("latin-1")
    try:
        lst = parse_text_list(text, SOURCE) if data[0] & 1 else parse_yaml_list(text, "/nonexistent/l.yaml")
    except ConfigError as exc:
        assert exc.problems
        return
    index = EndpointIndex([lst, lst])
    for f in FLOWS:
        v = index.match(f)
        assert v is None or v.confidence == "list"


if __name__ == "__main__":
    fuzz_main(one_input)
