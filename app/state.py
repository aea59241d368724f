"""Typed application state: the AppKeys and small accessors handlers use to reach it."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from app.combining import Combiner
from app.domain import CounterOp, CounterOutcome, ItemOp, ItemOutcome
from app.idempotency import InFlight
from app.locks import LockRegistry
from app.settings import Settings
from app.storage import Storage


@dataclass(slots=True)
class Health:
    """Process-level flags /readyz reports."""

    shutting_down: bool = False


SETTINGS = web.AppKey("settings", Settings)
HEALTH = web.AppKey("health", Health)
LOCKS = web.AppKey("locks", LockRegistry)
STORAGE = web.AppKey("storage", Storage)
COUNTERS = web.AppKey("counters", Combiner[CounterOp, CounterOutcome])
ITEMS = web.AppKey("items", Combiner[ItemOp, ItemOutcome])
IN_FLIGHT = web.AppKey("in_flight", InFlight)


def get_settings(request: web.Request) -> Settings:
    return request.app[SETTINGS]


def get_storage(request: web.Request) -> Storage:
    return request.app[STORAGE]


def get_counters(request: web.Request) -> Combiner[CounterOp, CounterOutcome]:
    return request.app[COUNTERS]


def get_items(request: web.Request) -> Combiner[ItemOp, ItemOutcome]:
    return request.app[ITEMS]


def get_in_flight(request: web.Request) -> InFlight:
    return request.app[IN_FLIGHT]


def get_health(request: web.Request) -> Health:
    return request.app[HEALTH]
