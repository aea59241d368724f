"""The bare increment (``POST /counters/{name}/increment`` with no body and none of the headers
that shape a write) answers exactly as the general path does, and only such a request takes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse

from app.main import create_app
from tests.conftest import ClientFactory, settings_for
from tests.views.helpers import Client, stored_counter

pytestmark = pytest.mark.backends("sqlite")  # one view path, whatever the backend

# Headers that differ between any two answers, whatever the path.
_PER_ANSWER = {"Date", "X-Request-ID"}


async def _answer(response: ClientResponse) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in response.headers.items() if k not in _PER_ANSWER}
    return response.status, headers, await response.read()


@pytest.mark.parametrize("start", [None, 41, 2**63 - 1])
async def test_bare_increment_answers_as_the_general_path(
    aiohttp_client: ClientFactory, tmp_path: Path, start: int | None
) -> None:
    """From the same state, a bare POST and a POST with a body of +1 get the same status,
    headers and body: a new counter, an existing one, and one that would leave int64."""
    answers = []
    for variant, body in (("bare", None), ("general", b'{"by": 1}')):
        (tmp_path / variant).mkdir()
        client = await aiohttp_client(await create_app(settings_for(tmp_path / variant)))
        if start is not None:
            async with client.put("/counters/c", json={"value": start}) as r:
                assert r.status == 200
        headers = {"Content-Type": "application/json"} if body else {}
        async with client.post("/counters/c/increment", data=body, headers=headers) as r:
            answers.append(await _answer(r))
    bare, general = answers
    assert bare[0] == (409 if start == 2**63 - 1 else 200)
    assert bare == general


# Each header, spelled in lower case, with a value whose effect a bare +1 would not have.
_SHAPING: list[tuple[dict[str, str], int]] = [
    ({"content-encoding": "compress"}, 415),
    ({"if-match": '"7"'}, 412),
    ({"if-none-match": "*"}, 412),
    ({"lockstep-fence": "nobody=1"}, 412),
]


@pytest.mark.parametrize(("headers", "status"), _SHAPING)
async def test_increment_without_body_honours_headers_that_shape_a_write(
    client: Client, headers: dict[str, str], status: int
) -> None:
    """A body-less increment with a condition, a fence or a body coding is not a bare +1:
    it gets the general path's refusal, and the counter stays as it was."""
    async with client.post("/counters/c/increment") as r:
        assert r.status == 200
    async with client.post("/counters/c/increment", headers=headers) as r:
        assert r.status == status
        assert r.content_type == "application/problem+json"
    assert await stored_counter(client, "c") == 1


async def test_increment_without_body_replays_its_idempotency_key(client: Client) -> None:
    """A body-less increment with an Idempotency-Key is applied once and replayed after."""
    answers: list[Any] = []
    for _ in range(2):
        async with client.post("/counters/c/increment", headers={"idempotency-key": "k"}) as r:
            assert r.status == 200
            answers.append((r.headers.get("Idempotent-Replayed"), await r.json()))
    assert answers == [
        (None, {"name": "c", "value": 1, "version": 1}),
        ("true", {"name": "c", "value": 1, "version": 1}),
    ]
    assert await stored_counter(client, "c") == 1
