"""The HTTP side of Idempotency-Key: claims from headers, rendered and replayed responses.

Handlers of state-changing endpoints describe their success response as a pure
``render(outcome) -> Rendered``. Without a key the outcome's error is raised for the
middleware and the success is rendered as usual. With a key the same ``render``
travels inside the op into the write transaction (see ``app.idempotency``), where the
response is stored together with the change; the first request answers exactly those
bytes, and a repeat answers them again with ``Idempotent-Replayed: true``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from app.combining import Combiner
from app.errors import InvalidInput, LockstepError
from app.idempotency import IN_FLIGHT, Claim, Rendered, Replay, fingerprint
from app.metrics import METRICS
from app.problems import PROBLEM, problem_body
from app.views.fences import fenced, fences_of

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255

Op = TypeVar("Op")
Render = Callable[[Any], Rendered]


def render_error(error: LockstepError) -> Rendered:
    """The problem response the middleware would have sent for ``error``."""
    body = problem_body(error.status, error.title, error.detail, error.slug)
    return Rendered(error.status, {"Content-Type": PROBLEM, **error.headers}, body)


def claim_for(request: web.Request, body: bytes, render: Render) -> Claim | None:
    """The request's claim on its ``Idempotency-Key``, or None without the header."""
    raw = request.headers.get(KEY_HEADER)
    if raw is None:
        return None
    key = raw.strip()
    # The draft spells the key as a structured-field string: accept it quoted or bare.
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not (1 <= len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()):
        raise InvalidInput(f"{KEY_HEADER} must be 1-{MAX_KEY_LENGTH} printable ASCII characters")
    conditions = [request.headers.get(h, "") for h in ("If-Match", "If-None-Match")]
    digest = fingerprint(request.method, request.path, conditions, body)

    def render_any(outcome: Any) -> Rendered:
        if isinstance(outcome, LockstepError):
            return render_error(outcome)
        return render(outcome)

    return Claim(key, digest, render_any)


def response_for(rendered: Rendered, replayed: bool = False) -> web.Response:
    # aiohttp copies the headers into the response's own: the stored ones stay as they are.
    headers = {**rendered.headers, REPLAYED_HEADER: "true"} if replayed else rendered.headers
    body = rendered.body if rendered.status != 204 else None
    return web.Response(status=rendered.status, body=body, headers=headers)


async def execute(
    request: web.Request,
    combiner: Combiner[Op, Any],
    resource: str,
    op: Op,
    render: Render,
) -> web.Response:
    """Submit ``op`` for ``resource`` and answer its outcome, honouring its claim if any.

    With ``Lockstep-Fence`` it runs as a transaction of its own instead, behind its fences
    (``app.views.fences``)."""
    fences = fences_of(request)
    if fences:
        fenced_claim, run = fenced(request, resource, op, fences)
        return await answer(request, fenced_claim, run, render)
    claim: Claim | None = getattr(op, "claim", None)
    return await answer(request, claim, lambda: combiner.submit(resource, op), render)


async def answer(
    request: web.Request,
    claim: Claim | None,
    run: Callable[[], Awaitable[Any]],
    render: Render,
) -> web.Response:
    """Await ``run()`` (an operation carrying ``claim``) and answer its outcome: its error
    raised without a claim, else its rendered or replayed response."""
    if claim is None:
        outcome = await run()
        if isinstance(outcome, LockstepError):
            raise outcome
        return response_for(render(outcome))
    in_flight = request.app[IN_FLIGHT]
    in_flight.enter(claim.key)
    try:
        outcome = await run()
    finally:
        in_flight.leave(claim.key)
    if isinstance(outcome, Replay):
        # Counted here, where it is answered, not where the batch found the stored key: a
        # PostgreSQL transaction that is retried triages its ops again.
        request.app[METRICS].idempotent_replays.inc()
        return response_for(outcome.response, replayed=True)
    return response_for(claim.render(outcome))
