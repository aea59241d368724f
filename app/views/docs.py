"""The contract endpoints: ``GET /openapi.json`` and ``GET /docs``, a page rendered from it.

Both are built once per app, on first use, from the OpenAPI document (``ApiDocs``). The
page is plain HTML with inline CSS: a table of contents by tag, then per operation its
scope, parameters, body fields, a curl example and its answers, then every schema's fields.
Nothing is fetched from anywhere at run time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cached_property
from html import escape
from typing import Any

import msgspec
from aiohttp import web

Json = dict[str, Any]
_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{border-top:1px solid #ccc;padding-top:1rem}h3{margin-top:2rem}
code,pre{background:#f4f4f4;border-radius:3px}pre{padding:.5rem;overflow-x:auto;font-size:13px}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.2rem .5rem;
text-align:left;vertical-align:top}.m{font-weight:bold;text-transform:uppercase;margin-right:.4rem}
nav ul{margin:.2rem 0 .8rem}nav li{list-style:none}
"""
# Values the curl examples use for path parameters.
_EXAMPLE_PATH = {"name": "visits", "id": "cfg", "filename": "dashboard.js"}
_EXAMPLE_ANY: Any = {"color": "red", "size": 3}


class ApiDocs:
    """The OpenAPI document as served (JSON bytes) and the page, each built on first use."""

    def __init__(self, build: Callable[[], Json]) -> None:
        self._build = build

    @cached_property
    def document(self) -> Json:
        return self._build()

    @cached_property
    def json(self) -> bytes:
        return msgspec.json.encode(self.document)

    @cached_property
    def html(self) -> str:
        return render(self.document)


API_DOCS = web.AppKey("api_docs", ApiDocs)


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this service."""
    return web.Response(body=request.app[API_DOCS].json, content_type="application/json")


async def docs(request: web.Request) -> web.Response:
    """A human-readable API reference rendered from the OpenAPI document."""
    return web.Response(text=request.app[API_DOCS].html, content_type="text/html")


def _text(markdown: str) -> str:
    """Escaped text with ``code`` spans rendered."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(markdown))


def _ref_name(schema: Json) -> str | None:
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _type(schema: Json) -> str:
    """A schema in a few words, with links to named schemas."""
    if name := _ref_name(schema):
        return f'<a href="#schema-{name}">{name}</a>'
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if "const" in schema:
        return f"<code>{escape(json.dumps(schema['const']))}</code>"
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{escape(str(v))}</code>" for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind is None:
        return "any JSON"
    words = [escape(kind if isinstance(kind, str) else " or ".join(kind))]
    if (schema.get("minimum"), schema.get("maximum")) == (-(2**63), 2**63 - 1):
        words.append("(signed 64-bit)")
    elif "minimum" in schema or "maximum" in schema:
        words.append(f"{schema.get('minimum', '…')} to {schema.get('maximum', '…')}")
    if "pattern" in schema:
        words.append(f"matching <code>{escape(schema['pattern'])}</code>")
    if "default" in schema:
        words.append(f"(default {escape(json.dumps(schema['default']))})")
    return " ".join(words)


def _fields(doc: Json, schema: Json) -> str:
    """A table of an object schema's fields (after following a reference)."""
    while name := _ref_name(schema):
        schema = doc["components"]["schemas"][name]
    properties = schema.get("properties")
    if not properties:
        return f"<p>{_type(schema)}{_described(schema)}</p>"
    required = set(schema.get("required", ()))
    rows = [
        f"<tr><td><code>{escape(field)}</code></td><td>{'yes' if field in required else 'no'}"
        f"</td><td>{_type(s)}{_described(s)}</td></tr>"
        for field, s in properties.items()
    ]
    return (
        "<table><tr><th>field</th><th>required</th><th>type</th></tr>" + "".join(rows) + "</table>"
    )


def _described(schema: Json) -> str:
    return f" — {_text(schema['description'])}" if "description" in schema else ""


def _example(doc: Json, schema: Json) -> Any:
    """A plausible value of a schema, for the curl examples."""
    while name := _ref_name(schema):
        schema = doc["components"]["schemas"][name]
    if "properties" in schema:
        return {k: _example(doc, s) for k, s in schema["properties"].items()}
    if schema.get("type") == "integer":
        return schema.get("default", 1)
    return _EXAMPLE_ANY


def _curl(doc: Json, path: str, method: str, op: Json) -> str:
    url = re.sub(r"\{(\w+)\}", lambda m: _EXAMPLE_PATH.get(m[1], "x"), path)
    parts = ["curl"] + ([f"-X {method.upper()}"] if method != "get" else [])
    if op["security"]:
        parts.append('-H "Authorization: Bearer $TOKEN"')
    if body := op.get("requestBody"):
        ((media, content),) = body["content"].items()
        if media != "application/json":
            parts.append(f"-H 'Content-Type: {media}'")
        parts.append(f"-d '{json.dumps(_example(doc, content['schema']))}'")
    return " ".join([*parts, f"localhost:8080{url}"])


def _operation(doc: Json, path: str, method: str, op: Json) -> str:
    scopes = [s for req in op["security"] for s in req.get("bearer", [])]
    out = [
        f'<h3 id="{escape(method + path)}"><span class="m">{method}</span>'
        f"<code>{escape(path)}</code> — {escape(op['summary'])}</h3>",
        f"<p>{_text(op['description']) if op['description'] != op['summary'] else ''}</p>",
        f"<p>Token scope: <b>{escape(', '.join(scopes) or 'none (open)')}</b></p>",
    ]
    params = [doc["components"]["parameters"][_ref_name(p) or ""] for p in op["parameters"]]
    if params:
        out.append("<table><tr><th>parameter</th><th>in</th><th>type</th></tr>")
        for p in params:
            out.append(
                f"<tr><td><code>{escape(p['name'])}</code></td><td>{p['in']}</td>"
                f"<td>{_type(p['schema'])}{_described(p)}</td></tr>"
            )
        out.append("</table>")
    if body := op.get("requestBody"):
        for media, content in body["content"].items():
            optional = "" if body["required"] else " (optional)"
            out.append(f"<p>Body{optional}, <code>{escape(media)}</code>:</p>")
            out.append(_fields(doc, content["schema"]))
    out.append(f"<pre>{escape(_curl(doc, path, method, op))}</pre>")
    out.append("<table><tr><th>status</th><th>meaning</th><th>body</th></tr>")
    for status, answer in op["responses"].items():
        bodies = [
            f"<code>{escape(media)}</code> {_type(content['schema'])}"
            for media, content in answer.get("content", {}).items()
        ]
        out.append(
            f"<tr><td>{status}</td><td>{_text(answer['description'])}</td>"
            f"<td>{'<br>'.join(bodies)}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def render(doc: Json) -> str:
    """The whole reference as one self-contained HTML page."""
    info = doc["info"]
    by_tag: dict[str, list[tuple[str, str, Json]]] = {t["name"]: [] for t in doc["tags"]}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            by_tag[op["tags"][0]].append((path, method, op))
    parts = [
        f"<!doctype html><html><head><meta charset=utf-8><title>{escape(info['title'])} API"
        f"</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(info['title'])} {escape(info['version'])}</h1>",
        f"<p>{_text(info['description'])}</p>",
        '<p>Machine-readable: <a href="openapi.json">openapi.json</a> (OpenAPI 3.1).</p>',
        "<nav><h2>Contents</h2>",
    ]
    for tag in doc["tags"]:
        parts.append(f"<b>{escape(tag['name'])}</b> — {_text(tag['description'])}<ul>")
        parts.extend(
            f'<li><a href="#{escape(method + path)}"><span class="m">{method}</span>'
            f"<code>{escape(path)}</code></a> {escape(op['summary'])}</li>"
            for path, method, op in by_tag[tag["name"]]
        )
        parts.append("</ul>")
    parts.append('<a href="#schemas">Schemas</a></nav>')
    for tag in doc["tags"]:
        parts.append(
            f"<h2>{escape(tag['name'].capitalize())}</h2><p>{_text(tag['description'])}</p>"
        )
        parts.extend(_operation(doc, path, method, op) for path, method, op in by_tag[tag["name"]])
    parts.append('<h2 id="schemas">Schemas</h2>')
    for name, schema in doc["components"]["schemas"].items():
        parts.append(f'<h3 id="schema-{escape(name)}">{escape(name)}</h3>')
        parts.append(f"<p>{_text(schema.get('description', ''))}</p>{_fields(doc, schema)}")
    parts.append("</body></html>")
    return "\n".join(parts)
