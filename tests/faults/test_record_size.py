"""The stored-size cap under real gunicorn: PATCHes cannot grow a record past what PUT writes."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.faults.load import stored
from tests.support import Service

pytestmark = pytest.mark.slow

MERGE = {"Content-Type": "application/merge-patch+json"}
CHUNK = 200_000  # one PATCH adds a member this long; six pass the default 1 MiB


async def test_patches_stop_at_the_record_cap_and_the_record_can_be_put_back(
    tmp_path: Path,
) -> None:
    """With the default cap (the body limit), keyed PATCHes grow a record until the next would
    pass 1 MiB: that one answers 413 and changes nothing, what is stored can be PUT back, and no
    stored idempotent answer is larger than the cap.

    Protection: apply_record_ops checks the size of each PATCH's result against
    LOCKSTEP_MAX_RECORD_BYTES. Without it every PATCH succeeds, the record passes 1 MiB and
    can no longer be PUT back (413), and each keyed PATCH stores the whole record again.
    """
    data = tmp_path / "data"
    with Service(data, workers=2) as service:
        async with aiohttp.ClientSession() as http:
            url = f"{service.url}/items/big"
            async with http.put(url, json={"value": {}}) as r:
                assert r.status == 201
            statuses = []
            for i in range(7):
                headers = {**MERGE, "Idempotency-Key": f"grow-{i}"}
                body = b'{"m%d": "%s"}' % (i, b"x" * CHUNK)
                async with http.patch(url, data=body, headers=headers) as r:
                    statuses.append(r.status)
                    if r.status == 413:
                        problem = await r.json(content_type=None)
                        assert problem["type"] == "urn:lockstep:problem:record-too-large"
            assert statuses == [200] * 5 + [413] * 2
            async with http.get(url) as r:
                assert r.status == 200
                # The PUT and five PATCHes: the 413s wrote nothing.
                assert r.headers["ETag"] == '"6"'
                record = await r.json()
            async with http.put(url, json={"value": record["value"]}) as r:
                assert r.status == 200, await r.text()
    [(largest,)] = stored(data / "lockstep.db", "SELECT max(length(body)) FROM idempotency")
    assert largest <= 1024 * 1024 + 512
