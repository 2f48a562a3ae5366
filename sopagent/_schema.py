"""JSON Schemas of the policy and catalog formats, generated from the pydantic models.

The models accept a few shorthands through ``mode="before"`` validators that pydantic cannot
see when it writes a schema (a route given as its target state, ``say`` given as one id, a
response given as its text). They are added here so that editors accept every file the loader
accepts. Mappings keyed by ids also reject keys that are not ids, as the loader does.

`sopagent schema` writes these files; the copies committed under ``schemas/`` are checked
against this module by the test suite.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from sopagent.policy import Catalog, Policy

__all__ = ["SCHEMA_DIALECT", "json_schemas", "render"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
"""The JSON Schema dialect pydantic's schemas are written in."""

_FORMAT_VERSION = 1

Schema = dict[str, Any]


def json_schemas() -> dict[str, Schema]:
    """Return the schemas by file name: ``policy.schema.json`` and ``catalog.schema.json``."""
    policy = Policy.model_json_schema(by_alias=True)
    defs = policy["$defs"]
    defs["Route"] = _route_shorthand(defs["Route"])
    defs["State"] = _say_shorthand(defs["State"])
    defs["EffectCall"] = _effect_shorthand(defs["EffectCall"])
    catalog = Catalog.model_json_schema()
    catalog["$defs"]["Response"] = _response_shorthand(catalog["$defs"]["Response"])
    return {
        "policy.schema.json": _document(
            policy,
            name="policy",
            title="sopagent policy",
            description="A standard operating procedure for sopagent: intents, slots, facts, "
            "states and their routes (a policy YAML file).",
        ),
        "catalog.schema.json": _document(
            catalog,
            name="catalog",
            title="sopagent response catalog",
            description="The approved responses a sopagent policy may say, in one locale "
            "(a catalog YAML file).",
        ),
    }


def render(schema: Schema) -> str:
    """Serialize a schema the way the committed files are written."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def _document(schema: Schema, *, name: str, title: str, description: str) -> Schema:
    body = _closed_id_maps(schema)
    body.pop("title", None)
    body.pop("description", None)
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": f"urn:sopagent:schema:{name}:{_FORMAT_VERSION}",
        "title": title,
        "description": description,
        **body,
    }


def _closed_id_maps(node: Any) -> Any:
    """Return a copy where mappings keyed by ids allow no other keys."""
    if isinstance(node, list):
        return [_closed_id_maps(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _closed_id_maps(value) for key, value in node.items()}
    if "patternProperties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _annotations(schema: Schema) -> Schema:
    """Remove and return the title and description of ``schema``."""
    return {key: schema.pop(key) for key in ("title", "description") if key in schema}


def _one_or_many(schema: Schema) -> Schema:
    """Widen an array of ids to also accept one id."""
    field = copy.deepcopy(schema)
    annotations = _annotations(field)
    return {**annotations, "anyOf": [field["items"], field]}


def _say_shorthand(schema: Schema) -> Schema:
    out = copy.deepcopy(schema)
    out["properties"]["say"] = _one_or_many(out["properties"]["say"])
    return out


def _route_shorthand(schema: Schema) -> Schema:
    target = copy.deepcopy(schema["properties"]["to"]["anyOf"][0])
    target["description"] = "Shorthand for {to: <state>}."
    full = _say_shorthand(schema)
    annotations = _annotations(full)
    return {**annotations, "anyOf": [target, full]}


def _effect_shorthand(schema: Schema) -> Schema:
    """An effect is also written as its name, or as ``{name: {param: value}}``."""
    name = copy.deepcopy(schema["properties"]["name"])
    name.pop("title", None)
    args = copy.deepcopy(schema["properties"]["args"])
    args.pop("title", None)
    bare = {**name, "description": "Shorthand for an effect without arguments."}
    keyed = {
        "type": "object",
        "description": "Shorthand: {<effect>: {<parameter>: <value or {from: name}>}}.",
        "minProperties": 1,
        "maxProperties": 1,
        "patternProperties": {name["pattern"]: {"anyOf": [args, {"type": "null"}]}},
        "additionalProperties": False,
    }
    full = copy.deepcopy(schema)
    annotations = _annotations(full)
    return {**annotations, "anyOf": [bare, keyed, full]}


def _response_shorthand(schema: Schema) -> Schema:
    text = copy.deepcopy(schema["properties"]["text"])
    text.pop("title", None)
    text["description"] = "Shorthand for {text: <text>}."
    full = copy.deepcopy(schema)
    annotations = _annotations(full)
    return {**annotations, "anyOf": [text, full]}
