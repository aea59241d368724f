"""One depth rule for stored values under real gunicorn: what PATCH can store, PUT can write."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from tests.support import Service

pytestmark = pytest.mark.slow


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


async def test_value_stored_by_patch_at_the_depth_limit_can_be_put_back(tmp_path: Path) -> None:
    """A PATCH stores a value 32 levels deep (the default limit); a PUT of that same value,
    one level deeper as a body, is accepted; a value of 33 levels is refused (400) either way.

    Protection: the PUT's depth check counts the stored value, not the body around it.
    Without it the PUT of the stored value answers 400.
    """
    with Service(tmp_path / "data", workers=1) as service:
        url = f"{service.url}/items/deep"
        merge = {"Content-Type": "application/merge-patch+json"}
        async with aiohttp.ClientSession() as http:
            async with http.put(url, json={"value": {}}) as r:
                assert r.status == 201
            patch = '{"a":' + nested(31) + "}"  # the record's value: 32 levels
            async with http.patch(url, data=patch, headers=merge) as r:
                assert r.status == 200, await r.text()
            async with http.get(url) as r:
                value = (await r.json())["value"]
            async with http.put(url, data=json.dumps({"value": value})) as r:
                assert r.status == 200, await r.text()
            too_deep = '{"a":' + nested(32) + "}"
            async with http.patch(url, data=too_deep, headers=merge) as r:
                assert r.status == 400
            async with http.put(url, data='{"value": ' + too_deep + "}") as r:
                assert r.status == 400
            async with http.get(url) as r:
                assert r.headers["ETag"] == '"3"'  # the two 400s changed nothing
