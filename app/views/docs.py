"""The contract endpoints: ``GET /openapi.json`` and ``GET /docs``, a page rendered from it.

The page is plain HTML built on the server from the same document, with inline CSS only:
nothing is fetched from anywhere at run time.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from aiohttp import web

from app.openapi import openapi_document
from app.settings import SETTINGS
from app.views.common import json_response

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{border-top:1px solid #ccc;padding-top:1rem}code,pre{background:#f4f4f4;border-radius:3px}
pre{padding:.5rem;overflow-x:auto;font-size:13px}.m{font-weight:bold;text-transform:uppercase}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}
"""


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this service."""
    return json_response(openapi_document(request.app[SETTINGS]))


async def docs(request: web.Request) -> web.Response:
    """A human-readable API reference rendered from the OpenAPI document."""
    return web.Response(
        text=render(openapi_document(request.app[SETTINGS])), content_type="text/html"
    )


def _resolve(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        kind, name = node["$ref"].split("/")[-2:]
        node = doc["components"][kind][name]
    return node


def _schema(doc: dict[str, Any], media: dict[str, Any]) -> str:
    names = ", ".join(f"<code>{escape(m)}</code>" for m in media)
    schemas = [m.get("schema", {}) for m in media.values()]
    shown = [
        s["$ref"].rsplit("/", 1)[-1] if "$ref" in s else json.dumps(s, indent=1) for s in schemas
    ]
    return f"{names}: <code>{escape(' | '.join(shown))}</code>"


def _operation(doc: dict[str, Any], path: str, method: str, op: dict[str, Any]) -> str:
    scopes = [s for req in op.get("security", []) for s in req.get("bearer", [])]
    out = [
        f'<h3 id="{escape(method + path)}"><span class="m">{escape(method)}</span> '
        f"<code>{escape(path)}</code> — {escape(op['summary'])}</h3>",
        f"<p>{escape(op['description'])}</p>",
        f"<p>Token scope: <b>{escape(', '.join(scopes) or 'none (open)')}</b></p>",
    ]
    params = [_resolve(doc, p) for p in op.get("parameters", [])]
    if params:
        out.append("<table><tr><th>parameter</th><th>in</th><th>schema</th></tr>")
        for p in params:
            schema = escape(json.dumps(p["schema"]))
            out.append(f"<tr><td>{escape(p['name'])}</td><td>{p['in']}</td><td>{schema}</td></tr>")
        out.append("</table>")
    if "requestBody" in op:
        out.append(f"<p>Body: {_schema(doc, op['requestBody']['content'])}</p>")
    out.append("<table><tr><th>status</th><th>meaning</th><th>body</th></tr>")
    for status, resp in op["responses"].items():
        body = _schema(doc, resp["content"]) if "content" in resp else ""
        out.append(
            f"<tr><td>{status}</td><td>{escape(resp['description'])}</td><td>{body}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def render(doc: dict[str, Any]) -> str:
    """The whole reference as one self-contained HTML page."""
    info = doc["info"]
    parts = [
        f"<!doctype html><html><head><meta charset=utf-8><title>{escape(info['title'])} API"
        f"</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(info['title'])} {escape(info['version'])}</h1>",
        f"<p>{escape(info['description'])}</p>",
        '<p>Machine-readable: <a href="openapi.json">openapi.json</a> (OpenAPI 3.1).</p>',
    ]
    for path, item in doc["paths"].items():
        parts.append(f"<h2><code>{escape(path)}</code></h2>")
        parts.extend(_operation(doc, path, m, op) for m, op in item.items())
    parts.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        parts.append(f"<h3>{escape(name)}</h3><pre>{escape(json.dumps(schema, indent=2))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
