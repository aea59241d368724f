"""Idempotency-Key: claims carried by operations, and the pure rules every backend applies.

A request with an ``Idempotency-Key`` header turns its operation into a claimed one: the
op carries a ``Claim`` (the key, a fingerprint of method, path, preconditions and body,
and a ``render`` function the handler supplies that turns the op's outcome into the exact
response). Inside the write transaction that applies a batch, a backend

1. looks up every claimed key of the batch at once (``Stored`` rows, unexpired only),
2. calls ``triage``: ops whose key is stored are not applied — they get a ``Replay`` of
   the stored response, or ``KeyReused`` (422) if the fingerprint differs,
3. applies the remaining ops as usual, and
4. inserts ``to_store(...)`` rows (key, fingerprint, rendered response, expiry) in the
   same transaction, so the change and its response are committed together or not at all.

Nothing here knows SQL or aiohttp; ``render`` is supplied by the HTTP layer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from app.errors import LockstepError


class KeyReused(LockstepError):
    """The key was first used for a different request (method, path, preconditions or body)."""

    status = 422
    slug = "idempotency-key-reused"
    title = "Unprocessable Content"


class KeyInFlight(LockstepError):
    """A request with this key is still being executed."""

    status = 409
    slug = "idempotency-key-in-flight"
    title = "Conflict"


@dataclass(slots=True, frozen=True)
class Rendered:
    """A complete response: status, the headers worth replaying, and the body bytes."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(slots=True, frozen=True)
class Claim:
    """An op's claim on an idempotency key."""

    key: str
    fingerprint: str
    render: Callable[[Any], Rendered]


@dataclass(slots=True, frozen=True)
class Replay:
    """Outcome of an op whose key was already used by the same request: its stored response."""

    response: Rendered


@dataclass(slots=True, frozen=True)
class Stored:
    """A stored key as read back inside the write transaction."""

    fingerprint: str
    response: Rendered


@dataclass(slots=True, frozen=True)
class NewKey:
    """A row to insert in the same transaction as the change."""

    key: str
    fingerprint: str
    response: Rendered


class Claimable(Protocol):
    @property
    def claim(self) -> Claim | None: ...


def fingerprint(method: str, path: str, conditions: Sequence[str], body: bytes) -> str:
    """A digest identifying "the same request" for a key."""
    h = hashlib.sha256()
    for part in (method, path, *conditions):
        h.update(part.encode())
        h.update(b"\0")
    h.update(body)
    return h.hexdigest()


def claimed_keys(ops: Sequence[Claimable]) -> list[str]:
    """The keys the ops of a batch claim (empty for the usual, unclaimed batch)."""
    return [op.claim.key for op in ops if op.claim is not None]


def triage(
    ops: Sequence[Claimable], stored: Mapping[str, Stored]
) -> tuple[list[int], dict[int, Replay | LockstepError]]:
    """Split a batch into the indexes to apply and the outcomes of the ops not applied."""
    run: list[int] = []
    settled: dict[int, Replay | LockstepError] = {}
    fresh: set[str] = set()
    for i, op in enumerate(ops):
        claim = op.claim
        if claim is None:
            run.append(i)
            continue
        found = stored.get(claim.key)
        if found is not None:
            if found.fingerprint == claim.fingerprint:
                settled[i] = Replay(found.response)
            else:
                settled[i] = KeyReused(
                    "this Idempotency-Key was used for a different request; nothing was changed"
                )
        elif claim.key in fresh:
            # Two ops with one key in one batch (another process's duplicate cannot be here).
            settled[i] = KeyInFlight("a request with this Idempotency-Key is in flight")
        else:
            fresh.add(claim.key)
            run.append(i)
    return run, settled


def merge(
    size: int, run: list[int], outcomes: Sequence[Any], settled: Mapping[int, Any]
) -> list[Any]:
    """Outcomes in the batch's original order."""
    merged: list[Any] = [None] * size
    for i, outcome in zip(run, outcomes, strict=True):
        merged[i] = outcome
    for i, outcome in settled.items():
        merged[i] = outcome
    return merged


def to_store(ops: Sequence[Claimable], run: list[int], outcomes: Sequence[Any]) -> list[NewKey]:
    """The rendered responses of the applied claimed ops, to insert with the change."""
    rows: list[NewKey] = []
    for i, outcome in zip(run, outcomes, strict=True):
        claim = ops[i].claim
        if claim is not None:
            rows.append(NewKey(claim.key, claim.fingerprint, claim.render(outcome)))
    return rows


class InFlight:
    """The keys this worker is executing right now (a repeat meanwhile answers 409)."""

    def __init__(self) -> None:
        self._keys: set[str] = set()

    def __len__(self) -> int:
        return len(self._keys)

    def enter(self, key: str) -> None:
        if key in self._keys:
            raise KeyInFlight("a request with this Idempotency-Key is still in flight; retry later")
        self._keys.add(key)

    def leave(self, key: str) -> None:
        self._keys.discard(key)


IN_FLIGHT = web.AppKey("in_flight", InFlight)
