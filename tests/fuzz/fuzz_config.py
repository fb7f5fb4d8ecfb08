"""Harness: the YAML run configuration loader (runconfig + yamlcheck + appconfig + reportconfig + the
endpoints section): arbitrary YAML text, plus drop-ins, gives a RunConfig or a ConfigError, nothing else.

Input: UTF-8 text (latin-1 when not UTF-8); lines `#--dropin` split it into the main file and drop-ins.
A parsed config is also summarised and compared with itself, as a reload does.
"""

from __future__ import annotations

from fuzz._fuzzlib import fuzz_main, instrumented

with instrumented():
    from tunnelwatch.config.runconfig import parse_config, report_summary, restart_needed, summary
    from tunnelwatch.config.yamlcheck import ConfigError

#: a path no file exists under, so relative paths in the input resolve to nothing on this machine
PATH = "/nonexistent/tunnelwatch-fuzz/tunnelwatch.yaml"


def text_of(data: bytes) -> str:
    """Decode like a config file is read, but keep undecodable input (latin-1) instead of dropping it."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def one_input(data: bytes) -> None:
    """Parse the text as a configuration with drop-ins."""
    parts = text_of(data).split("\n#--dropin\n")
    dropins = [(f"{PATH}.d/{i:02d}.yaml", t) for i, t in enumerate(parts[1:4])]
    try:
        cfg = parse_config(parts[0], PATH, dropins)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems), exc.problems
        return
    summary(cfg)
    report_summary(cfg.report)
    assert restart_needed(cfg, cfg) == []


if __name__ == "__main__":
    fuzz_main(one_input)
