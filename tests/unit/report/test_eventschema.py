"""The events' JSON Schema rendered from the table in events.py: the published file is current, and the
schema accepts what make_event builds and refuses what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunnelwatch.report.events import KINDS, make_event
from tunnelwatch.report.eventschema import main, schema

SCHEMA_FILE = Path(__file__).resolve().parents[3] / "docs" / "events.schema.json"



def test_checked_in_schema_is_current() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == schema(), \
        "regenerate: python -m tunnelwatch.report.eventschema > docs/events.schema.json"


def test_main_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    main()
    assert json.loads(capsys.readouterr().out) == schema()


def test_every_kind_has_a_closed_definition_with_the_envelope_required() -> None:
    doc = schema()
    defs = doc["$defs"]
    assert isinstance(defs, dict)
    assert doc["oneOf"] == [{"$ref": f"#/$defs/{k}"} for k in KINDS]
    for kind in KINDS:
        d = defs[kind]
        assert d["additionalProperties"] is False
        assert d["properties"]["kind"] == {"const": kind}
        assert {"schema", "id", "kind", "stream", "seq", "device_id", "ts"} <= set(d["required"])


def test_the_rendered_schema_accepts_a_built_event_and_refuses_an_extra_field() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
    ev = json.loads(json.dumps(make_event("daemon_stopped", device_id="box-0001", reason="SIGTERM",
                                          uptime_s=1.5)))
    validator.validate(ev)
    assert not validator.is_valid({**ev, "payload": "GET / HTTP/1.1"})
    assert not validator.is_valid({**ev, "uptime_s": -1})
