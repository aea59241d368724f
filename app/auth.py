"""Access control: the check of a request's token against its route's scope.

Each route's scope is declared in the route table (``app.routes``); a middleware
(``app.middleware``) runs ``authorize`` with it before every handler when a tokens file is
configured. With none, the service is open and pays nothing.
The token itself is never logged or stored; only its SHA-256 is compared (app/tokens.py).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Final, Literal

from aiohttp import web

from app.errors import AmbiguousRequest, Forbidden, Unauthenticated, Unavailable
from app.settings import Settings
from app.startup import StartupError
from app.tokens import Scope, TokensFileError, TokenStore

logger = logging.getLogger(__name__)

# The scope of a request no route of the table matched (404s, 405s, routes added after
# create_app): read for safe methods, write for the rest.
BY_METHOD: Final = "by-method"
RouteScope = Scope | Literal["by-method"] | None
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The scope a request's token was checked for, so a long-lived stream can check it again.
AUTHORIZED_SCOPE: web.RequestKey[Scope] = web.RequestKey("authorized_scope")


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if there is one."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def authorize(request: web.Request, store: TokenStore, scope: RouteScope) -> None:
    """401 without a known token, 403 when its scope does not cover the route's ``scope``."""
    needed: Scope | None
    if scope == BY_METHOD:
        needed = "read" if request.method in SAFE_METHODS else "write"
    else:
        needed = scope
    if needed is None:
        return
    if len(request.headers.getall("Authorization", ())) > 1:
        # A proxy in front may pass on, or check, the other one.
        raise AmbiguousRequest("the request has more than one Authorization header")
    token = bearer_token(request)
    if token is None:
        raise Unauthenticated("this request needs an Authorization: Bearer <token> header")
    try:
        scopes = store.scopes_of(token)
    except TokensFileError as e:
        raise Unavailable("the tokens file is unusable; ask the operator") from e
    if scopes is None:
        raise Unauthenticated("the bearer token is unknown or revoked", invalid=True)
    if needed not in scopes:
        raise Forbidden(needed)
    request[AUTHORIZED_SCOPE] = needed


def still_authorized(request: web.Request, store: TokenStore) -> tuple[int, str] | None:
    """Why the token an authorized request came with no longer covers it: a status and a
    detail, as its answer would be now; None while it still does (long-lived streams ask)."""
    needed = request.get(AUTHORIZED_SCOPE)
    token = bearer_token(request)
    if needed is None or token is None:
        return None
    try:
        scopes = store.scopes_of(token)
    except TokensFileError:
        return 503, "the tokens file is unusable; ask the operator"
    if scopes is None:
        return 401, "the bearer token is unknown or revoked"
    if needed not in scopes:
        return 403, f"this request needs a token with scope {needed!r}"
    return None


def setup_auth(app: web.Application, settings: Settings) -> TokenStore | None:
    """Require tokens when a tokens file is configured; it is read when the app starts."""
    if settings.tokens_file is None:
        return None
    store = TokenStore(settings.tokens_file, settings.tokens_check_interval)

    async def load_tokens(app: web.Application) -> AsyncIterator[None]:
        try:
            store.load()  # a missing or broken file stops the start: never fall back to open
        except TokensFileError as e:
            raise StartupError(
                f"{e}; write it with `lockstep token new`, readable by the service's user,"
                " or correct LOCKSTEP_TOKENS_FILE"
            ) from e
        logger.info("access control on: tokens from %s", settings.tokens_file)
        yield

    app.cleanup_ctx.append(load_tokens)
    return store


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # any other host name may resolve to a public address


def exposure_warning(addresses: Iterable[object], settings: Settings) -> str | None:
    """A warning when the API is open (no tokens file) on an address other machines can reach.

    ``addresses`` are gunicorn's parsed binds: ``(host, port)`` tuples, or paths for
    Unix sockets, which only local users reach.
    """
    if settings.tokens_file is not None:
        return None
    exposed = [
        f"{host}:{port}"
        for host, port in (a for a in addresses if isinstance(a, tuple))
        if not _is_loopback(str(host))
    ]
    if not exposed:
        return None
    return (
        f"!!! lockstep is OPEN on {', '.join(exposed)}: anyone who can reach it can change "
        "every counter and record. Set LOCKSTEP_TOKENS_FILE (see `lockstep token new`). !!!"
    )


# The tokens file in use; only while one is configured.
TOKENS = web.AppKey("tokens", TokenStore)
