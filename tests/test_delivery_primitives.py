"""Signing, the SSRF guard and one HTTP attempt, against the real thing.

Signatures are checked by the official Standard Webhooks library; the sender talks to real HTTP
servers on 127.0.0.1 (raw asyncio). Made-up names are answered through the event loop's
resolver, the seam `ssrf.resolve` uses, so DNS-rebinding cases need no network.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import gzip
import ipaddress
import json
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from delivery import ssrf
from delivery.schedule import JITTER, next_delay
from delivery.sender import EXCERPT_BYTES, DeliveryClient, send
from delivery.signing import USER_AGENT, new_endpoint_secret, sign, webhook_headers
from tests.support.receiver import Received, Server, head, reply

BODY = b'{"type":"invoice.paid","data":{"id":"in_1","amount":4200}}'


def _bounded(seconds: float = 10.0) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
    """No test may hang: the whole test body runs under a deadline."""

    def decorate(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(test)
        async def bounded(*args: Any, **kwargs: Any) -> None:
            async with asyncio.timeout(seconds):
                await test(*args, **kwargs)

        return bounded

    return decorate


# --- signing ---------------------------------------------------------------------------------


def test_signature_verifies_under_each_secret_with_official_library() -> None:
    old, new = new_endpoint_secret(), new_endpoint_secret()
    headers = webhook_headers([old, new], "msg_2Lk", int(time.time()), BODY)

    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_endpoint_secret()).verify(BODY, headers)


def test_tampered_body_or_id_fails_verification() -> None:
    old, new = new_endpoint_secret(), new_endpoint_secret()
    headers = webhook_headers([old, new], "msg_2Lk", int(time.time()), BODY)

    for secret in (old, new):
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(BODY.replace(b"4200", b"4201"), headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(BODY, {**headers, "webhook-id": "msg_other"})


def test_sign_matches_the_specification_test_vector() -> None:
    # The example of the Standard Webhooks specification (and of the official library's own sign()).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signature = sign([secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')

    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    reference = Webhook(secret).sign(
        "msg_p5jXN8AQM9LWM0D4loKWxJek", dt.datetime.fromtimestamp(1614265330, dt.timezone.utc), '{"test": 2432232314}'
    )
    assert signature == reference


def test_headers_and_secret_format() -> None:
    secret = new_endpoint_secret()
    headers = webhook_headers([secret], "msg_1", 1700000000, BODY)

    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) == 24
    assert new_endpoint_secret() != secret
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == USER_AGENT == "Hookgate-Webhooks/1.0 (+https://hookgate.dev)"


def test_bad_secrets_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError):
        sign([], "msg_1", 1, BODY)
    bad = "whsec_not*base64!"
    with pytest.raises(ValueError) as caught:
        sign([bad], "msg_1", 1, BODY)
    assert "not*base64" not in str(caught.value)


# --- schedule ----------------------------------------------------------------------------------

DELAYS = (0.0, 5.0, 300.0)


def test_the_schedule_waits_each_delay_within_its_jitter_then_ends() -> None:
    rng = random.Random(3)
    for made in (1, 2):
        waits = [next_delay(made, DELAYS, rng=rng) for _ in range(200)]
        assert all(DELAYS[made] * (1 - JITTER) <= w <= DELAYS[made] * (1 + JITTER) for w in waits)  # type: ignore[operator]
    assert next_delay(3, DELAYS) is None  # the schedule is spent: dead


@pytest.mark.parametrize(("retry_after", "low", "high"), [(0.0, 240, 360), (-5.0, 240, 360), (1000.0, 1000, 1000), (99999.0, 3600, 3600)])
def test_retry_after_lengthens_the_wait_up_to_its_bound_and_never_shortens_it(retry_after: float, low: float, high: float) -> None:
    """``Retry-After: 0`` (or a date just past) once replaced the wait: every attempt went in seconds."""
    wait = next_delay(2, DELAYS, retry_after=retry_after, max_retry_after=3600)
    assert wait is not None and low <= wait <= high
    assert next_delay(3, DELAYS, retry_after=retry_after) is None


# --- ssrf --------------------------------------------------------------------------------------

REFUSED = [
    ("http://127.0.0.1/hook", "127.0.0.1 is a loopback address"),
    ("http://2130706433/", "2130706433 is a loopback address 127.0.0.1"),
    ("http://0x7f000001/", "0x7f000001 is a loopback address 127.0.0.1"),
    ("http://0177.0.0.1/", "0177.0.0.1 is a loopback address 127.0.0.1"),
    ("http://0x7f.0.0.1/", "0x7f.0.0.1 is a loopback address 127.0.0.1"),
    ("http://127.1/", "127.1 is a loopback address 127.0.0.1"),
    ("http://127.0.0.1./", "127.0.0.1. is a loopback address 127.0.0.1"),
    # Full-width digits and ideographic dots: the sender's URL parser turns them into an IP literal.
    ("http://１２７.０.０.１:8000/", "１２７.０.０.１ is a loopback address 127.0.0.1"),
    ("http://127。0。0。1/", "127。0。0。1 is a loopback address 127.0.0.1"),
    ("http://169.254.169.２５４/latest/meta-data/", "169.254.169.２５４ is a link-local address 169.254.169.254"),
    ("http://[::1]:8080/", "::1 is a loopback address"),
    ("http://[fc00::1]/", "fc00::1 is a private address"),
    ("http://[fd12:3456::1]/", "fd12:3456::1 is a private address"),
    ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1 is a loopback address 127.0.0.1"),
    ("http://[::ffff:a00:5]/", "::ffff:a00:5 is a private address 10.0.0.5"),
    ("http://[fe80::1%25eth0]/", "fe80::1%25eth0 is a link-local address"),
    ("http://10.0.0.5/", "10.0.0.5 is a private address"),
    ("https://172.16.3.4:8443/", "172.16.3.4 is a private address"),
    ("http://192.168.1.1/", "192.168.1.1 is a private address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
    ("http://0.0.0.0/", "0.0.0.0 is an unspecified address"),
    ("http://0/", "0 is an unspecified address 0.0.0.0"),
    ("http://[::]/", ":: is an unspecified address"),
    ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
    ("http://[ff02::1]/", "ff02::1 is a multicast address"),
    ("http://240.0.0.1/", "240.0.0.1 is a reserved address"),
    ("http://100.64.0.1/", "100.64.0.1 is a non-public address"),
    ("http://[64:ff9b::a00:5]/", "64:ff9b::a00:5 is a private address 10.0.0.5"),
    ("http://localhost:8000/", "localhost is a loopback name"),
    ("http://api.localhost/", "api.localhost is a loopback name"),
    ("ftp://example.com/hook", "URL scheme must be http or https"),
    ("file:///etc/passwd", "URL scheme must be http or https"),
    ("https://user:secret@example.com/", "URL must not contain credentials (user:password@)"),
    ("http://example.com\\@10.0.0.5/", "URL must not contain credentials (user:password@)"),
    ("http:///hook", "URL has no host"),
    ("http://example.com:0/", "URL port must be between 1 and 65535"),
    ("http://example.com:99999/", "URL is malformed"),
    ("http://[1.2.3.4]/", "URL is malformed"),
    ("http://exa mple.com/", "URL contains whitespace or control characters"),
    ("http://example.com/\nX-Injected: 1", "URL contains whitespace or control characters"),
    ("http://1.2.3.4.5/", "1.2.3.4.5 is not a valid IPv4 address"),
    ("http://256.0.0.1/", "256.0.0.1 is not a valid IPv4 address"),
    ("http://127.0.0.1\\evil.com/", "127.0.0.1\\evil.com is not a valid domain name"),
    ("http://xn--/", "xn-- is not a valid domain name"),
    ("http://xn--zz.example.com/", "xn--zz.example.com is not a valid domain name"),
    ("https://example.com/" + "a" * 2048, "URL is longer than 2048 characters"),
]


@pytest.mark.parametrize(("url", "message"), REFUSED)
def test_check_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ssrf.UnsafeURL) as caught:
        ssrf.check_url(url, allow_private=False)
    assert str(caught.value) == message
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/",
        "https://93.184.216.34:8443/hook?x=1",
        "http://1572395042/",  # 93.184.216.34 spelled as one number
        "http://[2606:2800:220:1:248:1893:25c8:1946]/",
        "http://[::ffff:93.184.216.34]/",
        "https://example.com/hook",
        "https://hooks.example.com./in",
        "https://a_b.example.com/",
        "https://bücher.example/hook",
        "http://９３.１８４.２１６.３４/",  # full-width, public
    ],
)
def test_check_url_allows_public_targets(url: str) -> None:
    ssrf.check_url(url, allow_private=False)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000/", "http://[::1]/", "http://0x7f000001/", "http://10.0.0.5/", "http://localhost/"]
)
def test_allow_private_lets_local_targets_through(url: str) -> None:
    ssrf.check_url(url, allow_private=True)


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("8.8.8.8", False),
        ("2001:4860:4860::8888", False),
        ("::ffff:8.8.8.8", False),
        ("127.0.0.1", True),
        ("169.254.169.254", True),
        ("100.127.255.255", True),
        ("192.0.2.1", True),
        ("255.255.255.255", True),
        ("::ffff:169.254.169.254", True),
        ("2002:a00:1::", True),  # 6to4 of 10.0.0.1
        ("fec0::1", True),
        ("2001:db8::1", True),
    ],
)
def test_is_forbidden(address: str, forbidden: bool) -> None:
    assert ssrf.is_forbidden(ipaddress.ip_address(address)) is forbidden


@_bounded()
async def test_resolve_refuses_names_of_local_addresses() -> None:
    with pytest.raises(ssrf.UnsafeURL) as caught:
        await ssrf.resolve("localhost", 443, allow_private=False)
    assert str(caught.value).startswith("localhost resolves to a loopback address ")

    addresses = await ssrf.resolve("localhost", 443, allow_private=True)
    assert set(addresses) & {"127.0.0.1", "::1"}
    assert await ssrf.resolve("93.184.216.34", 443, allow_private=False) == ["93.184.216.34"]


@_bounded()
async def test_resolve_requires_every_address_to_pass(fake_dns: dict[str, list[str]]) -> None:
    fake_dns["mixed.test"] = ["93.184.216.34", "10.0.0.5"]

    with pytest.raises(ssrf.UnsafeURL, match="^mixed.test resolves to a private address 10.0.0.5$"):
        await ssrf.resolve("mixed.test", 443, allow_private=False)
    assert await ssrf.resolve("mixed.test", 443, allow_private=True) == ["93.184.216.34", "10.0.0.5"]


# --- sender: real servers -------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[DeliveryClient]:
    delivery_client = DeliveryClient(connect_timeout=2.0)
    yield delivery_client
    await delivery_client.aclose()


@pytest.fixture
async def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names the test adds here resolve to the given addresses (an empty list: no such name)."""
    records: dict[str, list[str]] = {}
    loop = asyncio.get_running_loop()
    real_getaddrinfo = loop.getaddrinfo

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in records:
            return await real_getaddrinfo(host, port, *args, **kwargs)
        if not records[host]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, port))
            for a in records[host]
        ]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return records


@_bounded()
async def test_200_is_ok_and_the_receiver_verifies_the_signature(client: DeliveryClient) -> None:
    secret = new_endpoint_secret()
    headers = webhook_headers([secret], "msg_42", int(time.time()), BODY)
    async with Server(reply(200, b'{"received":true}')) as server:
        result = await send(client, f"{server.url}/hooks?t=1", BODY, headers, allow_private=True, timeout=5)

    assert result.ok and result.status_code == 200 and result.error is None
    assert result.response_excerpt == '{"received":true}'
    assert result.retry_after is None and 0 <= result.duration_ms < 5000
    [received] = server.requests
    assert (received.method, received.target, received.body) == ("POST", "/hooks?t=1", BODY)
    assert received.headers["host"] == f"127.0.0.1:{server.port}"
    assert received.headers["user-agent"] == USER_AGENT
    assert Webhook(secret).verify(received.body, received.headers) == json.loads(BODY)


@_bounded()
async def test_500_is_a_failure_with_the_body_excerpt(client: DeliveryClient) -> None:
    async with Server(reply(500, "boom \xff\x00".encode("latin-1"), {"retry-after": "7"})) as server:
        result = await send(client, server.url, BODY, {}, allow_private=True, timeout=5)

    assert not result.ok
    assert (result.status_code, result.error) == (500, "HTTP 500")
    assert result.response_excerpt == "boom \ufffd\ufffd"  # a NUL too: Postgres text cannot hold one
    assert result.retry_after is None  # only honoured on 429/503


@_bounded()
async def test_big_body_is_capped_without_reading_it_all(client: DeliveryClient) -> None:
    client_closed = asyncio.Event()

    async def respond(request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Announce 1 MiB, send 64 KiB, then hold the rest back until the client hangs up.
        writer.write(head(200, {"content-length": str(1024 * 1024)}) + b"x" * (64 * 1024))
        await writer.drain()
        await reader.read()
        client_closed.set()

    async with Server(respond) as server:
        result = await send(client, server.url, BODY, {}, allow_private=True, timeout=5)
        await asyncio.wait_for(client_closed.wait(), 2)

    assert result.ok
    assert result.response_excerpt == "x" * EXCERPT_BYTES
    assert result.duration_ms < 2000


@_bounded()
async def test_redirect_is_not_followed(client: DeliveryClient) -> None:
    async with Server(reply(200)) as target:
        location = f"{target.url}/elsewhere"
        async with Server(reply(302, b"moved", {"location": location})) as server:
            result = await send(client, server.url, BODY, {}, allow_private=True, timeout=5)

    assert not result.ok and result.status_code == 302
    assert result.error == f"redirect to {location} not followed"
    assert target.connections == 0


@_bounded()
async def test_a_redirect_to_bytes_that_are_not_utf8_is_an_error_a_database_can_store(client: DeliveryClient) -> None:
    """aiohttp keeps undecodable header bytes as lone surrogates; asyncpg and sqlite3 refuse to
    encode those, and the attempt could not be recorded (sent again forever, never dead)."""
    async with Server(reply(302, b"moved", {"location": "http://x/\xff\xfe\x01"})) as server:
        result = await send(client, server.url, BODY, {}, allow_private=True, timeout=5)
    assert result.status_code == 302 and result.error is not None
    assert result.error.encode("utf-8") == "redirect to http://x/\ufffd\ufffd\ufffd not followed".encode()


@_bounded()
async def test_429_retry_after_seconds(client: DeliveryClient) -> None:
    async with Server(reply(429, b"slow down", {"retry-after": "7"})) as server:
        result = await send(client, server.url, BODY, {}, allow_private=True, timeout=5)

    assert (result.status_code, result.error, result.retry_after) == (429, "HTTP 429", 7.0)


@_bounded()
async def test_503_retry_after_http_date(client: DeliveryClient) -> None:
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30)
    async with Server(reply(503, b"", {"retry-after": format_datetime(when, usegmt=True)})) as server:
        result = await send(client, server.url, BODY, {}, allow_private=True, timeout=5)

    assert result.status_code == 503 and result.retry_after is not None
    assert 27 <= result.retry_after <= 30


@_bounded()
async def test_slow_server_times_out_within_the_total_timeout(client: DeliveryClient) -> None:
    async def respond(request: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(head(200, {"content-length": "100"}) + b"partial")  # trickles, then stalls
        await writer.drain()
        await asyncio.sleep(30)

    async with Server(respond) as server:
        result = await send(client, server.url, BODY, {}, allow_private=True, timeout=0.5)

    assert (result.status_code, result.error) == (None, "timeout after 0.5s")
    assert not result.ok
    assert 400 <= result.duration_ms < 2000


@_bounded()
async def test_connection_refused(client: DeliveryClient) -> None:
    with socket.socket() as holder:  # bound but not listening: the port stays ours and refuses
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        result = await send(client, f"http://127.0.0.1:{port}/", BODY, {}, allow_private=True, timeout=5)

    assert (result.status_code, result.error, result.ok) == (None, "connection refused", False)


@_bounded()
@pytest.mark.parametrize(
    ("host", "error"),
    [
        ("127.0.0.1", "refused: 127.0.0.1 is a loopback address"),
        ("localhost", "refused: localhost is a loopback name"),
        ("[::ffff:127.0.0.1]", "refused: ::ffff:127.0.0.1 is a loopback address 127.0.0.1"),
        ("2130706433", "refused: 2130706433 is a loopback address 127.0.0.1"),
    ],
)
async def test_loopback_is_refused_before_any_connection(client: DeliveryClient, host: str, error: str) -> None:
    async with Server(reply(200)) as server:
        result = await send(client, f"http://{host}:{server.port}/", BODY, {}, allow_private=False, timeout=5)

    assert (result.status_code, result.error, result.ok) == (None, error, False)
    assert server.connections == 0


@_bounded()
async def test_dns_rebinding_is_checked_against_the_resolved_address(
    client: DeliveryClient, fake_dns: dict[str, list[str]]
) -> None:
    fake_dns["hooks.rebind.test"] = ["127.0.0.1"]
    async with Server(reply(204)) as server:
        url = f"http://hooks.rebind.test:{server.port}/in"
        ssrf.check_url(url, allow_private=False)  # a name: fine at registration
        refused = await send(client, url, BODY, {}, allow_private=False, timeout=5)
        assert server.connections == 0
        allowed = await send(client, url, BODY, {}, allow_private=True, timeout=5)

    assert refused.error == "refused: hooks.rebind.test resolves to a loopback address 127.0.0.1"
    assert refused.status_code is None
    assert allowed.ok and allowed.status_code == 204
    # Connected to the vetted IP, yet the receiver sees the hostname it was registered with.
    assert [r.headers["host"] for r in server.requests] == [f"hooks.rebind.test:{server.port}"]


@_bounded()
async def test_next_vetted_address_is_tried_when_one_refuses(
    client: DeliveryClient, fake_dns: dict[str, list[str]]
) -> None:
    fake_dns["multi.test"] = ["127.0.0.2", "127.0.0.1"]  # the server listens on 127.0.0.1 only
    async with Server(reply(200, b"ok")) as server:
        result = await send(client, f"http://multi.test:{server.port}/", BODY, {}, allow_private=True, timeout=5)

    assert result.ok and result.response_excerpt == "ok"


@_bounded()
async def test_unresolvable_and_invalid_urls_are_results_not_exceptions(
    client: DeliveryClient, fake_dns: dict[str, list[str]]
) -> None:
    fake_dns["nxdomain.test"] = []
    missing = await send(client, "https://nxdomain.test/hook", BODY, {}, allow_private=False, timeout=5)
    bad_scheme = await send(client, "gopher://example.com/", BODY, {}, allow_private=False, timeout=5)

    assert (missing.status_code, missing.error) == (None, "DNS lookup failed for nxdomain.test")
    assert (bad_scheme.status_code, bad_scheme.error) == (None, "refused: URL scheme must be http or https")


@pytest.fixture
def self_signed_tls(tmp_path: Path) -> tuple[ssl.SSLContext, list[str | None]]:
    """A TLS server context with a self-signed certificate for tls.test; records the SNI it was asked for."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tls.test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("tls.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server_names: list[str | None] = []
    context.sni_callback = lambda _socket, server_name, _context: server_names.append(server_name)
    return context, server_names


@_bounded()
async def test_tls_still_verifies_the_hostname_when_connecting_to_the_vetted_address(
    client: DeliveryClient,
    fake_dns: dict[str, list[str]],
    self_signed_tls: tuple[ssl.SSLContext, list[str | None]],
) -> None:
    context, server_names = self_signed_tls
    fake_dns["tls.test"] = ["127.0.0.1"]
    async with Server(reply(200), tls=context) as server:
        result = await send(client, f"https://tls.test:{server.port}/", BODY, {}, allow_private=True, timeout=5)

    assert result.status_code is None
    assert result.error is not None and result.error.startswith("TLS certificate verification failed")
    assert server_names == ["tls.test"]
    assert server.requests == []


@_bounded()
async def test_a_compressed_reply_is_kept_as_sent_and_its_cookie_is_not(
    client: DeliveryClient, fake_dns: dict[str, list[str]]
) -> None:
    """Only an excerpt is stored: decompressing would be wasted work and a decompression-bomb risk;
    and a receiver's cookie must not ride along on the next tenant's delivery."""
    fake_dns["cookies.test"] = ["127.0.0.1"]  # a name: cookie jars ignore cookies set by IP addresses
    compressed = gzip.compress(b"x" * 100_000)
    async with Server(reply(500, compressed, {"content-encoding": "gzip", "set-cookie": "session=abc; Path=/"})) as server:
        url = f"http://cookies.test:{server.port}/"
        first = await send(client, url, BODY, {}, allow_private=True, timeout=5)
        await send(client, url, BODY, {}, allow_private=True, timeout=5)

    assert first.response_excerpt == compressed[:EXCERPT_BYTES].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    assert [r.headers.get("accept-encoding") for r in server.requests] == ["identity", "identity"]
    assert "cookie" not in server.requests[1].headers
