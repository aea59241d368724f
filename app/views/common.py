"""Request parsing and response building shared by the handlers."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from app.domain import Precondition, check_name
from app.errors import (
    BodyTimeout,
    BodyTooLarge,
    InvalidInput,
    LockstepError,
    MalformedBody,
    UnsupportedEncoding,
)
from app.limits import check_json, check_utf8
from app.settings import SETTINGS

T = TypeVar("T")

JSON = "application/json"
NO_STORE = {"Cache-Control": "no-store"}
# On every answer that changed state: the revision of the commit that applied it.
REVISION_HEADER = "Lockstep-Revision"

# The entity tags this service hands out: a version, 1 to 2**63 - 1, in ASCII digits with no
# leading zero. Only a tag spelled exactly so can match; ``str.isdigit`` would also let
# through "01", "²" or a 5,000-digit number that ``int()`` refuses.
_OUR_ETAG = re.compile(r'"([1-9][0-9]{0,18})"', re.ASCII)
_MAX_VERSION = 2**63 - 1
_BARE_VERSION = re.compile(r"[0-9]{1,19}", re.ASCII)

# The Content-Encodings a body may arrive in: those aiohttp decodes before ``read()``.
_DECODED = frozenset({"identity", "gzip", "deflate"})

_encode = msgspec.json.Encoder().encode


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response, encoded with msgspec."""
    return web.Response(body=_encode(body), status=status, content_type=JSON, headers=headers)


def raise_if_error(outcome: T | LockstepError) -> T:
    """Turn an operation's error outcome into the exception the middleware maps."""
    if isinstance(outcome, LockstepError):
        raise outcome
    return outcome


def path_name(request: web.Request, key: str) -> str:
    """A validated name or id from the URL path."""
    return check_name(request.match_info[key], key)


def decode_json(raw: bytes, type_: type[T], max_depth: int, wrapper: int = 0) -> T:
    """Decode and validate a JSON body: 400 when it is not UTF-8 JSON, 422 for the wrong shape.

    ``wrapper``: levels of the body around the stored value (see ``app.limits.check_json``).
    """
    check_utf8(raw)
    try:
        value = msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as e:
        raise InvalidInput(f"invalid body: {e}") from e
    except RecursionError as e:
        raise MalformedBody(f"JSON nested too deeply: more than {max_depth} levels") from e
    except (msgspec.DecodeError, ValueError) as e:
        raise MalformedBody(f"body is not valid JSON: {e}") from e
    check_json(raw, value, max_depth, wrapper)
    return value


async def read_body(request: web.Request) -> bytes:
    """The whole body (bounded by ``client_max_size``); 400 if it is cut short or undecodable.

    aiohttp decodes a gzip or deflate body and refuses br and zstd (no decoder installed)
    in its parser (``app.parser_errors`` answers those 415); any other Content-Encoding it
    would pass through undecoded, so that is a 415 here rather than a body read as if it
    had none.
    """
    encoding = request.headers.get("Content-Encoding")
    if encoding is not None and encoding.strip().lower() not in _DECODED:
        raise UnsupportedEncoding()
    timeout = request.app[SETTINGS].body_timeout
    try:
        if request.content.is_eof():
            # All of it has arrived (or there is none, as in a bare increment): nothing to
            # wait for, so no timer to arm and cancel (3-4 µs of a request's CPU).
            return await request.read()
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError as e:
        # Close after the answer, without reading (lingering on) the rest of the body.
        request.content.feed_eof()
        request.protocol.close()
        raise BodyTimeout(f"the body did not arrive within {timeout:g} s") from e
    except web.HTTPRequestEntityTooLarge as e:
        raise BodyTooLarge(request.app[SETTINGS].max_body_bytes) from e
    except (HttpProcessingError, ConnectionError) as e:
        raise MalformedBody("the body ended before its Content-Length or chunking said") from e
    except web.RequestPayloadError as e:
        # The parser failed on the body itself: bad chunking, or bytes not in the named
        # encoding. Nothing more of it can be read, so end it here, or aiohttp reads it again
        # after the answer and logs the same error as unhandled; and close the connection
        # after the answer, rather than parse what follows the bad bytes as a request.
        request.content.feed_eof()
        request.protocol.close()
        what = f"valid {encoding.strip().lower()} data" if encoding else "readable"
        raise MalformedBody(f"the body is not {what}, as its headers say") from e


async def read_json(request: web.Request, type_: type[T], *, optional: bool = False) -> T | None:
    """Read the body and decode it as ``type_``."""
    raw = await read_body(request)
    if not raw.strip():
        if optional:
            return None
        raise InvalidInput("a JSON body is required")
    return decode_json(raw, type_, request.app[SETTINGS].max_json_depth)


def list_params(request: web.Request) -> tuple[str, str, int]:
    """``prefix``, ``after`` and ``limit`` query parameters, validated."""
    query = request.query
    prefix = query.get("prefix", "")
    after = query.get("after", "")
    for what, text in (("prefix", prefix), ("after", after)):
        if text:
            check_name(text, what)
    limit_max = request.app[SETTINGS].list_limit_max
    raw_limit = query.get("limit", "100")
    valid = raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 9
    limit = int(raw_limit) if valid else 0
    if not 1 <= limit <= limit_max:
        raise InvalidInput(f"limit must be an integer from 1 to {limit_max}")
    return prefix, after, limit


def page(items: list[T], limit: int, cursor: Callable[[T], str]) -> tuple[list[T], str | None]:
    """The first ``limit`` of ``limit + 1`` items, and the ``after`` of the next page if any."""
    shown = items[:limit]
    return shown, cursor(shown[-1]) if len(items) > limit else None


def _etags(header: str, weak: bool = False) -> tuple[frozenset[int], bool]:
    """Parse a list of entity tags; returns the versions named and whether ``*`` was.

    ``weak``: compare weakly (If-None-Match, RFC 9110 13.1.2), so ``W/"1"`` names version 1.
    """
    versions: set[int] = set()
    for part in header.split(","):
        tag = part.strip()
        if tag == "*":
            return frozenset(), True
        if weak and tag.startswith("W/"):
            tag = tag[2:]
        # Only tags of our own form ("<version>") can ever match.
        ours = _OUR_ETAG.fullmatch(tag)
        if ours and (version := int(ours[1])) <= _MAX_VERSION:
            versions.add(version)
    return frozenset(versions), False


def _quoting_hint(name: str, header: str) -> str:
    """What to say about header ``name`` when it holds a tag without its quotes (``1``)."""
    for part in header.split(","):
        tag = part.strip()
        if tag and tag != "*" and not tag.startswith(('"', 'W/"')):
            example = tag if _BARE_VERSION.fullmatch(tag) else "1"
            return f'; entity tags are quoted: {name}: "{example}"'
    return ""


def conditions(request: web.Request) -> Precondition | None:
    """The If-Match / If-None-Match headers of a request, or None when it has neither."""
    headers = request.headers
    if "If-Match" not in headers and "If-None-Match" not in headers:
        return None
    return precondition(request)


def precondition(request: web.Request) -> Precondition:
    """The If-Match / If-None-Match headers of a request."""
    if_match = request.headers.get("If-Match")
    if_none_match = request.headers.get("If-None-Match")
    if if_match is None and if_none_match is None:
        return Precondition()
    match, match_any = _etags(if_match) if if_match is not None else (None, False)
    none_match, none_any = (
        _etags(if_none_match, weak=True) if if_none_match is not None else (None, False)
    )
    return Precondition(
        if_match=None if match_any else match,
        if_match_any=match_any,
        if_none_match=None if none_any else none_match,
        if_none_match_any=none_any,
        hint="" if if_match is None else _quoting_hint("If-Match", if_match),
        unquoted_none_match=(
            "" if if_none_match is None else _quoting_hint("If-None-Match", if_none_match)
        ),
    )
