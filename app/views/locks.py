"""The /locks endpoints: leases with fencing tokens, asyncio.Lock's contract over HTTP.

Every step runs under the registry key ``lock:<name>`` in this worker and in one write
transaction of the database (``Storage.lock_step``, rules in ``app.leases``). An acquire
that cannot take the lock at once and may wait joins the queue, then waits until the lock
is handed to it (``app.handovers``: woken alone, by the step in this worker or by the
hub reading the entry) or a check-in tick, and checks in: the database hands the lock on
to the first live waiter, and its request collects it. One that runs out of ``wait``, whose
client went away, or that is cancelled withdraws from the queue.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from app.domain import iso_time
from app.errors import InvalidInput, LockstepError, NotFound, PreconditionRequired, Unavailable
from app.events import EVENTS, Watch
from app.handovers import HAND_OVERS
from app.leases import (
    CHECK_IN_S,
    Acquire,
    Acquired,
    Decision,
    Lease,
    LockHeld,
    Poll,
    Queued,
    Release,
    Renew,
    Renewed,
    Step,
    Withdraw,
)
from app.locks import LOCKS
from app.settings import SETTINGS
from app.storage import STORAGE
from app.views.bodies import AcquireBody, HeldLock, Lock, LockPage, LockStatus, RenewBody
from app.views.common import (
    REVISION_HEADER,
    json_response,
    list_params,
    page,
    path_name,
    precondition,
    read_json,
)
from app.views.events import stream


async def run_step(request: web.Request, name: str, step: Step) -> Decision:
    """One step on lock ``name``, in turn with this worker's other requests on it."""
    async with request.app[LOCKS].hold(f"lock:{name}"):
        decision = await request.app[STORAGE].lock_step(name, step)
    held = decision.after.holder
    if decision.entry is not None and held is not None and held.waiter is not None:
        request.app[HAND_OVERS].handed(name, held.waiter)  # no poll when it waits here
    return decision


def _answer(lease: Lease, revision: int, status: int) -> web.Response:
    body = Lock(lease.name, lease.token, lease.owner, iso_time(lease.expires_at), revision)
    headers = {"ETag": f'"{lease.token}"', REVISION_HEADER: str(revision)}
    return json_response(body, status, headers)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def acquire(request: web.Request) -> web.Response:
    """Take the lock for ``ttl`` seconds, queueing up to ``wait`` seconds behind its holder."""
    name = path_name(request, "name")
    body = await read_json(request, AcquireBody)
    assert body is not None
    most = request.app[SETTINGS].locks_max_wait
    if body.wait > most:
        raise InvalidInput(f"wait must be a number of seconds from 0 to {most:g}")
    first = Acquire(body.owner, body.ttl, body.wait > 0)
    decision = await run_step(request, name, first)
    outcome = decision.outcome
    if isinstance(outcome, Queued):
        decision = await _wait(request, name, first, decision, body.wait)
        outcome = decision.outcome
    if isinstance(outcome, LockstepError):
        raise outcome
    assert isinstance(outcome, Acquired)
    return _answer(outcome.lease, decision.revision, 201)


async def _wait(
    request: web.Request, name: str, first: Acquire, queued: Decision, wait: float
) -> Decision:
    """Wait in the queue until the lock is handed over, or withdraw; the last decision."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    hub = request.app[EVENTS]
    hand_overs = request.app[HAND_OVERS]
    assert isinstance(queued.outcome, Queued)
    seq, holder = queued.outcome.seq, queued.outcome.holder
    # Registered before anything else runs: a hand-over in this worker cannot slip past.
    handed = hand_overs.add(name, seq)
    decision = queued
    checked_in = loop.time()
    try:
        async with hub.following(hurried=True):
            # The hub may have read a hand-over to us before we registered: look once.
            behind = hub.position is None or hub.position > queued.revision
            if behind and await _handed_to(request, name, seq):
                handed.set()
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0 or _gone(request):
                    break
                wait_for = min(CHECK_IN_S - (loop.time() - checked_in), remaining)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, wait_for)):
                        await handed.wait()
                if hand_overs.closed:
                    raise Unavailable("shutting down; the lock was not taken")
                if not handed.is_set() and loop.time() - checked_in < CHECK_IN_S:
                    continue
                handed.clear()
                checked_in = loop.time()
                decision = await run_step(request, name, Poll(seq))
                outcome = decision.outcome
                if isinstance(outcome, Acquired):
                    if _gone(request):
                        # Nobody is left to use it: pass it on at once.
                        await run_step(request, name, Release(outcome.lease.token))
                    return decision
                assert isinstance(outcome, Queued)
                holder = outcome.holder
                if outcome.seq == 0:
                    # Judged dead (it could not check in in time): queue again, at the back.
                    decision = await run_step(request, name, first)
                    if not isinstance(decision.outcome, Queued):
                        return decision
                    hand_overs.discard(name, seq)
                    seq = decision.outcome.seq
                    handed = hand_overs.add(name, seq)
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.shield(run_step(request, name, Withdraw(seq)))
        raise
    finally:
        hand_overs.discard(name, seq)
    if not _gone(request):
        # Handed over since the last check-in: it came within the wait.
        decision = await run_step(request, name, Poll(seq))
        if isinstance(decision.outcome, Acquired):
            return decision
    decision = await run_step(request, name, Withdraw(seq))
    state, now = await request.app[STORAGE].read_lock(name)
    held = state.holder if state.holder is not None and state.holder.live(now) else holder
    owner, at = (held.owner, held.expires_at) if held is not None else (None, None)
    decision.outcome = LockHeld(name, owner, at, now)
    return decision


async def _handed_to(request: web.Request, name: str, seq: int) -> bool:
    """Whether the lock, as committed, was handed to waiter ``seq`` (or ``seq`` left the queue)."""
    state, _ = await request.app[STORAGE].read_lock(name)
    held = state.holder
    if held is not None and held.waiter == seq:
        return True
    return not any(w.seq == seq for w in state.waiters)


def _token(request: web.Request, what: str) -> int:
    """The token named by ``If-Match``: 428 without one."""
    if "If-Match" not in request.headers:
        raise PreconditionRequired(f'If-Match: "<token>" is required to {what} a lock')
    tags = precondition(request).if_match
    if not tags or len(tags) != 1:
        raise InvalidInput('If-Match must hold the one token you hold, e.g. If-Match: "42"')
    (token,) = tags
    return token


async def renew(request: web.Request) -> web.Response:
    """Extend the lease to ``ttl`` seconds from now; only its holder may."""
    name = path_name(request, "name")
    token = _token(request, "renew")
    body = await read_json(request, RenewBody)
    assert body is not None
    decision = await run_step(request, name, Renew(token, body.ttl))
    outcome = decision.outcome
    if isinstance(outcome, LockstepError):
        raise outcome
    assert isinstance(outcome, Renewed)
    return _answer(outcome.lease, decision.revision, 200)


async def release(request: web.Request) -> web.Response:
    """Release the lock; the first live waiter holds it at once."""
    name = path_name(request, "name")
    token = _token(request, "release")
    decision = await run_step(request, name, Release(token))
    if isinstance(decision.outcome, LockstepError):
        raise decision.outcome
    return web.Response(status=204, headers={REVISION_HEADER: str(decision.revision)})


async def get_lock(request: web.Request) -> web.Response:
    """The holder of a lock, or 404 when it is free (``locked()``)."""
    name = path_name(request, "name")
    state, now = await request.app[STORAGE].read_lock(name)
    held = state.holder
    if held is None or not held.live(now):
        raise NotFound(f"lock {name!r} is not held")
    waiting = sum(w.alive_until > now for w in state.waiters)
    body = LockStatus(name, held.token, held.owner, iso_time(held.expires_at), waiting)
    return json_response(body, headers={"ETag": f'"{held.token}"'})


async def list_locks(request: web.Request) -> web.Response:
    """Held locks ordered by name, a page at a time."""
    prefix, after, limit = list_params(request)
    rows = await request.app[STORAGE].list_locks(prefix, after, limit + 1)
    shown, after_last = page(rows, limit, lambda row: row.name)
    items = [HeldLock(r.name, r.token, r.owner, iso_time(r.expires_at)) for r in shown]
    return json_response(LockPage(items, after_last))


async def lock_events(request: web.Request) -> web.StreamResponse:
    """Stream every change of a lock's lease."""
    resource = ("lock", path_name(request, "name"))
    return await stream(request, Watch(frozenset({resource})))
