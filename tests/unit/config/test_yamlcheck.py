"""The strict YAML reader: every problem located as file:line:col with a hint, all problems of a document
collected, drop-ins merged node by node so problems still point into the file that wrote the value."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from tunnelwatch.config.yamlcheck import ConfigError, YamlReader, closest, merge, relative_path


def _fields(r: YamlReader, text: str, allowed: tuple[str, ...], name: str | None = None) -> dict[str, object]:
    node = r.load(text, name)
    assert node is not None, r.problems
    return dict(r.mapping(node, allowed, "section"))


def test_a_syntax_error_is_located_with_a_hint() -> None:
    r = YamlReader("tw.yaml")
    assert r.load("a: 1\nb: {c: 2\n") is None
    (p,) = r.problems
    assert p.startswith("tw.yaml:3:1: YAML syntax: ") and "hint: an inline {...} or [...] is not closed" in p


def test_a_tab_and_a_control_character_are_located() -> None:
    r = YamlReader("tw.yaml")
    assert r.load("a:\n\tb: 1\n") is None
    assert r.problems[0].startswith("tw.yaml:2:1: ") and "never tabs" in r.problems[0]
    r = YamlReader("tw.yaml")
    assert r.load("a: 1\nb: x\x07y\n") is None
    assert r.problems[0].startswith("tw.yaml:2:5: ")


def test_unknown_and_duplicate_keys_are_all_reported_with_positions() -> None:
    r = YamlReader("tw.yaml")
    out = _fields(r, "queue: 1\nqueu: 2\nfirewal: 3\nqueue: 4\n", ("queue", "firewall"))
    assert set(out) == {"queue"}
    assert r.problems == [
        "tw.yaml:2:1: unknown key 'queu' in section: did you mean 'queue'?",
        "tw.yaml:3:1: unknown key 'firewal' in section: did you mean 'firewall'?",
        "tw.yaml:4:1: duplicate key 'queue' in section: already set on line 1; keep one",
    ]


def test_a_key_nothing_like_the_allowed_ones_lists_them() -> None:
    r = YamlReader("tw.yaml")
    _fields(r, "zzz: 1\n", ("queue", "firewall"))
    assert r.problems == ["tw.yaml:1:1: unknown key 'zzz' in section: allowed: queue, firewall"]


def test_typed_values_and_their_errors() -> None:
    r = YamlReader("tw.yaml")
    f = _fields(r, "n: 70000\nm: 'x'\nok: yes please\nmode: enforec\nlist: 3\nnum: 12\nflag: true\n",
                ("n", "m", "ok", "mode", "list", "num", "flag"))
    assert r.integer(f["n"], "queue.num", 0, 65535) is None  # type: ignore[arg-type]
    assert r.integer(f["m"], "queue.num", 0, 65535) is None  # type: ignore[arg-type]
    assert r.boolean(f["ok"], "ipv6") is None  # type: ignore[arg-type]
    assert r.string(f["mode"], "mode", ("enforce", "monitor")) is None  # type: ignore[arg-type]
    assert r.seq(f["list"], "hooks") == []  # type: ignore[arg-type]
    assert r.integer(f["num"], "queue.num", 0, 65535) == 12  # type: ignore[arg-type]
    assert r.boolean(f["flag"], "ipv6") is True  # type: ignore[arg-type]
    assert r.problems == [
        "tw.yaml:1:4: queue.num must be between 0 and 65535 (got 70000)",
        "tw.yaml:2:4: queue.num must be an integer between 0 and 65535 (got 'x')",
        "tw.yaml:3:5: ipv6 must be true or false (got 'yes please')",
        "tw.yaml:4:7: mode must be one of enforce, monitor (got 'enforec'); did you mean 'enforce'?",
        "tw.yaml:5:7: hooks must be a list, e.g. [a, b] (got '3')",
    ]


def test_an_impossible_date_is_one_located_problem() -> None:
    r = YamlReader("tw.yaml")
    f = _fields(r, "until: 2027-02-30\n", ("until",))
    assert r.date(f["until"], "until") is None  # type: ignore[arg-type]
    (p,) = r.problems
    assert p.startswith("tw.yaml:1:8: until: bad value '2027-02-30': ") and "quote it" in p


def test_a_bare_date_means_the_end_or_the_start_of_that_day() -> None:
    r = YamlReader("tw.yaml")
    f = _fields(r, "a: 2027-01-31\nb: 2027-01-31T10:00:00Z\nc: 9999-12-31\n", ("a", "b", "c"))
    assert r.date(f["a"], "a") == dt.datetime(2027, 2, 1, tzinfo=dt.UTC)  # type: ignore[arg-type]
    assert r.date(f["a"], "a", end_of_day=False) == dt.datetime(2027, 1, 31, tzinfo=dt.UTC)  # type: ignore[arg-type]
    assert r.date(f["b"], "b") == dt.datetime(2027, 1, 31, 10, tzinfo=dt.UTC)  # type: ignore[arg-type]
    assert r.date(f["c"], "c") == dt.datetime.max.replace(tzinfo=dt.UTC)  # type: ignore[arg-type]
    assert r.problems == []


def test_opt_takes_the_default_when_absent_or_invalid() -> None:
    r = YamlReader("tw.yaml")
    f = _fields(r, "n: -1\n", ("n", "m"))
    conv = lambda n: r.integer(n, "n", 0, 9)  # noqa: E731
    assert r.opt(f, "m", conv, 5) == 5  # type: ignore[arg-type]
    assert r.opt(f, "n", conv, 5) == 5 and len(r.problems) == 1  # type: ignore[arg-type]


def test_a_problem_after_merging_points_into_the_drop_in() -> None:
    r = YamlReader("/etc/tw.yaml")
    base = r.load("queue: {num: 1, packets: 8}\nlog: {level: info}\n")
    over = r.load("queue:\n  packets: lots\n", "/etc/tw.d/10-lab.yaml")
    assert base is not None and over is not None
    merged = merge(base, over)
    q = r.mapping(r.mapping(merged, ("queue", "log"), "top")["queue"], ("num", "packets"), "queue")
    assert r.integer(q["num"], "queue.num", 0, 65535) == 1  # kept from the main file
    assert r.integer(q["packets"], "queue.packets", 1, 64) is None
    assert r.problems == ["/etc/tw.d/10-lab.yaml:2:12: queue.packets must be an integer between 1 and 64 "
                          "(got 'lots')"]


def test_a_key_repeated_in_a_drop_in_is_still_reported() -> None:
    r = YamlReader("tw.yaml")
    base = r.load("log: {level: info}\n")
    over = r.load("log: {level: debug, level: warning}\n", "d.yaml")
    assert base is not None and over is not None
    r.mapping(r.mapping(merge(base, over), ("log",), "top")["log"], ("level",), "log")
    assert [p.split(": ", 1)[0] for p in r.problems] == ["d.yaml:1:21"]


def test_relative_paths_follow_the_file_that_wrote_them() -> None:
    r = YamlReader("/etc/tunnelwatch/tw.yaml")
    main = r.load("registry: reg.yaml\n")
    drop = r.load("registry: reg.yaml\n", "/etc/tunnelwatch/tw.d/x.yaml")
    assert main is not None and drop is not None
    assert relative_path(main, "reg.yaml", r.path) == Path("/etc/tunnelwatch/reg.yaml")
    assert relative_path(drop, "reg.yaml", r.path) == Path("/etc/tunnelwatch/tw.d/reg.yaml")
    assert relative_path(main, "/var/lib/reg.yaml", r.path) == Path("/var/lib/reg.yaml")


def test_closest_and_config_error() -> None:
    assert closest("enforec", ("enforce", "monitor")) == "enforce"
    assert closest("xyz", ("enforce", "monitor")) is None
    exc = ConfigError(["a:1:1: one", "a:2:1: two"])
    assert exc.problems == ["a:1:1: one", "a:2:1: two"] and str(exc) == "a:1:1: one\na:2:1: two"
