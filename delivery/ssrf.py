"""Outbound URL guard: tenants' endpoints must not reach the gateway's own network.

Checked twice: on registration (syntax and IP literals, no DNS) and at send time against every
address the host resolves to, so a name that later re-points to 10.0.0.5 is still refused.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from urllib.parse import urlsplit

from yarl import URL

MAX_URL_LENGTH = 2048

# Not global yet not flagged by every Python's ipaddress tables.
_ALSO_FORBIDDEN = (IPv4Network("100.64.0.0/10"), IPv6Network("64:ff9b:1::/48"))
_NAT64 = IPv6Network("64:ff9b::/96")
_HOSTNAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_RADIX = {16: frozenset("0123456789abcdef"), 8: frozenset("01234567"), 10: frozenset("0123456789")}


class UnsafeURL(ValueError):
    """A URL the gateway will not deliver to; the message is meant for the tenant."""


@functools.lru_cache(maxsize=4096)
def check_url(url: str, *, allow_private: bool) -> None:
    """Registration-time check: syntax, and IP literals in any spelling a resolver would accept.

    Pure (no DNS), and run again before every attempt: the answers for URLs that pass are cached
    (a refusal raises, which is never cached). It was ~4 % of a busy worker's CPU."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"URL is longer than {MAX_URL_LENGTH} characters")
    if not url.isprintable() or " " in url:
        raise UnsafeURL("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeURL("URL is malformed") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("URL scheme must be http or https")
    if "@" in parts.netloc:
        raise UnsafeURL("URL must not contain credentials (user:password@)")
    host = parts.hostname
    if not host:
        raise UnsafeURL("URL has no host")
    if port == 0:
        raise UnsafeURL("URL port must be between 1 and 65535")
    ip = _ip_literal(_as_sent(url, host))
    if "[" in parts.netloc and not isinstance(ip, IPv6Address):
        raise UnsafeURL("URL is malformed")
    if ip is None:
        _check_hostname(host, allow_private=allow_private)
    elif not allow_private and is_forbidden(ip):
        raise _refusal(host, ip, resolved=False)


def _as_sent(url: str, host: str) -> str:
    """The host as the sender's URL parser (yarl) spells it: ``１２７.０.０.１`` and ``127。0。0。1`` become
    ``127.0.0.1``, which aiohttp then connects to as a literal, past the guarded resolver."""
    if host.isascii():
        return host
    try:
        return URL(url).raw_host or ""
    except ValueError:  # yarl refuses what IDNA cannot encode; the domain-name check says so
        return host


def is_forbidden(ip: IPv4Address | IPv6Address) -> bool:
    """True for anything but a public unicast address; IPv6 forms embedding IPv4 judged by that IPv4."""
    ip = _effective(ip)
    return (
        not ip.is_global
        or ip.is_multicast
        or ip.is_reserved
        or (isinstance(ip, IPv6Address) and ip.is_site_local)
        or any(ip in network for network in _ALSO_FORBIDDEN)
    )


async def resolve(host: str, port: int, *, allow_private: bool) -> list[str]:
    """Send-time check: every address of ``host`` must pass, since the connection may use any of them.

    Returns the vetted addresses to connect to. Raises ``UnsafeURL``, or ``OSError``
    (``socket.gaierror``) when the name does not resolve.
    """
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        if not allow_private and is_forbidden(literal):
            raise _refusal(host, literal, resolved=False)
        return [str(literal)]
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for address in addresses:
            if is_forbidden(ip := ipaddress.ip_address(address)):
                raise _refusal(host, ip, resolved=True)
    return addresses


def _refusal(host: str, ip: IPv4Address | IPv6Address, *, resolved: bool) -> UnsafeURL:
    reached = _effective(ip)
    shown = "" if str(reached) == host else f" {reached}"
    return UnsafeURL(f"{host} {'resolves to' if resolved else 'is'} {_kind(reached)}{shown}")


def _effective(ip: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    """The IPv4 address an IPv4-mapped, 6to4 or NAT64 address actually reaches, else ``ip`` itself."""
    if isinstance(ip, IPv4Address):
        return ip
    if ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.ipv4_mapped or ip.sixtofour or ip


def _kind(ip: IPv4Address | IPv6Address) -> str:
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    return "a non-public address"


def _ip_literal(host: str) -> IPv4Address | IPv6Address | None:
    """The address ``host`` denotes, parsed like WHATWG URL/inet_aton do; None for a domain name."""
    if ":" in host:
        try:
            return IPv6Address(host)
        except ValueError:
            raise UnsafeURL(f"{host} is not a valid IPv6 address") from None
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    if not (labels[-1].isascii() and labels[-1].isdigit()) and _number(labels[-1]) is None:
        return None
    numbers = [n for n in map(_number, labels) if n is not None]
    if len(numbers) != len(labels) or len(numbers) > 4:
        raise UnsafeURL(f"{host} is not a valid IPv4 address")
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise UnsafeURL(f"{host} is not a valid IPv4 address")
    return IPv4Address(last + sum(n << (8 * (3 - i)) for i, n in enumerate(head)))


def _number(label: str) -> int | None:
    """One IPv4 part: ``0x`` hex, leading-zero octal or decimal; None when it is not a number."""
    label = label.lower()
    if label.startswith("0x"):
        radix, digits = 16, label[2:]
    elif len(label) > 1 and label.startswith("0"):
        radix, digits = 8, label[1:]
    else:
        radix, digits = 10, label
    if not label or not set(digits) <= _RADIX[radix]:
        return None
    return int(digits or "0", radix)


def _check_hostname(host: str, *, allow_private: bool) -> None:
    try:
        ascii_host = host.encode("idna").decode("ascii")
        ascii_host.encode("ascii").decode("idna")  # and back: an "xn--" label that is not punycode is no name
    except UnicodeError:  # empty or over-long labels, unencodable names
        ascii_host = ""
    if not _HOSTNAME.fullmatch(ascii_host):
        raise UnsafeURL(f"{host} is not a valid domain name")
    name = ascii_host.rstrip(".")
    if not allow_private and (name == "localhost" or name.endswith(".localhost")):
        raise UnsafeURL(f"{host} is a loopback name")
