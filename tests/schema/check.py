#!/usr/bin/env python3
"""The independent side of the event contract's tests (tests/it/schema.rs runs it).

It validates events with python-jsonschema (Debian's python3-jsonschema, draft 2020-12) against
the schemas in schemas/events/, and reads the AsyncAPI document with PyYAML, so that the Rust
tests compare the worker's own parser with a validator that shares no code with it.

    check.py schemas SCHEMA_DIR            every schema checked against the draft 2020-12
                                           meta-schema; prints {file: {"id", "type"}}
    check.py events SCHEMA_DIR FILE...     each event of each file (one event, or each item of
                                           a top-level array, as `rpec-notify publish` reads
                                           files) validated against <type>.schema.json; prints
                                           [{"file", "position", "type", "errors": [{"field",
                                           "keyword", "message"}]}]
    check.py asyncapi SPEC_SCHEMA FILE     the AsyncAPI document (YAML) validated against the
                                           specification's JSON Schema (3.0.0-without-$id.json
                                           of the @asyncapi/specs package); prints {"document":
                                           the document as JSON, "errors": [...]}

A field is named as the worker names it: data.sections[0].heading. An event whose type has no
schema file is refused at "type", as the worker refuses a type it does not handle.
"""

import json
import pathlib
import re
import sys

import jsonschema
import yaml
from jsonschema import Draft202012Validator

REQUIRED = re.compile(r"^'(.+)' is a required property$")


def load_schemas(schema_dir):
    schemas = {}
    for path in sorted(pathlib.Path(schema_dir).glob("*.schema.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
        schemas[path.name] = schema
    return schemas


def field_name(parts):
    name = ""
    for part in parts:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += ("." if name else "") + part
    return name


def errors_of(validator, event):
    found = []
    for error in validator.iter_errors(event):
        parts = list(error.absolute_path)
        if error.validator == "required":
            match = REQUIRED.match(error.message)
            if match:
                parts.append(match.group(1))
        found.append(
            {
                "field": field_name(parts),
                "keyword": error.validator,
                # The message can quote the value: only the tests read it, on their own fixtures.
                "message": error.message[:300],
            }
        )
    return found


def check_events(schema_dir, files):
    schemas = load_schemas(schema_dir)
    store = {s["$id"]: s for s in schemas.values()}
    envelope = schemas["envelope.schema.json"]

    def validator_for(schema):
        resolver = jsonschema.RefResolver.from_schema(schema, store=store)
        return Draft202012Validator(schema, resolver=resolver)

    by_type = {}
    for name, schema in schemas.items():
        const = schema.get("properties", {}).get("type", {}).get("const")
        if const is not None:
            by_type[const] = validator_for(schema)
    envelope_validator = validator_for(envelope)

    results = []
    for file in files:
        value = json.loads(pathlib.Path(file).read_bytes())
        events = value if isinstance(value, list) else [value]
        for i, event in enumerate(events):
            event_type = event.get("type") if isinstance(event, dict) else None
            if isinstance(event_type, str) and event_type in by_type:
                errors = errors_of(by_type[event_type], event)
            else:
                errors = errors_of(envelope_validator, event)
                if isinstance(event_type, str):
                    errors.append(
                        {"field": "type", "keyword": "schema", "message": "no schema for this type"}
                    )
            results.append(
                {
                    "file": file,
                    "position": i + 1 if isinstance(value, list) else None,
                    "type": event_type if isinstance(event_type, str) else None,
                    "errors": errors,
                }
            )
    return results


def check_asyncapi(spec_schema, file):
    document = yaml.safe_load(pathlib.Path(file).read_text(encoding="utf-8"))
    spec = json.loads(pathlib.Path(spec_schema).read_text(encoding="utf-8"))
    resolver = jsonschema.RefResolver.from_schema(spec)
    # The specification's schema holds JSON Schema's own meta-schema, whose "$id" properties
    # python-jsonschema 4.10 mistakes for ids while it searches for one; every reference in
    # this form of the schema is local ("#/definitions/..."), so no search is needed.
    resolver._find_in_subschemas = lambda url: None
    validator = jsonschema.Draft7Validator(spec, resolver=resolver)
    errors = [
        {"field": field_name(list(e.absolute_path)), "message": e.message[:300]}
        for e in validator.iter_errors(document)
    ]
    return {"document": document, "errors": errors}


def main(argv):
    if len(argv) >= 2 and argv[0] == "schemas":
        schemas = load_schemas(argv[1])
        out = {
            name: {
                "id": s.get("$id"),
                "type": s.get("properties", {}).get("type", {}).get("const"),
            }
            for name, s in schemas.items()
        }
    elif len(argv) >= 2 and argv[0] == "events":
        out = check_events(argv[1], argv[2:])
    elif len(argv) == 3 and argv[0] == "asyncapi":
        out = check_asyncapi(argv[1], argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    json.dump(out, sys.stdout, indent=1, default=str)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
