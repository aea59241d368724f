"""The access log: one line per answered request, buffered and written in few system calls.

A line is built straight from the request (no ``logging.LogRecord``, no formatter, no
handler lock) and appended to the worker's buffer. The buffer goes out in one ``write``
once it holds ``FLUSH_BYTES``, and otherwise at most ``flush_interval`` seconds (1 by
default) after its first line; graceful shutdown and the worker's exit write whatever is
left. So a crash (SIGKILL, an OOM kill, power loss) loses at most the last interval's
lines, and never a write: a request's data is committed before its answer, and its line
is made after.

On a regular file each ``write`` lands whole, so the workers' lines never interleave. On a
pipe or a socket (``docker logs``, journald) the kernel keeps only writes of up to
``PIPE_BUF`` bytes whole, so there the buffer leaves in pieces of at most that size, each
ending at the end of a line.

The client address is the connection's peer, or, when that peer is one of the configured
trusted proxies, the nearest address in ``X-Forwarded-For`` that is not one of them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import select
import stat
import time
import weakref
from collections.abc import Sequence

import msgspec
from aiohttp import web

from app.logs import ACCESS_LOGGER

logger = logging.getLogger(__name__)

FLUSH_BYTES = 64 * 1024
PATH_MAX = 256
USER_AGENT_MAX = 256
STDOUT = "-"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class _JsonLine(msgspec.Struct):
    """One JSON access line; the first six fields are those of every other log line."""

    time: str
    level: str
    logger: str
    pid: int
    request_id: str
    message: str
    client: str
    method: str
    route: str
    path: str
    status: int
    latency_ms: float
    lock_wait_ms: float
    user_agent: str | None


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(request: web.BaseRequest, trusted: Sequence[IPNetwork]) -> str:
    """The request's client: its peer, or what a trusted proxy says in X-Forwarded-For.

    The header is read right to left, the way the proxies appended to it: every hop that is
    a trusted proxy passes the question on to the address before it, and the first one that
    is not a trusted proxy is the client. A malformed hop ends the walk at the last trusted
    one, so a client can never choose the address logged for it.
    """
    peer = request.remote or "-"
    if not trusted:
        return peer
    forwarded = request.headers.getall("X-Forwarded-For", ())
    if not forwarded:
        return peer
    last = _address(peer)
    if last is None or not any(last in net for net in trusted):
        return peer
    for hop in reversed(",".join(forwarded).split(",")):
        address = _address(hop)
        if address is None:
            break
        last = address
        if not any(address in net for net in trusted):
            break
    return str(last)


class _Sink:
    """The buffer and the file descriptor it drains to; what a worker's exit still flushes."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.fd = -1
        self.owned = False
        # None: one write takes any size (a regular file); else the largest whole write.
        self.piece: int | None = None
        self.failing = False

    def open(self, destination: str) -> None:
        if destination == STDOUT:
            self.fd, self.owned = 1, False
        else:
            self.fd = os.open(destination, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self.owned = True
        mode = os.fstat(self.fd).st_mode
        self.piece = None if stat.S_ISREG(mode) else select.PIPE_BUF

    def flush(self) -> None:
        if not self.buffer or self.fd < 0:
            return
        data, self.buffer = memoryview(self.buffer), bytearray()
        try:
            while data:
                end = len(data)
                if self.piece is not None and end > self.piece:
                    # The last line end within a piece (lines are far shorter than PIPE_BUF).
                    end = bytes(data[: self.piece]).rfind(b"\n") + 1 or self.piece
                data = data[os.write(self.fd, data[:end]) :]
        except OSError as e:
            if not self.failing:
                self.failing = True
                logger.warning("access log lines dropped: cannot write them (%s)", e)
            return
        self.failing = False

    def close(self) -> None:
        self.flush()
        if self.owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


class AccessLog:
    """A worker's access log: ``open`` on the event loop, ``line`` per request, ``close``."""

    def __init__(
        self,
        destination: str,
        format: str = "text",
        trusted_proxies: Sequence[IPNetwork] = (),
        flush_interval: float = 1.0,
    ) -> None:
        if format not in ("text", "json"):
            raise ValueError(f"log format must be text or json, not {format!r}")
        self.destination = destination
        self.flush_interval = flush_interval
        self._json = format == "json"
        self._trusted = tuple(trusted_proxies)
        self._sink = _Sink()
        # A worker that exits without a graceful shutdown still writes what it buffered.
        self._at_exit = weakref.finalize(self, self._sink.close)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._encode_into = msgspec.json.Encoder().encode_into
        self._quote = msgspec.json.Encoder().encode
        self._pid = os.getpid()
        self._millis = self._second = -1
        self._date = self._stamp = ""

    def open(self) -> None:
        """Open the destination (stdout, or a file appended to) on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._pid = os.getpid()  # the worker's, also when the app was made before a fork
        self._sink.open(self.destination)

    def close(self) -> None:
        """Write every buffered line and close the file."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._sink.close()

    def flush(self) -> None:
        """Write every buffered line now."""
        self._sink.flush()

    def _time(self) -> str:
        """Now, to the millisecond; a busy worker answers many requests within one."""
        millis = int(time.time() * 1000)
        if millis != self._millis:
            self._millis = millis
            second = millis // 1000
            if second != self._second:
                self._second = second
                self._date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._stamp = f"{self._date}.{millis % 1000:03d}Z"
        return self._stamp

    def line(
        self,
        request: web.BaseRequest,
        route: str,
        status: int,
        elapsed: float,
        lock_wait: float,
        request_id: str,
    ) -> None:
        """Buffer one request's line; write the buffer if it is full."""
        buffer = self._sink.buffer
        if not buffer and self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(self.flush_interval, self._timed_flush)
        agent = request.headers.get("User-Agent")
        if agent is not None:
            agent = agent[:USER_AGENT_MAX]
        client = client_address(request, self._trusted)
        # Without the query string, which may carry secrets.
        path = request.rel_url.raw_path[:PATH_MAX]
        if self._json:
            line = _JsonLine(
                self._time(),
                "info",
                ACCESS_LOGGER,
                self._pid,
                request_id,
                "request",
                client,
                request.method,
                route,
                path,
                status,
                round(elapsed * 1000, 3),
                round(lock_wait * 1000, 3),
                agent,
            )
            self._encode_into(line, buffer, -1)
            buffer += b"\n"
        else:
            quoted = "-" if agent is None else self._quote(agent).decode()
            buffer += (
                f"{self._time()} INFO [{self._pid}] {ACCESS_LOGGER} request_id={request_id}"
                f" request client={client} method={request.method} route={route} path={path}"
                f" status={status} latency_ms={elapsed * 1000:.3f}"
                f" lock_wait_ms={lock_wait * 1000:.3f} user_agent={quoted}\n"
            ).encode("utf-8", "backslashreplace")
        if len(buffer) >= FLUSH_BYTES:
            self._sink.flush()

    def _timed_flush(self) -> None:
        self._timer = None
        self._sink.flush()


# None while the access log is off (LOCKSTEP_LOG_LEVEL above info).
ACCESS_LOG: web.AppKey[AccessLog | None] = web.AppKey("access_log")
