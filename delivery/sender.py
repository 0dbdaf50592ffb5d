"""One HTTP delivery attempt: no database, no framework, and no exception for network trouble.

The SSRF check is enforced where connections are opened: the client's pool resolves the host,
vets every address and connects to a vetted one, so a DNS answer cannot change between check and
connect (rebinding). The URL keeps its hostname, so the Host header, TLS SNI and certificate
verification, and connection reuse are all per hostname.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import aclosing
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpcore
import httpx

from delivery import ssrf
from delivery.signing import USER_AGENT

EXCERPT_BYTES = 2048
_MAX_LOCATION = 256

# The policy of the current `send`, read by the pool when it opens a connection (same task).
_allow_private: ContextVar[bool] = ContextVar("hookgate_allow_private", default=False)


@dataclass(frozen=True, slots=True)
class SendResult:
    status_code: int | None  # None when there was no response (timeout, refused, DNS, SSRF)
    error: str | None  # short and readable by the tenant; None on 2xx
    response_excerpt: str  # at most EXCERPT_BYTES of the body, decoded leniently
    duration_ms: int
    retry_after: float | None  # seconds from Retry-After on 429/503

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class _VettedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses `ssrf.resolve` let through, trying them in order."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        *others, last = await ssrf.resolve(host, port, allow_private=_allow_private.get())
        for address in others:
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout):
                continue
        return await self._inner.connect_tcp(last, port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _VettedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a pool that connects through `_VettedBackend`.

    httpx takes no network backend, hence the pool swap. Requesting an IP URL with a Host header
    and ``sni_hostname`` instead would key pooled connections by IP, so a TLS connection verified
    for one hostname could carry requests for another name resolving to the same IP.
    """

    def __init__(self, *, limits: httpx.Limits) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=_VettedBackend(),
        )


def build_client(*, connect_timeout: float, timeout: float, max_connections: int = 256) -> httpx.AsyncClient:
    """The pooled client `send` expects; only its connections are SSRF-checked at send time.

    ``accept-encoding: identity``: only an excerpt is kept, so decompressing is wasted work and a
    decompression-bomb risk. A pooled connection is vetted when opened, under the policy of the
    `send` that opened it, so use one client per ``allow_private`` policy.
    """
    return httpx.AsyncClient(
        transport=_VettedTransport(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        ),
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": USER_AGENT, "accept-encoding": "identity"},
    )


async def send(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    allow_private: bool,
    timeout: float,
) -> SendResult:
    """POST ``body`` once, through a `build_client` client (its pool does the send-time SSRF check).

    ``timeout`` bounds the whole attempt, DNS included: httpx's own timeouts are per phase.
    """
    started = time.monotonic()
    status_code: int | None = None
    error: str | None = None
    excerpt = ""
    retry_after: float | None = None
    token = _allow_private.set(allow_private)
    try:
        ssrf.check_url(url, allow_private=allow_private)
        async with asyncio.timeout(timeout):
            async with client.stream("POST", url, content=body, headers=headers) as response:
                excerpt = await _read_excerpt(response)
        status_code = response.status_code
        error = _status_error(response)
        if status_code in (429, 503):
            retry_after = _retry_after(response.headers.get("retry-after"))
    except (ssrf.UnsafeURL, httpx.HTTPError, httpx.InvalidURL, OSError) as exc:  # OSError: TimeoutError, DNS
        error = _error(exc, url=url, timeout=timeout)
    finally:
        _allow_private.reset(token)
    return SendResult(
        status_code=status_code,
        error=error,
        response_excerpt=excerpt,
        duration_ms=round((time.monotonic() - started) * 1000),
        retry_after=retry_after,
    )


async def _read_excerpt(response: httpx.Response) -> str:
    """Reads at most EXCERPT_BYTES; leaving the rest unread makes httpx drop the connection.

    A NUL shows as U+FFFD, like undecodable bytes: Postgres text cannot hold it, and one binary
    reply must not make the attempt unrecordable.
    """
    buffer = bytearray()
    async with aclosing(response.aiter_raw()) as chunks:
        async for chunk in chunks:
            buffer += chunk
            if len(buffer) >= EXCERPT_BYTES:
                break
    return bytes(buffer[:EXCERPT_BYTES]).decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def _status_error(response: httpx.Response) -> str | None:
    if response.is_success:
        return None
    location = response.headers.get("location") if response.is_redirect else None
    if location:
        return f"redirect to {location[:_MAX_LOCATION]} not followed"
    return f"HTTP {response.status_code}"


def _retry_after(value: str | None) -> float | None:
    """Delta-seconds or an HTTP-date, as seconds from now; None when absent or unparseable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _error(exc: Exception, *, url: str, timeout: float) -> str:
    if isinstance(exc, ssrf.UnsafeURL):
        return f"refused: {exc}"
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return f"timeout after {float(timeout)}s"
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed for {urlsplit(url).hostname}"
    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {cause.verify_message}"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed: {exc}"
    if isinstance(exc, httpx.ProtocolError):
        return f"protocol error: {exc}"
    return str(exc) or type(exc).__name__


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
