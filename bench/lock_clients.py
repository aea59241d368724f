"""The two lock services the lock workloads of ``make bench`` drive, behind one client shape.

Each client of a run holds one ``LockClient``: ``acquire`` waits up to ``WAIT`` seconds and
answers a ``Held`` (or None when the lock was still held), ``release`` lets it go.

- lockstep: ``POST /locks/{name}`` ``{"ttl", "wait", "owner"}`` answers 201 with the
  fencing token in the body and as the ``ETag``; ``DELETE /locks/{name}`` with that ETag in
  ``If-Match`` releases (204). 409: still held after ``wait``.
- etcd: through its JSON gateway, as ``etcdctl lock`` and the Go client's
  ``concurrency.Session`` do it: one lease per client, granted before the run and revoked
  after (its TTL outlasts the run, so no keep-alives), then ``/v3/lock/lock`` with the lease
  (etcd blocks until the lock is free: the client gives up after ``WAIT``) and
  ``/v3/lock/unlock`` with the key it answered. Names and keys travel base64-encoded.

A 4xx other than lockstep's 409 means the client and the service disagree on the API: it
raises ``LockError`` and ends the benchmark. 5xx answers and broken connections raise
``LockUnavailable``, which the driver counts and retries.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

TTL = 30  # seconds a lockstep lease lasts unless released (every cycle releases it)
WAIT = 10  # seconds an acquire waits for a held lock


class LockError(Exception):
    """The service answered something the lock API does not allow: the message says what."""


class LockUnavailable(Exception):
    """A 5xx answer or a broken connection: the driver counts it and tries again."""


@dataclass(frozen=True)
class Held:
    """One acquired lock: what releasing it takes, and its fencing token if the service has one."""

    name: str
    handle: str  # lockstep: the ETag; etcd: the key /v3/lock/lock answered
    token: int | None


class LockClient(Protocol):
    async def start(self) -> None: ...
    async def acquire(self, name: str) -> Held | None: ...
    async def release(self, held: Held) -> None: ...
    async def close(self) -> None: ...


async def _answer(response: aiohttp.ClientResponse, what: str, ok: int) -> None:
    """Raise unless ``response`` has status ``ok``."""
    if response.status == ok:
        return
    text = (await response.text(errors="replace"))[:300]
    if response.status >= 500:
        raise LockUnavailable(f"{what} answered {response.status}: {text}")
    raise LockError(f"{what} answered {response.status}, not {ok}: {text}")


class LockstepLocks:
    """lockstep's ``/locks`` API."""

    def __init__(self, session: aiohttp.ClientSession, url: str, owner: str) -> None:
        self.session, self.url, self.owner = session, url, owner

    async def start(self) -> None:
        pass

    async def acquire(self, name: str) -> Held | None:
        what = f"POST /locks/{name}"
        body = {"ttl": TTL, "wait": WAIT, "owner": self.owner}
        try:
            async with self.session.post(f"{self.url}/locks/{name}", json=body) as r:
                if r.status == 409:
                    await r.read()
                    return None
                await _answer(r, what, 201)
                held = await r.json()
                etag = r.headers.get("ETag")
        except (TimeoutError, aiohttp.ClientError) as e:
            raise LockUnavailable(f"{what}: {e!r}") from e
        if etag != f'"{held["token"]}"':
            raise LockError(f"{what}: ETag {etag!r} is not the token {held['token']!r} quoted")
        return Held(name, etag, int(held["token"]))

    async def release(self, held: Held) -> None:
        what = f"DELETE /locks/{held.name}"
        try:
            async with self.session.delete(
                f"{self.url}/locks/{held.name}", headers={"If-Match": held.handle}
            ) as r:
                await _answer(r, what, 204)
        except (TimeoutError, aiohttp.ClientError) as e:
            raise LockUnavailable(f"{what}: {e!r}") from e

    async def close(self) -> None:
        pass


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdLocks:
    """etcd's lock service through its JSON gateway, one lease per client."""

    def __init__(self, session: aiohttp.ClientSession, url: str, lease_ttl: int) -> None:
        self.session, self.url, self.lease_ttl = session, url, lease_ttl
        self.lease = ""

    async def _call(self, path: str, body: dict[str, Any]) -> Any:
        try:
            async with self.session.post(
                self.url + path, json=body, timeout=aiohttp.ClientTimeout(total=WAIT)
            ) as r:
                await _answer(r, f"etcd {path}", 200)
                return await r.json()
        except (TimeoutError, aiohttp.ClientError) as e:
            raise LockUnavailable(f"etcd {path}: {e!r}") from e

    async def start(self) -> None:
        answer = await self._call("/v3/lease/grant", {"TTL": self.lease_ttl})
        self.lease = answer["ID"]

    async def acquire(self, name: str) -> Held | None:
        try:
            answer = await self._call("/v3/lock/lock", {"name": _b64(name), "lease": self.lease})
        except LockUnavailable as e:
            if isinstance(e.__cause__, TimeoutError):
                return None  # still held after WAIT: what lockstep's 409 says
            raise
        return Held(name, answer["key"], None)

    async def release(self, held: Held) -> None:
        await self._call("/v3/lock/unlock", {"key": held.handle})

    async def close(self) -> None:
        if self.lease:
            await self._call("/v3/lease/revoke", {"ID": self.lease})
