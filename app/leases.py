"""Leases (``/locks``): asyncio.Lock's contract over HTTP, apart from HTTP and SQL.

A backend reads one lock name's state inside a write transaction — its row (the last
fencing token ever issued, and the holder, if any) and its live waiters in the order they
queued — together with the database's "now", and hands them to ``decide`` with one step:
acquire, poll (a waiter checks in), withdraw, renew, release or settle (expiry). The
answer is what to write back and the outcome to answer; the backend writes it and the
change-log entry in that same transaction, so every worker and host sees one order.

The rules, as etcd's lock recipe has them: waiters are served in the order they queued
(their ``seq``, given by the database); a lease that ends — released, or expired by the
database's clock — is handed at once to the first live waiter, with the next token, so a
lock is never free while somebody live waits. A waiter is live while its request keeps
checking in (``ALIVE_S``): one whose worker died is skipped within seconds, and a lease
handed to a waiter that never collects it lapses by the same deadline (``claim_by``).
Tokens strictly increase per name: the row is never deleted.

Exclusion is the caller's: the registry key ``lock:<name>`` inside a worker, the
database's write transaction (and, on PostgreSQL, an advisory lock) across them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from app.domain import iso_time
from app.errors import LockstepError, PreconditionFailed

ALIVE_S = 3.0  # a waiter that has not checked in for this long is dead
CHECK_IN_S = 1.0  # how often a waiting request checks in, woken by a lock change or not


class LockHeld(LockstepError):
    """The lock stayed held (or queued for) past the request's ``wait``; nothing changed."""

    status = 409
    slug = "lock-held"
    title = "Conflict"

    def __init__(self, name: str, owner: str | None, expires_at: float | None, now: float) -> None:
        until = "" if expires_at is None else f" until {iso_time(expires_at)}"
        super().__init__(f"lock {name!r} is held{until}; nothing was changed")
        self.owner = owner
        self.expires_at = expires_at
        self.retry_after = 1 if expires_at is None else max(1, math.ceil(expires_at - now))

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}

    @property
    def extra(self) -> dict[str, Any]:
        at = None if self.expires_at is None else iso_time(self.expires_at)
        return {"owner": self.owner, "expires_at": at}


class FenceStale(LockstepError):
    """A fenced write whose token is not the live holder's: nothing was written."""

    status = 412
    slug = "fence-stale"
    title = "Precondition Failed"


@dataclass(slots=True, frozen=True)
class Holder:
    """The lease as stored; ``claim_by`` is set while a lease handed to a waiter is uncollected."""

    token: int
    owner: str | None
    expires_at: float  # Unix seconds by the database's clock
    ttl: float
    claim_by: float | None = None
    waiter: int | None = None  # the seq of the waiter it was handed to

    def live(self, now: float) -> bool:
        return self.expires_at > now and (self.claim_by is None or self.claim_by > now)


@dataclass(slots=True, frozen=True)
class Waiter:
    """A queued acquire; ``seq`` orders the queue (0 until the database assigns it)."""

    seq: int
    owner: str | None
    ttl: float
    alive_until: float


@dataclass(slots=True)
class LockState:
    """One name's state as read inside the write transaction (waiters by ``seq``)."""

    name: str
    last_token: int = 0
    holder: Holder | None = None
    waiters: list[Waiter] = field(default_factory=list)


@dataclass(slots=True, frozen=True)
class Acquire:
    owner: str | None
    ttl: float
    queue: bool  # wait > 0: join the queue when it cannot take the lock at once


@dataclass(slots=True, frozen=True)
class Poll:
    seq: int


@dataclass(slots=True, frozen=True)
class Withdraw:
    seq: int


@dataclass(slots=True, frozen=True)
class Renew:
    token: int
    ttl: float


@dataclass(slots=True, frozen=True)
class Release:
    token: int


@dataclass(slots=True, frozen=True)
class Settle:
    """Only end what has expired and hand it on (the housekeeping sweep)."""


Step = Acquire | Poll | Withdraw | Renew | Release | Settle


@dataclass(slots=True, frozen=True, order=True)
class Fence:
    """A write's claim that lock ``name`` is held with ``token`` (``Lockstep-Fence``)."""

    name: str
    token: int


@dataclass(slots=True, frozen=True)
class Lease:
    name: str
    token: int
    owner: str | None
    expires_at: float


@dataclass(slots=True, frozen=True)
class Acquired:
    lease: Lease


@dataclass(slots=True, frozen=True)
class Queued:
    """Still waiting: ``seq`` is the waiter's place (the backend fills in a new one's)."""

    seq: int
    holder: Holder | None


@dataclass(slots=True, frozen=True)
class Renewed:
    lease: Lease


@dataclass(slots=True, frozen=True)
class Done:
    """A release, withdraw or settle that applied."""


Outcome = Acquired | Queued | Renewed | Done | LockstepError


@dataclass(slots=True)
class Decision:
    """What to write back, and the outcome; ``revision`` is set by the backend."""

    outcome: Outcome
    after: LockState
    removed: list[int] = field(default_factory=list)  # waiter seqs to delete
    refreshed: dict[int, float] = field(default_factory=dict)  # seq -> alive_until
    enqueue: Waiter | None = None
    entry: dict[str, Any] | None = None  # the change-log value, if the lease changed
    revision: int = 0


def decide(state: LockState, step: Step, now: float) -> Decision:
    """Apply ``step`` to ``state`` at ``now`` (the database's clock, Unix seconds)."""
    before = state.holder
    after = LockState(state.name, state.last_token, before, list(state.waiters))
    decision = Decision(Done(), after)
    ended: list[tuple[int, str]] = []  # (token, event) of leases that ended here
    _settle(decision, now, ended)
    held = after.holder
    if isinstance(step, Acquire):
        if held is None and not after.waiters:
            lease = _grant(after, step.owner, step.ttl, now, None)
            decision.outcome = Acquired(lease)
        elif step.queue:
            decision.enqueue = Waiter(0, step.owner, step.ttl, now + ALIVE_S)
            decision.outcome = Queued(0, held)
        else:
            owner, at = (held.owner, held.expires_at) if held is not None else (None, None)
            decision.outcome = LockHeld(state.name, owner, at, now)
    elif isinstance(step, Poll):
        decision.outcome = _poll(decision, step.seq, now)
    elif isinstance(step, Withdraw):
        after.waiters = [w for w in after.waiters if w.seq != step.seq]
        decision.removed.append(step.seq)
        if held is not None and held.waiter == step.seq and held.claim_by is not None:
            # Handed over but never collected: pass it on.
            ended.append((held.token, "released"))
            after.holder = None
            _hand_on(decision, now)
    elif isinstance(step, Renew):
        if held is None or held.token != step.token or held.claim_by is not None:
            decision.outcome = _not_holder(state.name, step.token, "renew")
        else:
            after.holder = replace(held, expires_at=now + step.ttl, ttl=step.ttl)
            decision.outcome = Renewed(_lease(state.name, after.holder))
    elif isinstance(step, Release):
        if held is None or held.token != step.token or held.claim_by is not None:
            decision.outcome = _not_holder(state.name, step.token, "release")
        else:
            ended.append((held.token, "released"))
            after.holder = None
            _hand_on(decision, now)
    decision.entry = _entry(before, after.holder, ended)
    return decision


def fence_holds(state: LockState, token: int, now: float) -> bool:
    """Whether ``token`` is the live, collected lease of the lock (a fenced write may go on)."""
    held = state.holder
    return held is not None and held.token == token and held.claim_by is None and held.live(now)


def fence_stale(fence: Fence) -> FenceStale:
    return FenceStale(
        f"lock {fence.name!r} is not held with token {fence.token} (released, expired or"
        " taken over); nothing was written"
    )


def _poll(decision: Decision, seq: int, now: float) -> Outcome:
    after = decision.after
    held = after.holder
    if held is not None and held.waiter == seq and held.claim_by is not None:
        after.holder = replace(held, claim_by=None, waiter=None)
        return Acquired(_lease(after.name, after.holder))
    if not any(w.seq == seq for w in after.waiters):
        # Judged dead (it did not check in in time): the caller queues again.
        return Queued(0, held)
    decision.refreshed[seq] = now + ALIVE_S
    after.waiters = [
        replace(w, alive_until=now + ALIVE_S) if w.seq == seq else w for w in after.waiters
    ]
    return Queued(seq, held)


def _settle(decision: Decision, now: float, ended: list[tuple[int, str]]) -> None:
    after = decision.after
    dead = [w.seq for w in after.waiters if w.alive_until <= now]
    if dead:
        decision.removed += dead
        after.waiters = [w for w in after.waiters if w.alive_until > now]
    held = after.holder
    if held is not None and not held.live(now):
        ended.append((held.token, "expired"))
        after.holder = None
    if after.holder is None:
        _hand_on(decision, now)


def _hand_on(decision: Decision, now: float) -> None:
    """Give the free lock to the first live waiter, if any; it collects it when it checks in."""
    after = decision.after
    if after.holder is not None or not after.waiters:
        return
    first = after.waiters.pop(0)
    decision.removed.append(first.seq)
    _grant(after, first.owner, first.ttl, now, first)


def _grant(after: LockState, owner: str | None, ttl: float, now: float, to: Waiter | None) -> Lease:
    after.last_token += 1
    claim_by = None if to is None else to.alive_until
    after.holder = Holder(
        after.last_token, owner, now + ttl, ttl, claim_by, None if to is None else to.seq
    )
    return _lease(after.name, after.holder)


def _lease(name: str, held: Holder) -> Lease:
    return Lease(name, held.token, held.owner, held.expires_at)


def _not_holder(name: str, token: int, what: str) -> PreconditionFailed:
    return PreconditionFailed(
        f"token {token} does not hold lock {name!r}; nothing to {what} (a lock is released"
        " and renewed only by its holder)"
    )


def _entry(
    before: Holder | None, after: Holder | None, ended: list[tuple[int, str]]
) -> dict[str, Any] | None:
    """The change-log value of the lock after this step, or None if its lease did not change.

    One entry per lock per commit: a lease that ended and the next one's start in the same
    commit are one ``acquired`` entry naming what ended in ``ended``.
    """
    if after is not None and (before is None or after.token != before.token):
        value: dict[str, Any] = {"event": "acquired", **_lease_json(after)}
        if after.claim_by is not None and after.waiter is not None:
            value["waiter"] = after.waiter  # handed to it: its worker wakes it alone
        if ended:
            token, event = ended[-1]
            value["ended"] = {"token": token, "event": event}
        return value
    if after is None and before is not None:
        token, event = ended[-1]
        return {"event": event, **_lease_json(before)}
    if after is not None and before is not None and after.expires_at != before.expires_at:
        return {"event": "renewed", **_lease_json(after)}
    return None


def _lease_json(held: Holder) -> dict[str, Any]:
    return {"token": held.token, "owner": held.owner, "expires_at": iso_time(held.expires_at)}


def read_state(name: str, row: Any, waiters: Iterable[Any]) -> LockState:
    """A lock's state from its row (``LOCK_COLUMNS``) and its waiters' (``WAITER_COLUMNS``),
    as both backends read them."""
    queue = [Waiter(seq, owner, ttl, alive) for seq, owner, ttl, alive in waiters]
    if row is None:
        return LockState(name, 0, None, queue)
    last, token, owner, expires_at, ttl, claim_by, waiter = row
    holder = None if token is None else Holder(token, owner, expires_at, ttl, claim_by, waiter)
    return LockState(name, last, holder, queue)


# The columns ``read_state`` takes, in order, for both backends' SELECTs.
LOCK_COLUMNS = "last_token, token, owner, expires_at, ttl, claim_by, waiter"
WAITER_COLUMNS = "seq, owner, ttl, alive_until"


def lock_row(state: LockState) -> tuple[Any, ...]:
    """The lock row after a decision: the name, then ``LOCK_COLUMNS``."""
    h = state.holder
    if h is None:
        return (state.name, state.last_token, None, None, None, None, None, None)
    return (
        state.name,
        state.last_token,
        h.token,
        h.owner,
        h.expires_at,
        h.ttl,
        h.claim_by,
        h.waiter,
    )
