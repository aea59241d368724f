"""Typed application state: the AppKeys and small accessors handlers use to reach it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from app.access_log import AccessLog
from app.combining import Combiner
from app.domain import CounterOp, CounterOutcome, ItemOp, ItemOutcome
from app.events import EventHub
from app.idempotency import InFlight
from app.locks import LockRegistry
from app.metrics import Metrics
from app.settings import Settings
from app.storage import Storage
from app.tokens import TokenStore

if TYPE_CHECKING:
    from app.envelope import Envelope


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
METRICS = web.AppKey("metrics", Metrics)
# None while the access log is off (LOCKSTEP_LOG_LEVEL above info).
ACCESS_LOG: web.AppKey[AccessLog | None] = web.AppKey("access_log")
EVENTS = web.AppKey("events", EventHub)
TOKENS = web.AppKey("tokens", TokenStore)  # only while a tokens file is configured
REQUEST_ID = web.RequestKey("request_id", str)
# Wraps a handler in the envelope (app.envelope); for routes added after create_app.
ENVELOPE: web.AppKey[Envelope] = web.AppKey("envelope")


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


def get_metrics(request: web.Request) -> Metrics:
    return request.app[METRICS]


def get_events(request: web.Request) -> EventHub:
    return request.app[EVENTS]


def get_tokens(request: web.Request) -> TokenStore | None:
    return request.app.get(TOKENS)
