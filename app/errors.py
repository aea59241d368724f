"""Domain errors: raised by validation, locks and storage, mapped to problem bodies by a middleware.

Each error knows its HTTP status and a stable problem ``type`` slug, so the mapping lives
in one place and storage code never imports anything from aiohttp.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Most characters of a client's path a detail repeats.
_PATH_SHOWN = 200


# What each status means across the API, as the OpenAPI document explains it.
STATUS_MEANINGS = {
    400: "The body is not UTF-8 JSON, nests too deeply, repeats a key, ended early, or is not "
    "valid in its Content-Encoding; or (tokens on) the request has two Authorization headers.",
    401: "A tokens file is configured and the request has no known bearer token.",
    403: "The token's scope does not cover this request.",
    404: "The counter or record does not exist, or the lock is not held.",
    408: "The body did not arrive within LOCKSTEP_BODY_TIMEOUT seconds; the connection is "
    "closed and nothing changed.",
    409: "The change would leave the signed 64-bit range, a transaction's operation cannot "
    "apply (the detail names it), a request with the same Idempotency-Key is still in "
    "flight, or a lock stayed held (`lock-held`, with the holder's `owner` and `expires_at`, "
    "and Retry-After); nothing changed.",
    410: "The change log no longer reaches back to `since` (LOCKSTEP_CHANGES_RETENTION); the "
    "problem's `oldest` is the oldest revision still kept.",
    412: "An If-Match / If-None-Match precondition failed, a lock's token is not its "
    "holder's, or a fence is stale (`fence-stale`: the lock is not held with that token); "
    "nothing changed.",
    428: 'The request must name the token it holds: If-Match: "<token>".',
    413: "The body is larger than LOCKSTEP_MAX_BODY_BYTES, or the record would be larger than "
    "LOCKSTEP_MAX_RECORD_BYTES; nothing changed.",
    415: "A body's Content-Encoding must be gzip, deflate or none; PATCH needs "
    "Content-Type: application/merge-patch+json.",
    422: "A bad name, query parameter or body field, or an Idempotency-Key reused for a "
    "different request.",
    431: "The header lines add up to more than LOCKSTEP_MAX_HEADER_BYTES.",
    503: "The resource's lock or the database was not available in time; retry.",
}
STATUS_HEADERS = {401: ("WWW-Authenticate",), 403: ("WWW-Authenticate",), 409: ("Retry-After",),
                  415: ("Accept-Encoding", "Accept-Patch"), 503: ("Retry-After",)}  # fmt: skip


class LockstepError(Exception):
    """Base of every error the service answers with a 4xx/5xx problem body."""

    status = 500
    slug = "internal-error"
    title = "Internal Server Error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def headers(self) -> dict[str, str]:
        """Extra response headers this error asks for."""
        return {}

    @property
    def extra(self) -> dict[str, Any]:
        """Members the problem body carries besides type, title, status and detail."""
        return {}


class InvalidInput(LockstepError):
    """A name, parameter or body that is well-formed but not acceptable."""

    status = 422
    slug = "invalid-input"
    title = "Unprocessable Content"


class MalformedBody(LockstepError):
    """A body that is not parseable JSON at all."""

    status = 400
    slug = "malformed-body"
    title = "Bad Request"


class BodyTimeout(LockstepError):
    """The body did not arrive in time; the connection is closed after the answer."""

    status = 408
    slug = "body-timeout"
    title = "Request Timeout"

    @property
    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class AmbiguousRequest(LockstepError):
    """A request two parsers could read differently (a header that must appear once, twice)."""

    status = 400
    slug = "ambiguous-request"
    title = "Bad Request"


class NotFound(LockstepError):
    """The counter or record does not exist."""

    status = 404
    slug = "not-found"
    title = "Not Found"


class NoSuchPath(NotFound):
    """No route has the path at all (a typo in a URL, not a missing counter or record)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"no such path: {_shown(path)}; the API is listed at /openapi.json")


class MethodNotAllowed(LockstepError):
    """The path exists, but not for this method; ``Allow`` lists the methods it has."""

    status = 405
    slug = "method-not-allowed"
    title = "Method Not Allowed"

    def __init__(self, path: str, allowed: Iterable[str]) -> None:
        self.allowed = ", ".join(sorted(allowed))
        super().__init__(f"{_shown(path)} allows only {self.allowed}")

    @property
    def headers(self) -> dict[str, str]:
        return {"Allow": self.allowed}


class BodyTooLarge(LockstepError):
    """The body is larger than the configured limit."""

    status = 413
    slug = "body-too-large"
    title = "Content Too Large"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the body is larger than the limit of {limit} bytes (LOCKSTEP_MAX_BODY_BYTES)"
        )


class UnsupportedMediaType(LockstepError):
    """A body in a media type or content coding the operation does not take.

    RFC 9110 section 15.5.16 and RFC 5789 section 2.2: the answer names what would have
    been taken, in ``Accept-Encoding`` or ``Accept-Patch``.
    """

    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported Media Type"

    def __init__(self, detail: str, accept: dict[str, str]) -> None:
        super().__init__(detail)
        self.accept = accept

    @property
    def headers(self) -> dict[str, str]:
        return self.accept


class UnsupportedEncoding(UnsupportedMediaType):
    """A body in a Content-Encoding other than those aiohttp decodes (gzip, deflate)."""

    def __init__(self, note: str = "") -> None:
        super().__init__(
            f"Content-Encoding must be gzip, deflate or none{note}",
            {"Accept-Encoding": "gzip, deflate"},
        )


class MalformedRequest(MalformedBody):
    """Bytes the HTTP parser refuses: not an HTTP/1.1 request this server can read."""

    slug = "malformed-request"


class PreconditionFailed(LockstepError):
    """An If-Match / If-None-Match precondition did not hold; nothing was written."""

    status = 412
    slug = "precondition-failed"
    title = "Precondition Failed"


class PreconditionRequired(LockstepError):
    """A request that must name what it changes (``If-Match``) did not; nothing changed."""

    status = 428
    slug = "precondition-required"
    title = "Precondition Required"


class RecordTooLarge(LockstepError):
    """A PUT or PATCH whose resulting record would exceed the stored-size cap; nothing written."""

    status = 413
    slug = "record-too-large"
    title = "Content Too Large"


class ChangesPurged(LockstepError):
    """The change log no longer holds every change after the revision asked for."""

    status = 410
    slug = "changes-purged"
    title = "Gone"

    def __init__(self, since: int, oldest: int) -> None:
        super().__init__(
            f"the change log keeps LOCKSTEP_CHANGES_RETENTION seconds and starts at revision"
            f" {oldest}; changes right after {since} are gone. Read the current state (a"
            f" stream without since sends it) and follow on from its revision"
        )
        self.oldest = oldest

    @property
    def extra(self) -> dict[str, Any]:
        return {"oldest": self.oldest}


class OutOfRange(LockstepError):
    """The change would leave the signed 64-bit range; nothing was written."""

    status = 409
    slug = "out-of-range"
    title = "Conflict"


class Unavailable(LockstepError):
    """A transient condition; the client should retry after a moment."""

    status = 503
    slug = "unavailable"
    title = "Service Unavailable"
    retry_after = 1

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class LockTimeout(Unavailable):
    """The resource's lock could not be had within the configured time."""

    slug = "lock-timeout"

    def __init__(self, resource: str, timeout: float) -> None:
        super().__init__(
            f"resource {resource!r} stayed locked for {timeout:g} s; nothing was changed"
        )
        self.resource = resource


class StorageUnavailable(Unavailable):
    """The database refused or failed the operation (locked, read-only, full, gone)."""

    slug = "storage-unavailable"


class Unauthenticated(LockstepError):
    """No bearer token, or one the tokens file does not know; RFC 6750 asks for a challenge."""

    status = 401
    slug = "unauthenticated"
    title = "Unauthorized"

    def __init__(self, detail: str, *, invalid: bool = False) -> None:
        super().__init__(detail)
        self.invalid = invalid

    @property
    def headers(self) -> dict[str, str]:
        challenge = 'Bearer realm="lockstep"'
        if self.invalid:
            challenge += ', error="invalid_token"'
        return {"WWW-Authenticate": challenge}


class Forbidden(LockstepError):
    """A known token whose scope does not cover the request."""

    status = 403
    slug = "insufficient-scope"
    title = "Forbidden"

    def __init__(self, scope: str) -> None:
        super().__init__(f"this request needs a token with scope {scope!r}")
        self.scope = scope

    @property
    def headers(self) -> dict[str, str]:
        return {
            "WWW-Authenticate": (
                f'Bearer realm="lockstep", error="insufficient_scope", scope="{self.scope}"'
            )
        }


class HeadersTooLarge(LockstepError):
    """The request's header lines add up to more than the configured limit."""

    status = 431
    slug = "headers-too-large"
    title = "Request Header Fields Too Large"


def _shown(path: str) -> str:
    """A client's path as a detail repeats it: cut short, so a detail stays a line."""
    return path if len(path) <= _PATH_SHOWN else path[:_PATH_SHOWN] + "…"
