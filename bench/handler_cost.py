"""CPU cost of lockstep's own request path, without HTTP parsing or sockets.

A development aid for cutting per-request overhead on a noisy machine: wrk's req/s
swings with whatever else runs, but the process CPU time per request spent in routing,
middleware, handler, combiner and storage (both threads) does not swing much. Requests
are built in memory and sent through the application's router in waves of
``--concurrency``, so write combining and group commit batch as they would under load.

    python -m bench.handler_cost [--requests 20000] [--concurrency 32] [--only access]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from app.main import create_app
from app.settings import Settings

PATCH = CIMultiDict({"Content-Type": "application/merge-patch+json"})
JSON = CIMultiDict({"Content-Type": "application/json"})

Build = Callable[[int], tuple[str, str, CIMultiDict[str], bytes]]
SHAPES: dict[str, Build] = {
    "access": lambda n: ("GET", "/access", CIMultiDict(), b""),
    "increment-one": lambda n: ("POST", "/counters/one/increment", CIMultiDict(), b""),
    "increment-1000": lambda n: ("POST", f"/counters/k{n % 1000}/increment", CIMultiDict(), b""),
    "put-1000": lambda n: ("PUT", f"/items/i{n % 1000}", JSON, b'{"value": {"n": %d}}' % n),
    "patch-hot": lambda n: ("PATCH", "/items/hot", PATCH, b'{"f%d": %d}' % (n % 64, n)),
    "read": lambda n: ("GET", "/counters/one", CIMultiDict(), b""),
    "hello": lambda n: ("GET", "/hello", CIMultiDict(), b""),
}


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="Hello, world")


def _request(app: web.Application, shape: Build, n: int) -> web.Request:
    method, path, headers, body = shape(n)
    req = make_mocked_request(method, path, headers=headers, app=app)
    if body:
        req._read_bytes = body
    return req


async def measure(name: str, requests: int, concurrency: int) -> float:
    """CPU µs per request for one shape, after a warm-up wave."""
    with tempfile.TemporaryDirectory() as tmp:
        app = await create_app(Settings(data_dir=Path(tmp)))
        app.router.add_get("/hello", _hello)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            handle = app._handle
            shape = SHAPES[name]
            counter = itertools.count()
            seed = make_mocked_request("PUT", "/items/hot", headers=JSON, app=app)
            seed._read_bytes = b'{"value": {}}'
            await handle(seed)
            seed = make_mocked_request("PUT", "/counters/one", headers=JSON, app=app)
            seed._read_bytes = b'{"value": 1}'
            await handle(seed)

            async def wave(reqs: list[web.Request]) -> None:
                responses = await asyncio.gather(*(handle(r) for r in reqs))
                bad = [r.status for r in responses if r.status >= 300]
                assert not bad, f"{name}: statuses {bad[:5]}"

            waves = [
                [_request(app, shape, next(counter)) for _ in range(concurrency)]
                for _ in range(requests // concurrency + 1)
            ]
            await wave(waves.pop())  # warm-up
            start = time.process_time()
            for reqs in waves:
                await wave(reqs)
            spent = time.process_time() - start
        finally:
            await runner.cleanup()
    return spent * 1e6 / (requests // concurrency * concurrency)


async def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--only", default="")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(SHAPES)
    for name in names:
        cost = await measure(name, args.requests, args.concurrency)
        print(f"{name:>15}: {cost:6.1f} µs CPU per request (pid {os.getpid()})")


if __name__ == "__main__":
    asyncio.run(main())
