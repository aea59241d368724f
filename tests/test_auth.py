"""Access control in process: 401/403 rules, scopes, live reload, and the route table sweep."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.auth import exposure_warning
from app.main import create_app
from app.openapi import openapi_document
from app.routes import ROUTES
from app.settings import Settings
from app.startup import StartupError
from app.tokens import GRANTS, Scope, add_token, revoke_token
from tests.conftest import ClientFactory, settings_for


class Tokens:
    """A tokens file holding one token of each scope."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.read = add_token(path, "reader", "read")
        self.write = add_token(path, "writer", "write")
        self.metrics = add_token(path, "scraper", "metrics")

    @staticmethod
    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    return Tokens(tmp_path / "tokens.json")


@pytest.fixture
def secured(tmp_path: Path, tokens: Tokens) -> Settings:
    return settings_for(tmp_path, tokens_file=tokens.path, tokens_check_interval=0)


@pytest.fixture
async def api(aiohttp_client: ClientFactory, secured: Settings) -> TestClient[Any, Any]:
    return await aiohttp_client(await create_app(secured))


async def test_request_without_token_is_refused_with_challenge(api: TestClient[Any, Any]) -> None:
    """A protected endpoint without Authorization answers 401 with a Bearer challenge."""
    resp = await api.get("/counters")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["status"] == 401


async def test_request_with_unknown_token_is_refused(api: TestClient[Any, Any]) -> None:
    """An unknown token answers 401 with error="invalid_token" and changes nothing."""
    resp = await api.post("/counters/x/increment", headers=Tokens.bearer("lst_nope"))
    assert resp.status == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert (await resp.json())["type"] == "urn:lockstep:problem:unauthenticated"


async def test_request_with_other_scheme_is_refused(
    api: TestClient[Any, Any], tokens: Tokens
) -> None:
    """A valid token under another scheme than Bearer does not authenticate."""
    resp = await api.get("/counters", headers={"Authorization": f"Basic {tokens.write}"})
    assert resp.status == 401


async def test_read_token_reads(api: TestClient[Any, Any], tokens: Tokens) -> None:
    """A read token may list and get."""
    resp = await api.get("/counters", headers=Tokens.bearer(tokens.read))
    assert resp.status == 200
    assert await resp.json() == {"items": [], "next": None}


async def test_write_token_writes_and_reads(api: TestClient[Any, Any], tokens: Tokens) -> None:
    """A write token may change state and read it back."""
    auth = Tokens.bearer(tokens.write)
    resp = await api.post("/counters/x/increment", headers=auth)
    assert resp.status == 200
    resp = await api.get("/counters/x", headers=auth)
    assert resp.status == 200
    assert (await resp.json())["value"] == 1


async def test_access_with_read_token_is_forbidden(
    api: TestClient[Any, Any], tokens: Tokens
) -> None:
    """GET /access counts, so a read token gets 403 insufficient_scope and nothing is counted."""
    resp = await api.get("/access", headers=Tokens.bearer(tokens.read))
    assert resp.status == 403
    assert 'error="insufficient_scope", scope="write"' in resp.headers["WWW-Authenticate"]
    resp = await api.get("/counters/access", headers=Tokens.bearer(tokens.read))
    assert resp.status == 404


async def test_probes_answer_without_token(api: TestClient[Any, Any]) -> None:
    """/healthz and /readyz stay open for orchestrators."""
    for path in ("/healthz", "/readyz"):
        resp = await api.get(path)
        assert resp.status == 200, path


async def test_unknown_path_needs_token(api: TestClient[Any, Any]) -> None:
    """An unknown path answers 401, not 404, so the route table cannot be probed anonymously."""
    resp = await api.get("/nothing-here")
    assert resp.status == 401


async def test_route_added_after_create_app_needs_its_methods_scope(
    aiohttp_client: ClientFactory, secured: Settings, tokens: Tokens
) -> None:
    """A route outside the table is guarded too: read scope for GET, write for POST."""

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = await create_app(secured)
    app.router.add_get("/extra", hello)
    app.router.add_post("/extra", hello)
    api = await aiohttp_client(app)
    read, write = Tokens.bearer(tokens.read), Tokens.bearer(tokens.write)
    assert (await api.get("/extra")).status == 401
    assert (await api.get("/extra", headers=read)).status == 200
    assert (await api.post("/extra", headers=read)).status == 403
    assert (await api.post("/extra", headers=write)).status == 200


# GET routes that change state, so they need the write scope (GET /access).
WRITING_GETS = {r.path for r in ROUTES if r.method == "GET" and r.scope == "write"}


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


async def test_read_token_cannot_change_anything_on_any_route(
    api: TestClient[Any, Any], tokens: Tokens
) -> None:
    """Every route and method in the route table, tried with a read token, changes nothing."""
    write, read = Tokens.bearer(tokens.write), Tokens.bearer(tokens.read)
    assert (await api.put("/counters/x", json={"value": 5}, headers=write)).status == 200
    assert (await api.put("/items/x", json={"value": {"a": 1}}, headers=write)).status == 201
    tried = 0
    for route in api.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = _concrete(info.get("formatter", info.get("path", "")))
        if route.method == "HEAD":
            continue
        headers = {**read, "Content-Type": "application/merge-patch+json", "If-Match": "*"}
        resp = await api.request(route.method, path, data=b'{"value": 9, "by": 3}', headers=headers)
        resp.close()  # event streams never end on their own
        tried += 1
        if route.method != "GET" or path in WRITING_GETS:
            assert resp.status == 403, (route.method, path)
    assert tried >= 22
    counter = await (await api.get("/counters/x", headers=read)).json()
    item = await (await api.get("/items/x", headers=read)).json()
    assert counter["value"] == 5
    assert (item["value"], item["version"]) == ({"a": 1}, 1)
    assert (await api.get("/counters/access", headers=read)).status == 404


async def test_revoked_label_stops_working(api: TestClient[Any, Any], tokens: Tokens) -> None:
    """After `lockstep token revoke`, the running service refuses that token."""
    auth = Tokens.bearer(tokens.write)
    assert (await api.get("/counters", headers=auth)).status == 200
    assert revoke_token(tokens.path, "writer")
    resp = await api.get("/counters", headers=auth)
    assert resp.status == 401
    assert (await api.get("/counters", headers=Tokens.bearer(tokens.read))).status == 200


async def test_new_token_works_without_restart(api: TestClient[Any, Any], tokens: Tokens) -> None:
    """A token added while the service runs is accepted on the next request."""
    token = add_token(tokens.path, "late", "read")
    resp = await api.get("/counters", headers=Tokens.bearer(token))
    assert resp.status == 200


async def test_broken_tokens_file_fails_closed(api: TestClient[Any, Any], tokens: Tokens) -> None:
    """A tokens file that stops parsing refuses every token (503) instead of keeping old ones."""
    tokens.path.write_text("{not json")
    resp = await api.get("/counters", headers=Tokens.bearer(tokens.write))
    assert resp.status == 503
    assert resp.content_type == "application/problem+json"


async def test_missing_tokens_file_stops_start(tmp_path: Path) -> None:
    """A configured but missing tokens file stops the start, in one line, rather than run open."""
    app = await create_app(settings_for(tmp_path, tokens_file=tmp_path / "absent.json"))
    runner = web.AppRunner(app)
    try:
        with pytest.raises(StartupError) as error:
            await runner.setup()
    finally:
        await runner.cleanup()
    assert str(error.value) == (
        f"cannot read tokens file {tmp_path}/absent.json: No such file or directory;"
        " write it with `lockstep token new`, readable by the service's user,"
        " or correct LOCKSTEP_TOKENS_FILE"
    )


async def test_metrics_needs_its_own_scope(api: TestClient[Any, Any], tokens: Tokens) -> None:
    """/metrics takes only a metrics token: read and write tokens get 403, and a metrics token
    reads nothing else (not even /stats)."""
    resp = await api.get("/metrics", headers=Tokens.bearer(tokens.metrics))
    assert resp.status == 200
    assert "lockstep_http_requests_total" in await resp.text()
    assert (await api.get("/metrics", headers=Tokens.bearer(tokens.write))).status == 403
    assert (await api.get("/metrics", headers=Tokens.bearer(tokens.read))).status == 403
    assert (await api.get("/counters", headers=Tokens.bearer(tokens.metrics))).status == 403
    assert (await api.get("/stats", headers=Tokens.bearer(tokens.metrics))).status == 403


async def test_dashboard_page_and_assets_open_but_its_data_needs_read(
    api: TestClient[Any, Any], tokens: Tokens
) -> None:
    """With tokens on, the page and its assets load without a token (they hold no data);
    /stats and the event streams need a read token."""
    for path in ("/", "/static/dashboard.js", "/static/exact-json.js", "/static/dashboard.css"):
        resp = await api.get(path)
        assert resp.status == 200, path
        assert "lst_" not in await resp.text()
    assert (await api.get("/static/missing.js")).status == 404
    for path in ("/stats", "/events?counter=a", "/counters/a/events", "/items/a/events"):
        assert (await api.get(path)).status == 401, path
    resp = await api.get("/stats", headers=Tokens.bearer(tokens.read))
    assert resp.status == 200
    assert (await resp.json())["requests"] >= 1


async def test_documented_scopes_are_the_enforced_scopes(
    api: TestClient[Any, Any], tokens: Tokens
) -> None:
    """Every documented operation refuses exactly as its OpenAPI `security` says: 401 without a
    token unless open, 403 for each token whose scope does not cover it."""
    doc = openapi_document(settings_for(Path("unused")))
    by_scope: dict[Scope, str] = {
        "read": tokens.read,
        "write": tokens.write,
        "metrics": tokens.metrics,
    }
    checked = 0
    for path, item in doc["paths"].items():
        url = _concrete(path).replace("/static/x", "/static/dashboard.js")
        for method, op in item.items():
            needed = [s for req in op["security"] for s in req["bearer"]]
            resp = await api.request(method, url)
            resp.close()
            assert (resp.status == 401) == bool(needed), (method, path, resp.status)
            for scope, token in by_scope.items():
                if needed and needed[0] not in GRANTS[scope]:
                    resp = await api.request(method, url, headers=Tokens.bearer(token))
                    resp.close()
                    assert resp.status == 403, (method, path, scope)
                    checked += 1
    assert checked >= 25


async def test_open_service_needs_no_token(client: TestClient[Any, Any]) -> None:
    """Without a tokens file every endpoint answers as before."""
    resp = await client.post("/counters/x/increment")
    assert resp.status == 200


def test_exposure_warning_only_when_open_on_non_loopback(tmp_path: Path) -> None:
    """The startup warning names non-loopback binds of an open service, and only those."""
    open_ = settings_for(tmp_path)
    assert exposure_warning([("127.0.0.1", 80), ("::1", 80), ("localhost", 1)], open_) is None
    assert exposure_warning(["/run/lockstep.sock"], open_) is None
    warning = exposure_warning([("0.0.0.0", 8080), ("127.0.0.1", 1)], open_)
    assert warning is not None and "0.0.0.0:8080" in warning and "127.0.0.1" not in warning
    secured = settings_for(tmp_path, tokens_file=tmp_path / "t.json")
    assert exposure_warning([("0.0.0.0", 8080)], secured) is None
