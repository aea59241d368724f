"""Domain errors: raised by validation, locks and storage, mapped to problem bodies by the envelope.

Each error knows its HTTP status and a stable problem ``type`` slug, so the mapping lives
in one place and storage code never imports anything from aiohttp.
"""

from __future__ import annotations


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


class NotFound(LockstepError):
    """The counter or record does not exist."""

    status = 404
    slug = "not-found"
    title = "Not Found"


class PreconditionFailed(LockstepError):
    """An If-Match / If-None-Match precondition did not hold; nothing was written."""

    status = 412
    slug = "precondition-failed"
    title = "Precondition Failed"


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
