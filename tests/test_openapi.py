"""The contract: /openapi.json is valid OpenAPI 3.1, made from the route table; /docs shows it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

from app.main import create_app
from app.openapi import openapi_document
from app.routes import ROUTES, route_scopes
from tests.conftest import ClientFactory, never_reaches_storage, settings_for


@never_reaches_storage
async def test_get_openapi_returns_valid_openapi_31(client: TestClient[Any, Any]) -> None:
    """The served document passes openapi-spec-validator as OpenAPI 3.1."""
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    validate(doc, cls=OpenAPIV31SpecValidator)


@never_reaches_storage
async def test_openapi_paths_match_route_table(client: TestClient[Any, Any]) -> None:
    """Every route (method and path) is in the document and the document names no other."""
    doc = await (await client.get("/openapi.json")).json()
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    routed = set()
    for route in client.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter", info.get("path"))
        # aiohttp adds HEAD beside every GET it may answer; HEAD is implied by GET in HTTP.
        if route.method != "HEAD":
            routed.add((route.method, path))
    assert routed == documented


@never_reaches_storage
async def test_every_operation_documents_the_431_it_answers(client: TestClient[Any, Any]) -> None:
    """Every documented operation, open ones included, answers 16 KiB of headers with 431 and
    lists 431 among its responses."""
    doc = await (await client.get("/openapi.json")).json()
    padding = {"X-Pad": "p" * 16 * 1024}
    for path, item in doc["paths"].items():
        # A middleware refuses the headers before any handler, so any parameter value will do.
        url = re.sub(r"\{\w+\}", "n", path)
        for method, op in item.items():
            resp = await client.request(method.upper(), url, headers=padding)
            assert resp.status == 431, (method, path)
            assert "431" in op["responses"], (method, path)


async def test_openapi_states_configured_limits(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """The documented list `limit` maximum is this deployment's setting."""
    client = await aiohttp_client(await create_app(settings_for(tmp_path, list_limit_max=37)))
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    limit = (await resp.json())["components"]["parameters"]["limit"]["schema"]
    assert limit["maximum"] == 37


@never_reaches_storage
async def test_get_docs_renders_every_operation_without_remote_assets(
    client: TestClient[Any, Any],
) -> None:
    """/docs is self-contained HTML naming every documented path."""
    doc = await (await client.get("/openapi.json")).json()
    resp = await client.get("/docs")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    for path, item in doc["paths"].items():
        for method in item:
            assert f'id="{method}{path}"' in page, (method, path)
    assert re.search(r"""(src|href)=["']?(https?:)?//""", page) is None
    assert "<script" not in page and "<link" not in page


def test_document_states_the_route_tables_scopes_bodies_and_idempotent_flags(
    tmp_path: Path,
) -> None:
    """Each operation's security, request body schema and Idempotency-Key parameter are the
    route table's, and the document holds no operation the table lacks."""
    doc = openapi_document(settings_for(tmp_path))
    schemas = doc["components"]["schemas"]
    documented = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert documented == {(r.method.lower(), r.path) for r in ROUTES}
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        where = (route.method, route.path)
        assert op["security"] == ([{"bearer": [route.scope]}] if route.scope else []), where
        params = [p["$ref"].rsplit("/", 1)[-1] for p in op["parameters"]]
        assert ("Idempotency-Key" in params) == route.idempotent, where
        if route.body is None:
            assert "requestBody" not in op, where
            continue
        (schema,), components = msgspec.json.schema_components(
            [route.body], ref_template="#/components/schemas/{name}"
        )
        assert op["requestBody"]["content"] == {route.body_media: {"schema": schema}}, where
        assert op["requestBody"]["required"] == route.body_required, where
        assert all(schemas[name] == c for name, c in components.items()), where


@never_reaches_storage
async def test_registered_routes_are_the_route_table(client: TestClient[Any, Any]) -> None:
    """aiohttp's router holds exactly the table's routes and handlers (plus HEAD beside GET),
    and the middleware knows the scope of each."""
    registered = {
        (r.method, r.resource.canonical if r.resource else "?", r.handler)
        for r in client.app.router.routes()
    }
    table = {(r.method, r.path, r.handler) for r in ROUTES}
    heads = {("HEAD", r.path, r.handler) for r in ROUTES if r.method == "GET" and r.head}
    assert registered == table | heads
    scopes = route_scopes()
    assert scopes.keys() == {(method, path) for method, path, _ in registered}
    assert all(scopes[r.method, r.path] == r.scope for r in ROUTES)


async def test_txn_worked_example_moves_stock_once(client: TestClient[Any, Any]) -> None:
    """The document's POST /txn example, a stock move, does what it says: with one in stock
    it takes it and writes the order; sent again, the order exists and ``else`` answers."""
    doc = await (await client.get("/openapi.json")).json()
    operation = doc["paths"]["/txn"]["post"]
    [example] = operation["requestBody"]["content"]["application/json"]["schema"]["examples"]
    assert {"200", "409", "422", "503"} <= operation["responses"].keys()
    async with client.put("/counters/stock", json={"value": 1}) as r:
        assert r.status == 200
    async with client.post("/txn", json=example) as r:
        assert r.status == 200
        moved = await r.json()
    assert moved["succeeded"] is True
    assert [x.get("name") or x.get("id") for x in moved["results"]] == ["stock", "order-9"]
    assert moved["results"][0]["value"] == 0
    async with client.post("/txn", json=example) as r:
        assert r.status == 200
        refused = await r.json()
    assert refused["succeeded"] is False
    assert refused["results"] == [{"name": "stock", "value": 0, "version": 2}]
    async with client.get("/items/order-9") as r:
        assert r.status == 200
        assert (await r.json())["value"] == {"qty": 1}
