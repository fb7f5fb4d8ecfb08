"""The strict YAML reader shared by the run configuration and the registry: located problems with hints.

Owns how a technician's mistake is reported: every problem is `file:line:col: message` followed by a
hint (the closest allowed key for a typo, the allowed values of an enum, the valid range of a number),
and every problem of a document is collected before anything is refused. Documents are composed (not
constructed) so positions survive; drop-in files are merged node by node (`merge`) so a problem found
after merging still points into the file that introduced the value.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


class ConfigError(Exception):
    """A configuration file is invalid; `problems` holds one `file:line:col: message` per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def kind(node: Node) -> str:
    """What a node holds, for "(got ...)" hints that never echo a whole sub-document."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    text = str(node.value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def closest(word: str, choices: tuple[str, ...] | list[str]) -> str | None:
    """The allowed word a typo most likely meant, if any is close enough."""
    hits = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return hits[0] if hits else None


def _syntax_hint(problem: str) -> str:
    if "\\t" in problem or "tab" in problem:
        return "indent with spaces, never tabs"
    if "mapping values are not allowed" in problem:
        return "a value containing ': ' must be quoted, or a key is indented too far"
    if "expected ',' or '}'" in problem or "expected ',' or ']'" in problem or "flow" in problem:
        return "an inline {...} or [...] is not closed, or a comma is missing"
    return "check the indentation and quoting around this position"


def _reader_problem(name: str, text: str, exc: yaml.reader.ReaderError) -> str:
    """A located problem for a character YAML does not allow (control characters, lone surrogates)."""
    pos = exc.position if isinstance(exc.position, int) and 0 <= exc.position <= len(text) else 0
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    char = exc.character if isinstance(exc.character, int) else 0
    return (f"{name}:{line}:{col}: YAML syntax: character U+{char:04X} is not allowed in YAML; "
            "hint: remove it (a control character pasted by mistake?) or write it as an escape inside a "
            "double-quoted string")


class YamlReader:
    """Typed access to composed YAML documents that records located problems instead of raising."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[str] = []
        self._loader = yaml.SafeLoader("")

    def load(self, text: str, name: str | None = None) -> Node | None:
        """Compose one document whose marks carry `name` (default: the reader's path); syntax errors
        become located problems."""
        name = name or self.path
        try:
            # the reader checks every character up front, so a control character raises already here
            loader = yaml.SafeLoader(text)
        except yaml.reader.ReaderError as exc:
            self.problems.append(_reader_problem(name, text, exc))
            return None
        loader.name = name  # every node's start_mark now says which file it came from
        try:
            return loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f"{mark.line + 1}:{mark.column + 1}" if mark is not None else "1:1"
            problem = exc.problem or "invalid YAML"
            ctx = ""
            if exc.context:
                cm = exc.context_mark
                started = f" started on line {cm.line + 1}" if cm is not None else ""
                ctx = f" ({exc.context}{started})"
            hint = _syntax_hint(problem)
            self.problems.append(f"{name}:{where}: YAML syntax: {problem}{ctx}; hint: {hint}")
        except yaml.YAMLError as exc:
            self.problems.append(f"{name}:1:1: YAML: {exc}")
        finally:
            loader.dispose()
        return None

    def err(self, node: Node, msg: str) -> None:
        """Record a problem at the node's position (in the file the node came from)."""
        m = node.start_mark
        name = m.name if m.name and not m.name.startswith("<") else self.path
        self.problems.append(f"{name}:{m.line + 1}:{m.column + 1}: {msg}")

    def mapping(self, node: Node, allowed: tuple[str, ...], what: str) -> dict[str, Node]:
        """Keys -> value nodes of a mapping; unknown and duplicate keys are problems."""
        if not isinstance(node, MappingNode):
            self.err(node, f"{what} must be a mapping (got {kind(node)})")
            return {}
        out: dict[str, Node] = {}
        first: dict[str, Node] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, ScalarNode) else None
            if key not in allowed:
                guess = closest(str(key), allowed)
                hint = f"did you mean {guess!r}?" if guess else f"allowed: {', '.join(allowed)}"
                self.err(k, f"unknown key {key!r} in {what}: {hint}")
            elif key in out:
                line = first[key].start_mark.line + 1
                self.err(k, f"duplicate key {key!r} in {what}: already set on line {line}; keep one")
            else:
                out[key] = v
                first[key] = k
        return out

    def seq(self, node: Node, what: str) -> list[Node]:
        """Items of a sequence."""
        if not isinstance(node, SequenceNode):
            self.err(node, f"{what} must be a list, e.g. [a, b] (got {kind(node)})")
            return []
        return list(node.value)

    def value(self, node: Node, what: str = "") -> Any:
        """The plain Python value of a scalar node (None for non-scalars); `what` names it in errors."""
        if not isinstance(node, ScalarNode):
            return None
        try:
            return self._loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:  # e.g. 2027-02-30 looks like a date
            where = f"{what}: " if what else ""
            self.err(node, f"{where}bad value {kind(node)}: {exc}; "
                           "hint: fix the value, or quote it if it is text")
            return None

    def _typed(self, node: Node, what: str = "") -> tuple[bool, Any]:
        # (False, None) when the scalar itself is broken (already reported): no second message about it
        before = len(self.problems)
        v = self.value(node, what)
        return len(self.problems) == before, v

    def integer(self, node: Node, what: str, lo: int, hi: int) -> int | None:
        """An integer within [lo, hi]."""
        ok, v = self._typed(node, what)
        if not ok:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            self.err(node, f"{what} must be an integer between {lo} and {hi} (got {kind(node)})")
            return None
        if not lo <= v <= hi:
            self.err(node, f"{what} must be between {lo} and {hi} (got {v})")
            return None
        return v

    def boolean(self, node: Node, what: str) -> bool | None:
        """true or false."""
        ok, v = self._typed(node, what)
        if not ok:
            return None
        if not isinstance(v, bool):
            self.err(node, f"{what} must be true or false (got {kind(node)})")
            return None
        return v

    def string(self, node: Node, what: str, choices: tuple[str, ...] = ()) -> str | None:
        """A non-empty string, optionally one of `choices`."""
        ok, v = self._typed(node, what)
        if not ok:
            return None
        if not isinstance(v, str) or not v:
            hint = f"one of {', '.join(choices)}" if choices else "a non-empty string"
            self.err(node, f"{what} must be {hint} (got {kind(node)})")
            return None
        if choices and v not in choices:
            guess = closest(v, choices)
            extra = f"; did you mean {guess!r}?" if guess else ""
            self.err(node, f"{what} must be one of {', '.join(choices)} (got {v!r}){extra}")
            return None
        return v

    def date(self, node: Node, what: str, end_of_day: bool = True) -> dt.datetime | None:
        """A YAML date or timestamp as an aware UTC datetime; a bare date means the end (or start) of it."""
        ok, v = self._typed(node, what)
        if not ok:
            return None
        if isinstance(v, dt.datetime):
            return v if v.tzinfo else v.replace(tzinfo=dt.UTC)
        if isinstance(v, dt.date):
            start = dt.datetime(v.year, v.month, v.day, tzinfo=dt.UTC)
            if not end_of_day:
                return start
            if v == dt.date.max:  # the day after 9999-12-31 does not exist: the calendar's end will do
                return dt.datetime.max.replace(tzinfo=dt.UTC)
            return start + dt.timedelta(days=1)
        self.err(node, f"{what} must be a date (YYYY-MM-DD, e.g. 2027-01-31) or timestamp (got {kind(node)})")
        return None

    def opt(self, fields: dict[str, Node], key: str, conv: Callable[[Node], Any], default: Any) -> Any:
        """conv(fields[key]) when present and valid, else `default`."""
        if key not in fields:
            return default
        v = conv(fields[key])
        return default if v is None else v


def relative_path(node: Node, text: str, path: str) -> Path:
    """A path from the config, relative to the file that wrote it (a drop-in or the main file)."""
    p = Path(text)
    if p.is_absolute():
        return p
    name = node.start_mark.name
    return Path(name if name and not name.startswith("<") else path).parent / p


def merge(base: Node, over: Node) -> Node:
    """Deep-merge a drop-in document into the main one: mappings merge key by key, anything else
    (scalars, lists) is replaced. A key repeated inside `over` is kept twice so the reader reports it."""
    if not (isinstance(base, MappingNode) and isinstance(over, MappingNode)):
        return over
    seen: set[str] = set()
    for k, v in over.value:
        key = k.value if isinstance(k, ScalarNode) else None
        idx = next((i for i, (bk, _) in enumerate(base.value)
                    if isinstance(bk, ScalarNode) and bk.value == key), None)
        if key is None or key in seen or idx is None:
            base.value.append((k, v))
        else:
            base.value[idx] = (k, merge(base.value[idx][1], v))
        if key is not None:
            seen.add(key)
    return base
