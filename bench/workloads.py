"""The workloads ``make bench`` drives, and the exactly-once check after each write one.

Every write workload has a *tally*: a number read back from the service that each
applied request raises by exactly one (a counter's value, the sum of the records'
versions). After a wrk run the tally must have grown by the number of 2xx answers wrk
counted, plus at most one per open connection: requests wrk sent but stopped waiting
for when its time was up may still have been committed. Anything else is a lost or
doubled write, and the benchmark fails.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.servers import FLOOR, HELLO, LOCKSTEP, POSTGRES, QUIET, REDIS_ALWAYS, REDIS_EVERYSEC

LUA = Path(__file__).resolve().parent / "lua"
KEYS = 1000  # counters / records the spread workloads cycle over
PATCH_FIELDS = 64  # fields the hot-record patches cycle over


def http(method: str, url: str, body: Any = None, content_type: str = "application/json") -> Any:
    """One JSON request; returns the decoded body, or None on 404."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def counter_value(url: str, name: str) -> int:
    body = http("GET", f"{url}/counters/{name}")
    return 0 if body is None else int(body["value"])


def counters_sum(url: str, prefix: str) -> int:
    body = http("GET", f"{url}/counters?prefix={prefix}&limit={KEYS}")
    assert body["next"] is None, "more counters than the workload touches"
    return sum(int(c["value"]) for c in body["items"])


def versions_sum(url: str, prefix: str) -> int:
    body = http("GET", f"{url}/items?prefix={prefix}&limit={KEYS}")
    assert body["next"] is None, "more records than the workload touches"
    return sum(int(r["version"]) for r in body["items"])


def check_accounts(url: str, prefix: str) -> str | None:
    """The transfer workload's accounts sum to 0 (a half-applied transfer would move it)."""
    total = counters_sum(url, prefix)
    return None if total == 0 else f"the accounts sum to {total}, not 0 (a half-applied transfer)"


def record_version(url: str, record_id: str) -> int:
    body = http("GET", f"{url}/items/{record_id}")
    return 0 if body is None else int(body["version"])


def check_hot_document(url: str, record_id: str) -> str | None:
    """The hot record holds every patched field with a value some patch sent; else why not."""
    body = http("GET", f"{url}/items/{record_id}")
    value = body["value"]
    expected = {f"f{i}" for i in range(PATCH_FIELDS)}
    if set(value) != expected:
        return f"fields {sorted(set(value) ^ expected)} missing or unexpected"
    wrong = {
        k: v for k, v in value.items() if not isinstance(v, int) or v % PATCH_FIELDS != int(k[1:])
    }
    return f"fields hold values no patch sent: {wrong}" if wrong else None


@dataclass(frozen=True)
class Target:
    """``row``'s req/s at least ``bound`` times ``of``'s, or its p99 at most ``bound`` times."""

    row: str
    of: str
    bound: float
    measure: Literal["rate", "p99"] = "rate"


@dataclass(frozen=True)
class Workload:
    """One wrk run shape: its Lua script, its environment, and how to read its tally."""

    name: str
    title: str
    script: str
    key: str = ""
    keys: int = KEYS
    tally: Callable[[str], int] | None = None  # None: a read-only workload
    setup: Callable[[str], None] | None = None
    final_check: Callable[[str], str | None] | None = None
    targets: tuple[Target, ...] = ()
    # The variants (bench.servers.VARIANTS) that run it beside lockstep and hello world.
    peers: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    @property
    def target(self) -> float | None:
        """lockstep's required share of hello world's req/s, if any."""
        for t in self.targets:
            if (t.row, t.of, t.measure) == (LOCKSTEP, HELLO, "rate"):
                return t.bound
        return None

    def wrk_env(self) -> dict[str, str]:
        return {"BENCH_KEY": self.key, "BENCH_KEYS": str(self.keys), **self.env}

    def script_text(self) -> str:
        """The workload's Lua followed by the shared reporting ``done()``."""
        return (LUA / self.script).read_text() + "\n" + (LUA / "report.lua").read_text()


def _create_hot_record(url: str) -> None:
    if http("GET", f"{url}/items/bench-hot") is None:
        http("PUT", f"{url}/items/bench-hot", {"value": {}})


def _create_read_counter(url: str) -> None:
    http("PUT", f"{url}/counters/bench-read", {"value": 42})


WORKLOADS: list[Workload] = [
    Workload(
        "access",
        "GET /access",
        "access.lua",
        tally=lambda url: counter_value(url, "access"),
        targets=(
            Target(LOCKSTEP, HELLO, 0.50),
            Target(LOCKSTEP, REDIS_ALWAYS, 1.5),
            Target(LOCKSTEP, QUIET, 0.90),
            Target(QUIET, HELLO, 0.55),
            Target(LOCKSTEP, HELLO, 3.0, "p99"),
        ),
        peers=(QUIET, FLOOR, REDIS_ALWAYS, REDIS_EVERYSEC, POSTGRES),
    ),
    Workload(
        "increment-one",
        "POST /counters/{k}/increment, 1 key",
        "increment_one.lua",
        key="bench-one",
        tally=lambda url: counter_value(url, "bench-one"),
        peers=(FLOOR,),
    ),
    Workload(
        "increment-1000",
        "POST /counters/{k}/increment, 1,000 keys",
        "increment_spread.lua",
        key="bench-spread-",
        tally=lambda url: counters_sum(url, "bench-spread-"),
        targets=(Target(LOCKSTEP, HELLO, 0.45),),
        peers=(FLOOR,),
    ),
    Workload(
        "put-1000",
        "PUT /items/{id}, 1,000 ids",
        "put_items.lua",
        key="bench-put-",
        tally=lambda url: versions_sum(url, "bench-put-"),
    ),
    Workload(
        "patch-hot",
        "PATCH /items/{id}, 1 hot record",
        "patch_hot.lua",
        key="bench-hot",
        keys=PATCH_FIELDS,
        setup=_create_hot_record,
        tally=lambda url: record_version(url, "bench-hot"),
        final_check=lambda url: check_hot_document(url, "bench-hot"),
        targets=(Target(LOCKSTEP, HELLO, 0.40),),
    ),
    Workload(
        "transfer-1000",
        "POST /txn, transfers over 1,000 accounts",
        "transfer.lua",
        key="bench-xfer-",
        tally=lambda url: counters_sum(url, "bench-xfer-sent-"),
        final_check=lambda url: check_accounts(url, "bench-xfer-acct-"),
    ),
    Workload(
        "read",
        "GET /counters/{k}",
        "read_counter.lua",
        key="bench-read",
        setup=_create_read_counter,
    ),
]


def exactly_once_error(before: int, after: int, ok: int, connections: int) -> str | None:
    """Why a tally change does not match wrk's 2xx count, or None when it does."""
    applied = after - before
    if applied < ok:
        return f"{ok} requests answered 2xx but only {applied} applied (lost writes)"
    if applied > ok + connections:
        return (
            f"{applied} applied but only {ok} answered 2xx, more than the "
            f"{connections} connections wrk could have cut off (doubled writes)"
        )
    return None
