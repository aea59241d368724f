"""Event streams under real gunicorn end once their token stops covering them."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest

from app.tokens import add_token, revoke_token
from tests.observability.helpers import next_event
from tests.support import Service

pytestmark = pytest.mark.slow


async def test_revoked_token_ends_open_streams_with_a_final_event(tmp_path: Path) -> None:
    """After `lockstep token revoke`, a stream opened before it gets `event: unauthorized`
    (401) within about the check interval and ends, while changes keep coming; a stream whose
    tokens file becomes unusable ends the same way with 503.

    Protection: streams re-check their token every LOCKSTEP_TOKENS_CHECK_INTERVAL. Without
    it the revoked stream keeps delivering every change.
    """
    tokens = tmp_path / "tokens.json"
    watcher = add_token(tokens, "watcher", "read")
    other = add_token(tokens, "other", "read")
    writer = add_token(tokens, "writer", "write")
    env = {"LOCKSTEP_TOKENS_FILE": str(tokens), "LOCKSTEP_TOKENS_CHECK_INTERVAL": "0.5"}
    with Service(tmp_path / "data", workers=2, env=env) as service:
        url = f"{service.url}/counters/c/events"
        async with aiohttp.ClientSession() as http:
            bump = {"Authorization": f"Bearer {writer}"}
            revoked = await http.get(url, headers={"Authorization": f"Bearer {watcher}"})
            assert revoked.status == 200
            assert (await next_event(revoked.content))[0] == "snapshot"
            assert revoke_token(tokens, "watcher")
            revoked_at = time.monotonic()
            events = []
            for _ in range(100):  # changes keep coming until the stream says why it ends
                async with http.post(f"{service.url}/counters/c/increment", headers=bump) as r:
                    assert r.status == 200
                event, data = await next_event(revoked.content, within=5)
                events.append(event)
                if event == "unauthorized":
                    assert data["status"] == 401
                    assert data["detail"] == "the bearer token is unknown or revoked"
                    break
            assert events[-1] == "unauthorized", events
            assert time.monotonic() - revoked_at < 3  # the check interval is 0.5 s
            assert await revoked.content.read() == b""  # and the stream ends
            revoked.close()

            broken = await http.get(url, headers={"Authorization": f"Bearer {other}"})
            assert broken.status == 200
            assert (await next_event(broken.content))[0] == "snapshot"
            tokens.write_text("{not json")
            event, data = await next_event(broken.content, within=10)
            assert (event, data["status"]) == ("unauthorized", 503)
            assert await broken.content.read() == b""
            broken.close()
