"""`lockstep export` and `import`: SQLite to PostgreSQL and back, exactly; only into empty;
fencing tokens keep increasing across the move."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from app.main import create_app
from app.settings import Settings
from tests.backup.cli import lockstep
from tests.conftest import ClientFactory, backend_settings, fresh_postgres_url, settings_for

INT64_MAX = 2**63 - 1
DOC = {
    "big": 123456789012345678901234567890,
    "neg": -(2**63),
    "text": 'héllo \u2028 😀 "quoted" \\',
    "float": 1.5e300,
    "list": [1, {"x": None}, [], {}],
}

EXPORT = (
    b'{"type":"lockstep-export","version":1}\n'
    b'{"type":"counter","name":"a","value":1}\n'
    b'{"type":"record","id":"r","value":{"k":[1,2]},"version":7,'
    b'"updated_at":"2026-01-02T03:04:05.678Z"}\n'
    b'{"type":"end","counters":1,"records":1}\n'
)


async def _fill(client: TestClient[Any, Any]) -> None:
    """Counters at the edges of their range and names in byte order; records of many versions."""
    for name, value in [("max", INT64_MAX), ("min", -(2**63)), ("zero", 0)]:
        r = await client.put(f"/counters/{name}", json={"value": value})
        assert r.status == 200, await r.text()
    for name in ["A", "a", "a-b", "a.b", "a:b", "a_b", "a~b", "~", "Z9"]:
        for by in (5, -7):
            r = await client.post(f"/counters/{name}/increment", json={"by": by})
            assert r.status == 200
    for doc in ({"first": True}, DOC):
        r = await client.put("/items/doc", json={"value": doc})
        assert r.status in (200, 201)
    r = await client.patch(
        "/items/doc",
        data=json.dumps({"added": [2**70]}),
        headers={"Content-Type": "application/merge-patch+json", "If-Match": '"2"'},
    )
    assert r.status == 200
    for record_id, scalar in [("nothing", None), ("one", 1), ("gone", "x")]:
        r = await client.put(f"/items/{record_id}", json={"value": scalar})
        assert r.status == 201
    r = await client.delete("/items/gone")
    assert r.status == 204
    r = await client.post("/locks/job", json={"ttl": 60})
    assert r.status == 201


async def test_sqlite_export_postgres_import_export_is_identical(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """SQLite → export → import into PostgreSQL → export gives the same bytes, and the
    service on PostgreSQL serves the same values and versions and carries on from them."""
    for side in ("sqlite", "pg"):
        (tmp_path / side).mkdir()
    sqlite = settings_for(tmp_path / "sqlite")
    source = await aiohttp_client(await create_app(sqlite))
    await _fill(source)
    exported = await lockstep(sqlite, "export")
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert lines[0] == {"type": "lockstep-export", "version": 2}
    assert lines[-2] == {"type": "lock", "name": "job", "last_token": 1}
    assert lines[-1] == {"type": "end", "counters": 12, "records": 3, "locks": 1}
    assert [x["name"] for x in lines if x["type"] == "counter"][:4] == ["A", "Z9", "a", "a-b"]
    async with fresh_postgres_url() as url:
        postgres = settings_for(tmp_path / "pg", database_url=url)
        loaded = await lockstep(postgres, "import", stdin=exported.stdout)
        assert loaded.returncode == 0, loaded.stderr
        assert loaded.stdout == b"imported counters: 12, records: 3, locks: 1\n"
        again = await lockstep(postgres, "export")
        assert again.returncode == 0, again.stderr
        assert again.stdout == exported.stdout
        await _same_service(aiohttp_client, sqlite, postgres, source)


async def _same_service(
    aiohttp_client: ClientFactory,
    sqlite: Settings,
    postgres: Settings,
    source: TestClient[Any, Any],
) -> None:
    target = await aiohttp_client(await create_app(postgres))
    for path in ("/counters?limit=100", "/items?limit=100", "/items/doc", "/counters/max"):
        a, b = await source.get(path), await target.get(path)
        assert (a.status, a.headers.get("ETag")) == (b.status, b.headers.get("ETag")), path
        assert await a.read() == await b.read(), path
    r = await target.get("/items/doc")
    assert r.headers["ETag"] == '"3"'
    assert (await r.json())["value"] == {**DOC, "added": [2**70]}
    r = await target.patch(
        "/items/doc",
        data=b'{"more": 1}',
        headers={"Content-Type": "application/merge-patch+json", "If-Match": '"3"'},
    )
    assert r.status == 200 and (await r.json())["version"] == 4
    r = await target.post("/counters/max/increment")
    assert r.status == 409  # still at the top of the 64-bit range


async def test_import_into_non_empty_database_refuses_and_changes_nothing(
    aiohttp_client: ClientFactory, settings: Settings
) -> None:
    """An import into a database holding any counter or record is refused in one line and
    leaves it exactly as it was (on each backend)."""
    client = await aiohttp_client(await create_app(settings))
    r = await client.post("/counters/existing/increment")
    assert r.status == 200
    refused = await lockstep(settings, "import", stdin=EXPORT)
    assert refused.returncode == 1
    assert refused.stderr == (
        "lockstep import: the target database is not empty (it holds counters); import only"
        " into a new one (a fresh LOCKSTEP_DATA_DIR, or an empty PostgreSQL database)\n"
    )
    r = await client.get("/counters")
    existing = {"name": "existing", "value": 1, "version": 1}
    assert await r.json() == {"items": [existing], "next": None}
    r = await client.get("/items")
    assert await r.json() == {"items": [], "next": None}


async def test_import_of_cut_off_export_writes_nothing(
    aiohttp_client: ClientFactory, settings: Settings
) -> None:
    """An export missing its end line is refused in one line, and nothing of it is stored."""
    cut = EXPORT.rsplit(b"\n", 2)[0] + b"\n"  # the last line (end) is gone
    refused = await lockstep(settings, "import", stdin=cut)
    assert refused.returncode == 1
    assert refused.stderr == (
        "lockstep import: the export ends at line 3 without its end line: it was cut off\n"
    )
    client = await aiohttp_client(await create_app(settings))
    for path in ("/counters", "/items"):
        r = await client.get(path)
        assert await r.json() == {"items": [], "next": None}, path


async def test_tokens_after_import_exceed_every_token_issued_before_it(
    aiohttp_client: ClientFactory, backend: str, tmp_path: Path
) -> None:
    """Export → import into a new database ends a held lease, and the next lease's token is
    greater than any issued before, so an old holder's fenced write is refused.

    Protection: the export's lock lines; without them tokens start at 1 again, and the
    holder of the old token 1 writes through the new lease 1.
    """
    for side in ("old", "new"):
        (tmp_path / side).mkdir()
    async with backend_settings(backend, tmp_path / "old") as old:
        source = await aiohttp_client(await create_app(old))
        tokens = []
        for _ in range(2):
            r = await source.post("/locks/p", json={"ttl": 60})
            assert r.status == 201
            tokens.append((await r.json())["token"])
            if len(tokens) == 1:
                r = await source.delete("/locks/p", headers={"If-Match": f'"{tokens[0]}"'})
                assert r.status == 204
        r = await source.put("/counters/c", json={"value": 1})
        assert r.status == 200
        exported = await lockstep(old, "export")
        assert exported.returncode == 0, exported.stderr
        await source.close()  # before its database goes
    async with backend_settings(backend, tmp_path / "new") as new:
        loaded = await lockstep(new, "import", stdin=exported.stdout)
        assert loaded.returncode == 0, loaded.stderr
        assert loaded.stdout == b"imported counters: 1, records: 0, locks: 1\n"
        target = await aiohttp_client(await create_app(new))
        r = await target.get("/locks/p")
        assert r.status == 404  # the lease held at export ended with the move
        r = await target.post("/locks/p", json={"ttl": 60})
        assert r.status == 201
        token = (await r.json())["token"]
        for stale in tokens:
            r = await target.put(
                "/counters/c", json={"value": 666}, headers={"Lockstep-Fence": f"p={stale}"}
            )
            assert r.status == 412 and (await r.json())["type"].endswith("fence-stale")
        assert token > max(tokens)
        r = await target.get("/counters/c")
        assert (await r.json())["value"] == 1
        await target.close()
