"""The events' JSON Schema (draft 2020-12), rendered from the one table in events.py.

`python -m tunnelwatch.report.eventschema > docs/events.schema.json` regenerates the published file; a test
checks that it matches.
"""

from __future__ import annotations

import json

from tunnelwatch.report.events import (
    ENVELOPE,
    FIELD_SPECS,
    KEY_PATTERN,
    KIND_SPECS,
    MAX_INT,
    SCHEMA_VERSION,
    TIME_PATTERN,
    Field,
)


def _field_schema(f: Field, enum: tuple[str, ...] | None = None) -> dict[str, object]:
    d: dict[str, object] = {"description": f.doc}
    if f.type == "modes":
        d.update(type="object", maxProperties=f.items, propertyNames={"pattern": KEY_PATTERN},
                 additionalProperties={"enum": list(f.enum)})
        return d
    if enum or f.enum:
        d["enum"] = list(enum or f.enum)
        return d
    if f.type == "str":
        d.update(type="string", minLength=1, maxLength=f.max_len, pattern=f.pattern)
    elif f.type == "int":
        d.update(type="integer", minimum=f.minimum, maximum=f.maximum)
    elif f.type == "num":
        d.update(type="number", minimum=0)
    elif f.type == "bool":
        d["type"] = "boolean"
    elif f.type == "time":
        d.update(type="string", format="date-time", pattern=TIME_PATTERN)
    elif f.type == "strs":
        d.update(type="array", maxItems=f.items,
                 items={"type": "string", "minLength": 1, "maxLength": f.max_len, "pattern": f.pattern})
    else:
        value = {"type": "integer", "minimum": 0, "maximum": MAX_INT} if f.type == "counts" \
            else {"type": "number", "minimum": 0}
        d.update(type="object", maxProperties=f.items, propertyNames={"pattern": KEY_PATTERN},
                 additionalProperties=value)
    return d


def schema() -> dict[str, object]:
    """The JSON Schema (draft 2020-12) of every event; docs/events.schema.json is this, rendered."""
    defs: dict[str, object] = {}
    for kind, spec in KIND_SPECS.items():
        props: dict[str, object] = {n: {"$ref": f"#/$defs/field/{n}"} for n in ENVELOPE}
        props["kind"] = {"const": kind}
        for n in (*spec.required, *spec.optional):
            narrow = spec.enums.get(n)
            props[n] = _field_schema(FIELD_SPECS[n], narrow) if narrow else {"$ref": f"#/$defs/field/{n}"}
        defs[kind] = {"description": spec.doc, "type": "object", "properties": props,
                      "required": [*ENVELOPE, *spec.required], "additionalProperties": False}
    used = set(ENVELOPE) | {n for s in KIND_SPECS.values() for n in (*s.required, *s.optional)}
    defs["field"] = {n: _field_schema(f) for n, f in FIELD_SPECS.items() if n in used}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:tunnelwatch:events:{SCHEMA_VERSION}",
        "title": f"tunnelwatch event, schema version {SCHEMA_VERSION}",
        "description": "One report from a box: metadata only, never packet payload. See docs/events.md.",
        "oneOf": [{"$ref": f"#/$defs/{k}"} for k in KIND_SPECS],
        "$defs": defs,
    }


def main() -> None:
    """Print the JSON Schema (`python -m tunnelwatch.report.eventschema` > docs/events.schema.json)."""
    print(json.dumps(schema(), indent=2))


if __name__ == "__main__":
    main()
