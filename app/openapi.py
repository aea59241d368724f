"""The OpenAPI 3.1 document, built from the route table (``app.routes``) and the body structs.

Paths, scopes, bodies and Idempotency-Key flags come from the table, schemas from the
msgspec structs; only the error statuses' wording and the shared parameters are written
here. Limits come from the settings, so the document states what this deployment accepts.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from typing import Any

import msgspec

from app.errors import STATUS_HEADERS, STATUS_MEANINGS
from app.routes import HEADERS, ROUTES, TAGS, Answer, Route
from app.settings import Settings
from app.views.bodies import Name, Problem
from app.views.dashboard import ASSETS

Json = dict[str, Any]
PROBLEM = "application/problem+json"
_SCHEMA_REF = "#/components/schemas/{name}"


def _param(name: str, where: str, schema: Json, description: str = "", **more: Any) -> Json:
    return {"name": name, "in": where, "schema": schema, "description": description, **more}


def _parameters(settings: Settings, name: Json) -> Json:
    limit = {"type": "integer", "minimum": 1, "maximum": settings.list_limit_max, "default": 100}
    watch, names = {"style": "form", "explode": True}, {"type": "array", "items": name}
    tags = {"type": "string", "description": 'Entity tags such as "3", or *.'}
    revision = {"type": "integer", "minimum": 0}
    wait = {"type": "number", "minimum": 0, "maximum": settings.changes_max_wait, "default": 0}
    params = [
        _param("name", "path", name, "The counter's or lock's name.", required=True),
        _param("id", "path", name, "The record's id.", required=True),
        _param("filename", "path", {"enum": sorted(ASSETS)}, "An asset's name.", required=True),
        _param("prefix", "query", name, "Only names starting with this."),
        _param("after", "query", name, "Only names sorting after this (a page's `next`)."),
        _param("limit", "query", limit, "The most to list."),
        _param("counter", "query", names, "A counter to watch; repeat for several.", **watch),
        _param("version", "path", {"type": "integer", "minimum": 1}, "A version.", required=True),
        _param("since", "query", revision, "Only what was committed after this revision."),
        _param("Last-Event-ID", "header", revision, "Resume a stream after this event id."),
        _param("before", "query", revision, "Only versions below this revision (a `next`)."),
        _param("kind", "query", {"enum": ["counter", "item", "lock"]},
               "Only counters, records, or locks."),
        _param("wait", "query", wait, "Seconds to wait for an entry when there is none yet."),
        _param("item", "query", names, "A record to watch; repeat for several.", **watch),
        _param("If-Match", "header", tags, "Change only the version named."),
        _param("If-None-Match", "header", tags, "`*`: create only."),
        _param("Lockstep-Fence", "header", {"type": "string", "pattern": "^.+=[1-9][0-9]*$"},
               "`<lock>=<token>`: write only while that lock is held with that token, else 412 "
               "`fence-stale` and nothing is written; several separated by commas."),
        _param("Idempotency-Key", "header", {"type": "string", "minLength": 1, "maxLength": 255},
               "Makes the request exactly-once: a repeat with the same key and request gets the "
               "stored answer (Idempotent-Replayed: true) until the key expires."),
    ]  # fmt: skip
    return {p["name"]: p for p in params}


def _answer(answer: Answer, idempotent: bool, schema: dict[Any, Json]) -> Json:
    headers = [*answer.headers, *(["Idempotent-Replayed"] if idempotent else [])]
    out: Json = {"description": answer.description}
    if headers:
        out["headers"] = {h: HEADERS[h] for h in headers}
    if answer.content:
        out["content"] = {m: {"schema": schema[t]} for m, t in answer.content.items()}
    for media in out.get("content", {}).values() if answer.events else ():
        media["x-events"] = {
            e.__name__.removesuffix("Event").lower(): schema[e] for e in answer.events
        }
    return out


def _operation(route: Route, schema: dict[Any, Json]) -> Json:
    errors = {*route.errors, 431}
    # With tokens on, the middleware may refuse the token (or two Authorization headers).
    errors |= {400, 401, 403, 503} if route.scope is not None else set()
    errors |= {409, 422} if route.idempotent else set()
    responses = {str(a.status): _answer(a, route.idempotent, schema) for a in route.answers}
    for status in sorted(errors):
        responses[str(status)] = {
            "description": STATUS_MEANINGS[status],
            "headers": {h: HEADERS[h] for h in STATUS_HEADERS.get(status, ())},
            "content": {PROBLEM: {"schema": schema[Problem]}},
        }
    params = [*re.findall(r"\{(\w+)\}", route.path), *route.params]
    params += ["Idempotency-Key"] if route.idempotent else []
    op: Json = {
        "tags": [route.tag],
        "summary": route.summary,
        "description": route.description or route.summary,
        "security": [] if route.scope is None else [{"bearer": [route.scope]}],
        "parameters": [{"$ref": f"#/components/parameters/{p}"} for p in params],
        "responses": dict(sorted(responses.items())),
    }
    if route.body is not None:
        content = {route.body_media: {"schema": schema[route.body]}}
        op["requestBody"] = {"required": route.body_required, "content": content}
    return op


def openapi_document(settings: Settings) -> Json:
    """The whole API as an OpenAPI 3.1 document."""
    types: list[Any] = [Problem, Name, *(r.body for r in ROUTES if r.body is not None)]
    types += [t for r in ROUTES for a in r.answers for t in (*a.content.values(), *a.events)]
    types = list(dict.fromkeys(types))
    found, schemas = msgspec.json.schema_components(types, ref_template=_SCHEMA_REF)
    schema = dict(zip(types, found, strict=True))
    paths: Json = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schema)
    bearer = {
        "type": "http",
        "scheme": "bearer",
        "description": "Tokens from `lockstep token new`, each of one scope: read (GET), "
        "write (changes, and read) or metrics (/metrics).",
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "lockstep",
            "version": version("lockstep"),
            "description": "Counters and JSON records over HTTP that stay correct under any "
            "concurrency. Errors are RFC 9457 problem bodies. With tokens on, every operation "
            "but the probes and the dashboard needs `Authorization: Bearer <token>`.",
        },
        "tags": [{"name": n, "description": d} for n, d in TAGS.items()],
        "security": [{"bearer": ["read"]}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": bearer},
            "parameters": _parameters(settings, schema[Name]),
            "schemas": schemas,
        },
    }
