"""POST /txn: conditions and operations over several resources, applied all or nothing.

The handler parses and checks the whole body first (422 before anything is locked), then
takes the registry lock of every resource named, sorted, under one deadline
(``LockRegistry.hold``): combined batches on those resources finish first and new ones
wait until the transaction has committed. Storage reads, evaluates (``app.txn``) and
writes in one database transaction, which is what keeps other workers and hosts out.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

from app.domain import INT64_MAX, INT64_MIN, check_record_size
from app.errors import InvalidInput, LockstepError, LockTimeout
from app.idempotency import Claim, Rendered
from app.leases import Fence
from app.locks import LOCKS
from app.metrics import METRICS
from app.settings import SETTINGS, Settings
from app.storage import STORAGE
from app.txn import (
    DELETED,
    Condition,
    CounterResult,
    Evaluated,
    Kind,
    Operation,
    RecordResult,
    Result,
    Txn,
    TxnOutcome,
)
from app.views.bodies import (
    TxnAnswer,
    TxnBody,
    TxnCondition,
    TxnCounter,
    TxnDeleted,
    TxnOperation,
    TxnRecord,
)
from app.views.common import JSON, REVISION_HEADER, _encode, decode_json, read_body
from app.views.fences import fences_of
from app.views.idempotent import answer, claim_for, render_error

# Which ops each kind of resource takes.
_OPS: dict[Kind, frozenset[str]] = {
    "counter": frozenset({"get", "set", "increment", "delete"}),
    "item": frozenset({"get", "put", "patch", "delete"}),
}
# Levels of a body around a put's stored value: {"then": [{"value": ...}]}.
_WRAPPER = 3


def _target(where: str, counter: str | None, item: str | None) -> tuple[Kind, str]:
    if counter is not None and item is None:
        return "counter", counter
    if item is not None and counter is None:
        return "item", item
    raise InvalidInput(f"{where} must name exactly one of counter and item")


def _fence(where: str, c: TxnCondition) -> Fence:
    others = (c.counter, c.item, c.cmp, c.value, c.version, c.exists)
    if c.token is None or any(x is not None for x in others):
        raise InvalidInput(f"{where}: a lock condition holds lock and token, nothing else")
    assert c.lock is not None
    return Fence(c.lock, c.token)


def _condition(where: str, c: TxnCondition) -> Condition:
    if c.token is not None:
        raise InvalidInput(f"{where}: token goes with lock")
    kind, name = _target(where, c.counter, c.item)
    tests = sum(t is not None for t in (c.cmp, c.version, c.exists))
    if tests != 1:
        raise InvalidInput(f"{where} must hold exactly one of cmp, version and exists")
    if (c.cmp is None) != (c.value is None):
        raise InvalidInput(f"{where}: cmp and value go together")
    if c.cmp is not None and kind != "counter":
        raise InvalidInput(f"{where}: cmp compares a counter's value; records take version")
    return Condition(kind, name, c.cmp, c.value or 0, c.version, c.exists)


def _is_int64(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return INT64_MIN <= value <= INT64_MAX


def _operation(where: str, o: TxnOperation, record_limit: int) -> Operation:
    kind, name = _target(where, o.counter, o.item)
    if o.op not in _OPS[kind]:
        raise InvalidInput(f"{where}: a {kind} takes {', '.join(sorted(_OPS[kind]))}, not {o.op}")
    has_value = o.value is not msgspec.UNSET
    if o.op == "increment":
        if has_value:
            raise InvalidInput(f"{where}: increment takes by, not value")
        return Operation("increment", kind, name, 1 if o.by is None else o.by)
    if o.by is not None:
        raise InvalidInput(f"{where}: only increment takes by")
    if o.op in ("get", "delete"):
        if has_value:
            raise InvalidInput(f"{where}: {o.op} takes no value")
        return Operation(o.op, kind, name)
    if not has_value:
        raise InvalidInput(f"{where}: {o.op} needs a value")
    if o.op == "set" and not _is_int64(o.value):
        raise InvalidInput(f"{where}: value must be a signed 64-bit integer")
    if o.op == "put":
        check_record_size(o.value, record_limit)
    return Operation(o.op, kind, name, o.value)


def parse_txn(
    body: TxnBody,
    settings: Settings,
    claim: Claim | None = None,
    fences: tuple[Fence, ...] = (),
) -> Txn:
    """The transaction a decoded body describes; ``InvalidInput`` (422) for anything amiss.

    Lock conditions join ``fences`` (those of the ``Lockstep-Fence`` header)."""
    count = len(body.if_) + len(body.then) + len(body.else_)
    if count > settings.txn_max_ops:
        raise InvalidInput(
            f"the transaction holds {count} conditions and operations; the limit is"
            f" {settings.txn_max_ops} (LOCKSTEP_TXN_MAX_OPS)"
        )
    limit = settings.record_limit
    fenced = {f.name: f for f in fences}
    for i, c in enumerate(body.if_):
        if c.lock is not None:
            fence = _fence(f"if[{i}]", c)
            if fenced.setdefault(fence.name, fence) != fence:
                raise InvalidInput(f"if[{i}]: lock {fence.name!r} is named with two tokens")
    return Txn(
        tuple(_condition(f"if[{i}]", c) for i, c in enumerate(body.if_) if c.lock is None),
        tuple(_operation(f"then[{i}]", o, limit) for i, o in enumerate(body.then)),
        tuple(_operation(f"else[{i}]", o, limit) for i, o in enumerate(body.else_)),
        limit,
        claim,
        tuple(sorted(fenced.values())),
    )


def result_body(result: Result) -> Any:
    """A result as the single-resource endpoints would show it."""
    if isinstance(result, CounterResult):
        c = result.counter
        if c is None:
            return TxnCounter(result.name, None, None)
        return TxnCounter(c.name, c.value, c.version)
    if isinstance(result, RecordResult):
        r = result.record
        if r is None:
            return TxnRecord(result.id, None, None, None)
        return TxnRecord(r.id, r.value, r.version, r.updated_at)
    assert result is DELETED
    return TxnDeleted(True)


def render(outcome: Any) -> Rendered:
    """The whole response for a transaction's outcome (stored with its Idempotency-Key)."""
    if isinstance(outcome, LockstepError):
        return render_error(outcome)
    assert isinstance(outcome, Evaluated)
    body = TxnAnswer(outcome.succeeded, outcome.revision, [result_body(r) for r in outcome.results])
    headers = {"Content-Type": JSON}
    if outcome.changed:
        headers[REVISION_HEADER] = str(outcome.revision)
    return Rendered(200, headers, _encode(body))


async def txn(request: web.Request) -> web.Response:
    """Apply a transaction: every condition holds → ``then``, else ``else``; all or nothing."""
    settings = request.app[SETTINGS]
    raw = await read_body(request)
    if not raw.strip():
        raise InvalidInput("a JSON body is required")
    body = decode_json(raw, TxnBody, settings.max_json_depth, wrapper=_WRAPPER)
    claim = claim_for(request, raw, render)
    todo = parse_txn(body, settings, claim, fences_of(request))

    async def run() -> TxnOutcome:
        metrics = request.app[METRICS]
        started = time.perf_counter()
        try:
            async with request.app[LOCKS].hold(*todo.lock_keys()):
                metrics.waited("txn", time.perf_counter() - started)
                return await request.app[STORAGE].apply_txn(todo)
        except LockTimeout:
            metrics.timed_out("txn", time.perf_counter() - started)
            raise

    return await answer(request, claim, run, render)
