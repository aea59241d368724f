"""``Lockstep-Fence: <name>=<token>``: a write that goes through only while its lease is held.

Any write may carry the header (several fences separated by commas). A fenced counter or
record write runs as a one-operation transaction (``app.txn``'s ``apply`` op) whose
fences the backend checks on the locks' rows inside the same write transaction that
writes, so a lease that expired or was taken over a moment before cannot slip a write in;
its answer is the single-resource one, a stale token 412 ``fence-stale``.
"""

from __future__ import annotations

import re
import time
from typing import Any

from aiohttp import web

from app.domain import DeleteCounter, Increment, SetValue, check_name
from app.errors import MalformedBody
from app.idempotency import Claim
from app.leases import Fence
from app.locks import LOCKS
from app.metrics import METRICS
from app.storage import STORAGE
from app.txn import Evaluated, Kind, Operation, Txn

FENCE_HEADER = "Lockstep-Fence"
_FENCE = re.compile(r"\s*([^=\s]+)\s*=\s*([1-9][0-9]{0,18})\s*", re.ASCII)
_MAX_FENCES = 16


class MalformedFence(MalformedBody):
    slug = "malformed-fence"


def fences_of(request: web.Request) -> tuple[Fence, ...]:
    """The request's fences, or ``()`` without the header; 400 when it is malformed."""
    raw = request.headers.getall(FENCE_HEADER, [])
    if not raw:
        return ()
    fences: dict[str, Fence] = {}
    parts = [p for line in raw for p in line.split(",")]
    for part in parts:
        match = _FENCE.fullmatch(part)
        if match is None or len(parts) > _MAX_FENCES:
            raise MalformedFence(
                f"{FENCE_HEADER} must be <lock name>=<token>, at most {_MAX_FENCES} separated by"
                " commas, e.g. Lockstep-Fence: payments=42"
            )
        try:
            name = check_name(match[1], "a fence's lock name")
        except Exception as e:
            raise MalformedFence(str(e)) from e
        token = int(match[2])
        if token > 2**63 - 1 or fences.get(name, Fence(name, token)).token != token:
            raise MalformedFence(f"{FENCE_HEADER} names lock {name!r} with two tokens")
        fences[name] = Fence(name, token)
    return tuple(sorted(fences.values()))


def single(outcome: Any) -> Any:
    """A one-operation transaction's outcome as the single-resource request would have it."""
    return outcome.results[0] if isinstance(outcome, Evaluated) else outcome


def fenced(
    request: web.Request, resource: str, op: Any, fences: tuple[Fence, ...]
) -> tuple[Claim | None, Any]:
    """The claim to answer with, and a coroutine function running ``op`` on ``resource``
    behind ``fences`` in one transaction."""
    kind: Kind = "counter" if isinstance(op, Increment | SetValue | DeleteCounter) else "item"
    claim: Claim | None = op.claim
    if claim is not None:
        render = claim.render
        claim = Claim(claim.key, claim.fingerprint, lambda outcome: render(single(outcome)))
    todo = Txn((), (Operation("apply", kind, resource, op),), claim=claim, fences=fences)

    async def run() -> Any:
        metrics = request.app[METRICS]
        started = time.perf_counter()
        async with request.app[LOCKS].hold(*todo.lock_keys()):
            metrics.waited(kind, time.perf_counter() - started)
            return single(await request.app[STORAGE].apply_txn(todo))

    return claim, run
