"""One HTTP delivery attempt: no database, no framework, and no exception for network trouble.

The client is aiohttp's: under a 64-connection keep-alive load it spends ~0.2 ms of CPU per
request where httpx spent ~3 ms (its pool scans every connection per request), and the attempt
is the worker's hottest path (docs/PERFORMANCE.md).

The SSRF check is enforced where connections are opened: the connector resolves names through
`_VettedResolver`, which vets every address, and connects only to those, so a DNS answer cannot
change between check and connect (rebinding). IP literals never reach a resolver; `send` vets
them (``ssrf.check_url``) first. The URL keeps its hostname, so the Host header, TLS SNI and
certificate verification, and connection reuse are all per hostname.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from delivery import ssrf
from delivery.signing import USER_AGENT

EXCERPT_BYTES = 2048
_MAX_LOCATION = 256
_KEEPALIVE_SECONDS = 5.0

# The policy of the current `send`, read by the resolver when a connection is opened (same task context).
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


class _VettedResolver(AbstractResolver):
    """Resolves through ``ssrf.resolve``: only addresses that pass, in the order to try them."""

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        addresses = await ssrf.resolve(host, port, allow_private=_allow_private.get())
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=socket.IPPROTO_TCP,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        return None


class DeliveryClient:
    """One process's pooled client for `send`. The aiohttp session is opened on first use, because
    aiohttp binds it to the running loop and the embedded app builds its dispatcher before that.

    No DNS cache: a name is resolved, under the policy of the `send` opening the connection, each
    time a connection is opened; a pooled connection then serves later sends to the same host.
    ``accept-encoding: identity`` and no decompression: only an excerpt is kept, so decompressing
    is wasted work and a decompression-bomb risk. No proxies from the environment, no cookies.
    A pooled connection was vetted under the policy of the send that opened it, so use one client
    per ``allow_private`` policy.
    """

    def __init__(self, *, connect_timeout: float, max_connections: int = 256) -> None:
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                use_dns_cache=False,
                resolver=_VettedResolver(),
                keepalive_timeout=_KEEPALIVE_SECONDS,
                happy_eyeballs_delay=None,  # addresses in ssrf.resolve's order, one after another
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
                headers={"user-agent": USER_AGENT, "accept-encoding": "identity"},
                auto_decompress=False,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def send(
    client: DeliveryClient,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    allow_private: bool,
    timeout: float,
) -> SendResult:
    """POST ``body`` once through ``client`` (its resolver does the send-time SSRF check).

    ``timeout`` bounds the whole attempt, DNS and connecting included.
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
            async with client.session().post(url, data=body, headers=headers, allow_redirects=False) as response:
                excerpt = await _read_excerpt(response)
        status_code = response.status
        error = _status_error(response)
        if status_code in (429, 503):
            retry_after = _retry_after(response.headers.get("retry-after"))
    except (ValueError, aiohttp.ClientError, OSError) as exc:  # ValueError: UnsafeURL, a URL yarl refuses; OSError: timeouts, DNS
        error = _error(exc, url=url, timeout=timeout)
    finally:
        _allow_private.reset(token)
    return SendResult(
        status_code=status_code,
        error=None if error is None else _storable(error),
        response_excerpt=excerpt,
        duration_ms=round((time.monotonic() - started) * 1000),
        retry_after=retry_after,
    )


async def _read_excerpt(response: aiohttp.ClientResponse) -> str:
    """Reads at most EXCERPT_BYTES; a body left unread makes aiohttp close the connection, not pool it.

    A NUL shows as U+FFFD, like undecodable bytes: Postgres text cannot hold it, and one binary
    reply must not make the attempt unrecordable.
    """
    buffer = bytearray()
    while len(buffer) < EXCERPT_BYTES and (chunk := await response.content.read(EXCERPT_BYTES - len(buffer))):
        buffer += chunk
    return bytes(buffer).decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def _storable(text: str) -> str:
    """The receiver's own bytes in an error (a ``Location`` header, an exception's message) as text
    a database takes: aiohttp keeps undecodable header bytes as lone surrogates, which neither
    asyncpg nor sqlite3 will encode, and then the attempt could never be recorded (the delivery
    was sent again and again, and never went dead)."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


def _status_error(response: aiohttp.ClientResponse) -> str | None:
    if 200 <= response.status < 300:
        return None
    location = response.headers.get("location") if 300 <= response.status < 400 else None
    if location:
        return f"redirect to {location[:_MAX_LOCATION]} not followed"
    return f"HTTP {response.status}"


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
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect timeout"
    if isinstance(exc, TimeoutError):  # aiohttp's own timeouts are TimeoutErrors too
        return f"timeout after {float(timeout)}s"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        exc = exc.certificate_error  # aiohttp's wrapper is an SSLCertVerificationError too, without the message
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror):
            return f"DNS lookup failed for {urlsplit(url).hostname}"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {cause.verify_message}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed: {exc}"
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError)):
        return f"protocol error: {exc}"
    return str(exc) or type(exc).__name__


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
