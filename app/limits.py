"""Input limits beyond body size: header size, UTF-8, JSON nesting depth, duplicate JSON keys.

Every check here is sized so the common small request pays a few byte scans at C speed;
the precise walks only run for bodies that could possibly break a limit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import msgspec
from aiohttp import web

from app.errors import HeadersTooLarge, MalformedBody


def parser_limits(max_header_bytes: int) -> dict[str, int]:
    """aiohttp parser limits: a hard backstop above ours, so ours answers with a problem body."""
    return {"max_field_size": 4 * max_header_bytes}


def check_header_size(request: web.Request, limit: int) -> None:
    """431 when the header lines add up to more than ``limit`` bytes."""
    size = sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
    if size > limit:
        raise HeadersTooLarge(f"request headers are {size} bytes; the limit is {limit}")


def check_utf8(raw: bytes) -> None:
    """400 unless a JSON body is UTF-8 (RFC 8259 section 8.1), whatever its shape.

    msgspec checks the bytes of the strings it decodes only: a string where an integer
    belongs is "expected int" (422) before its bytes are looked at. ASCII, the common
    body, costs one scan at C speed.
    """
    if raw.isascii():
        return
    try:
        raw.decode()
    except UnicodeDecodeError as e:
        raise MalformedBody(
            f"body is not valid UTF-8: byte {raw[e.start]:#04x} at offset {e.start}"
        ) from e


def _walk(value: Any, max_depth: int, wrapper: int = 0) -> None:
    """Raise ``MalformedBody`` if ``value`` nests deeper than ``max_depth`` + ``wrapper``."""
    stack: list[tuple[Any, int]] = [(value, 1 - wrapper)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list | msgspec.Struct):
            if depth > max_depth:
                raise MalformedBody(f"JSON nested too deeply: more than {max_depth} levels")
            children: Iterable[Any]
            if isinstance(node, msgspec.Struct):
                children = [getattr(node, f) for f in node.__struct_fields__]
            else:
                children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        keys = [k for k, _ in pairs]
        dup = next(k for k in obj if keys.count(k) > 1)
        raise MalformedBody(f"duplicate key {dup!r} in a JSON object")
    return obj


def check_json(raw: bytes, value: Any, max_depth: int, wrapper: int = 0) -> None:
    """Checks msgspec does not make on a body it decoded into ``value``.

    ``wrapper`` is how many levels of the body wrap the value that is stored (1 for
    ``{"value": ...}``): the depth limit is the stored value's, so whatever can be stored
    can be written back.

    msgspec keeps the last of duplicate keys without a word: a body that means different
    things to different parsers is refused (RFC 8259 section 4, RFC 7493 section 2.3).
    A body with no more brackets than ``max_depth`` cannot nest deeper, so only bodies
    with many brackets pay for the walk.
    """
    if raw.count(b"[") + raw.count(b"{") > max_depth + wrapper:
        _walk(value, max_depth, wrapper)
    # Two keys need two colons; a body with fewer cannot repeat one.
    if raw.count(b":") >= 2:
        json.loads(raw, object_pairs_hook=_no_duplicates)
