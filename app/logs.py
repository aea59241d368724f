"""Structured logs: request ids, the per-request context, and the text and JSON line formats.

Every record logged while a request is being handled carries that request's id, so an
error's traceback and the request's own line can be matched. gunicorn installs the
formatter through ``logging_config`` (see ``config/gunicorn.conf.py``); nothing here runs
at import time.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import os
import re
import time
from typing import Any

import msgspec

# The name access lines carry in their ``logger`` field, like every other line's logger.
ACCESS_LOGGER = "app.access"
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_MAX = 64
# Characters a client's request id may keep; anything else is dropped (no spaces, no quotes,
# no control characters), so an id can be pasted into a log search and never forges a line.
_UNSAFE = re.compile(r"[^A-Za-z0-9._~:+=/@-]")


class RequestContext:
    """What one request gathers while it is handled: its id and the time spent on locks."""

    __slots__ = ("lock_wait", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.lock_wait = 0.0


CURRENT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "lockstep_request", default=None
)


class _RequestIds:
    """Fresh request ids: 24 hex digits, a random prefix per process and a counter.

    Unique like a random id (the prefix is drawn again in every forked worker), but without
    a ``getrandom`` system call on every request.
    """

    def __init__(self) -> None:
        self._prefix = ""
        self._count = itertools.count()

    def next(self) -> str:
        if not self._prefix:
            self._reseed()
            os.register_at_fork(after_in_child=self._reseed)
        return f"{self._prefix}{next(self._count) & 0xFFFFFFFFFFFF:012x}"

    def _reseed(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._count = itertools.count()


_ids = _RequestIds()


def request_id_from(header: str | None) -> str:
    """The client's ``X-Request-ID`` made safe and short, or a fresh id."""
    if header:
        cleaned = _UNSAFE.sub("", header[: REQUEST_ID_MAX * 4])[:REQUEST_ID_MAX]
        if cleaned:
            return cleaned
    return _ids.next()


def _utc(created: float) -> str:
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class LogFormatter(logging.Formatter):
    """One line per record: ``text`` for people, ``json`` for log pipelines."""

    def __init__(self, format: str = "text") -> None:
        super().__init__()
        if format not in ("text", "json"):
            raise ValueError(f"log format must be text or json, not {format!r}")
        self.json = format == "json"
        self._encode = msgspec.json.Encoder().encode

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        if request_id is None:
            context = CURRENT.get()
            request_id = context.request_id if context is not None else None
        extra = {k: v for k, v in record.__dict__.items() if k not in _RESERVED}
        extra.pop("request_id", None)
        message = record.getMessage()
        error = self.formatException(record.exc_info) if record.exc_info else None
        if self.json:
            line: dict[str, Any] = {
                "time": _utc(record.created),
                "level": record.levelname.lower(),
                "logger": record.name,
                "pid": record.process,
                "request_id": request_id,
                "message": message,
                **extra,
            }
            if error:
                line["error"] = error
            return self._encode(line).decode()
        head = f"{_utc(record.created)} {record.levelname} [{record.process}] {record.name}"
        if request_id is not None:
            head += f" request_id={request_id}"
        fields = "".join(f" {k}={v}" for k, v in extra.items())
        text = f"{head} {message}{fields}"
        return f"{text}\n{error}" if error else text


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that flushes once per event-loop turn instead of once per line.

    On the event loop's thread, a record's flush is put off to the end of the current loop
    iteration, so the lines of every request answered in that turn leave in one write.
    Anywhere else (the master, a thread) it flushes at once, as StreamHandler does.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._flush_pending = False

    def flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            super().flush()
            return
        if not self._flush_pending:
            self._flush_pending = True
            loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_pending = False
        super().flush()


class NoEmptyListening(logging.Filter):
    """Drop gunicorn's "Listening at:" line when it names no socket.

    With a socket per worker (``LOCKSTEP_REUSE_PORT``) the master holds none, and the
    configuration's ``when_ready`` names the addresses instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.msg == "Listening at: %s (%s)" and args[:1] == ("",))


def logging_config(level: str, format: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for gunicorn's ``logconfig_dict``: every logger, one format.

    The app's own access log (``app.access_log``, not a logger) replaces gunicorn's and
    aiohttp's, which stay off.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"lockstep": {"()": "app.logs.LogFormatter", "format": format}},
        "filters": {
            "quiet_halt": {"()": "app.worker.QuietHalt"},
            "no_empty_listening": {"()": "app.logs.NoEmptyListening"},
        },
        "handlers": {
            "lockstep": {
                "class": "app.logs.LineHandler",
                "formatter": "lockstep",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"level": level.upper(), "handlers": ["lockstep"]},
        "loggers": {
            "gunicorn.error": {
                "level": level.upper(),
                "handlers": [],
                "propagate": True,
                "filters": ["quiet_halt", "no_empty_listening"],
            },
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
            "aiohttp.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }
