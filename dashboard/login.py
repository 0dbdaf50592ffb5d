"""Logging in and out, and accepting an invitation. Those forms have no session yet, so their
CSRF token is a double-submit: a random cookie the form must repeat (a cross-site page can make
the browser send the cookie but cannot read it)."""

from __future__ import annotations

import math
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

from litestar import Controller, Request, get, post
from litestar.datastructures import Cookie
from litestar.response import Redirect, Template
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard import sessions
from dashboard.accounts import AccountError, accept, account, authenticate, pending_invite
from dashboard.models import User
from dashboard.sessions import COOKIE, Signer, Viewer
from dashboard.web import CSRF_FIELD, PREFIX, field, form, page, secure_cookies, see_other
from gateway.limiter import Limiter, Rate
from gateway.problems import Problem
from gateway.settings import Settings
from tenants.crypto import new_token, same, sha256_hex

_FORM_CSRF = "hookgate_form_csrf"
# Set at a successful login: this browser signed in to this account, with its current password,
# before (signed, not guessable; a password change or a new account with the address voids it).
_DEVICE = "hookgate_device"
_DEVICE_DAYS = 180


def _next(target: str) -> str:
    """Only a dashboard path: never an open redirect to another site."""
    return target if target.startswith(PREFIX) and not target.startswith("//") and "\\" not in target else PREFIX


def _form(request: Request[Any, Any, Any], settings: Settings, name: str, status_code: int = 200, **context: Any) -> Template:
    """A pre-session form page with a fresh double-submit token (cookie + hidden field)."""
    token = new_token(24)
    response = page(request, name, status_code=status_code, form_csrf=token, **context)
    response.cookies.append(Cookie(key=_FORM_CSRF, value=token, path=PREFIX, httponly=True, samesite="lax", secure=secure_cookies(settings)))
    return response


def _submitted_by_us(request: Request[Any, Any, Any], data: Any) -> bool:
    cookie = request.cookies.get(_FORM_CSRF, "")
    return bool(cookie) and same(str(data.get(CSRF_FIELD, "")), cookie)


async def _signed_in(db: AsyncSession, user: User, signer: Signer, settings: Settings, target: str) -> Redirect:
    """A new session for ``user``: its cookie set, the pre-session token dropped, off to ``target``."""
    cookie = await sessions.start(db, user, signer, settings.dashboard_session_hours)
    response = see_other(target)
    response.cookies.append(
        Cookie(
            key=COOKIE, value=cookie, path=PREFIX, httponly=True, samesite="lax", secure=secure_cookies(settings),
            max_age=int(settings.dashboard_session_hours * 3600),
        )
    )
    response.cookies.append(Cookie(key=_FORM_CSRF, value="", path=PREFIX, max_age=0))
    response.cookies.append(
        Cookie(key=_DEVICE, value=signer.sign(_device_mark(user)), path=PREFIX, httponly=True, samesite="lax",
               secure=secure_cookies(settings), max_age=_DEVICE_DAYS * 86_400)
    )
    return response


async def _known_device(request: Request[Any, Any, Any], db: AsyncSession, signer: Signer, email: str) -> str | None:
    """The device cookie, if this browser signed in to this email's account with its current
    password before (the account is looked up only when there is a cookie to check)."""
    cookie = request.cookies.get(_DEVICE)
    if cookie is None or (user := await account(db, email)) is None:
        return None
    return cookie if signer.unsign(cookie) == _device_mark(user) else None


def _device_mark(user: User) -> str:
    """What a device cookie signs: the account and its password's generation (the hash is salted
    afresh by every change), never mistaken for a session token."""
    return f"device-{user.id}-{sha256_hex(user.password_hash)}"


class LoginThrottle:
    """GCRA limits on login attempts per client address and per email (the app's limiter: shared
    through Redis in production, so every worker counts the same attempts). Behind a reverse proxy
    every connection comes from the proxy: its ``X-Forwarded-For`` names the client, if the proxy
    is trusted (``HOOKGATE_TRUSTED_PROXIES``), or one client would lock everyone out.

    The per-email limit bounds guessing spread over many addresses, so anyone who knows an email
    can exhaust it. A browser that signed in to that account before (its device cookie) is held to
    its address's limit and a budget of its own instead: the owner is not locked out by someone
    else's failures, and the cookie bounds guessing as the email key would (OWASP's device cookies)."""

    def __init__(self, limiter: Limiter, rate: Rate, proxies: tuple[IPv4Network | IPv6Network, ...] = ()) -> None:
        self.limiter = limiter
        self.rate = rate
        self.proxies = proxies  # a plain class: Litestar's signature model cannot convert a union of networks

    async def wait(self, request: Request[Any, Any, Any], email: str, *, device: str | None = None) -> int:
        """Seconds to wait when this address, or this email (this known device), tried too often, else 0."""
        peer = request.client.host if request.client else "unknown"
        client = client_address(peer, request.headers.getall("x-forwarded-for", []), self.proxies)
        account = f"login:device:{sha256_hex(device)}" if device is not None else f"login:email:{email}"
        for key in (f"login:ip:{client}", account):
            decision = await self.limiter.hit(key, self.rate)
            if not decision.allowed:
                return max(1, math.ceil(decision.retry_after))
        return 0


def client_address(peer: str, forwarded_for: list[str], proxies: tuple[IPv4Network | IPv6Network, ...]) -> str:
    """The client behind trusted proxies: walking ``X-Forwarded-For`` from the right (each proxy
    appends the address it saw), the first address that is not a trusted proxy. Entries to its left
    are whatever the client claimed; a peer that is not a trusted proxy is the client itself."""
    if not _trusted(peer, proxies):
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
    return next((hop for hop in reversed(hops) if not _trusted(hop, proxies)), peer)


def _trusted(address: str, proxies: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


class LoginController(Controller):
    path = "/login"

    @get(operation_id="dashboardLoginForm", include_in_schema=False)
    async def login_form(self, request: Request[Any, Any, Any], settings: Settings, next: str = PREFIX) -> Template:
        return _form(request, settings, "login.html", next=_next(next), email="")

    @post(operation_id="dashboardLogin", include_in_schema=False)
    async def login(
        self, request: Request[Any, Any, Any], db_session: AsyncSession, settings: Settings, signer: Signer, login_throttle: LoginThrottle
    ) -> Any:
        data = await form(request)
        email, target = field(data, "email").lower(), _next(field(data, "next"))
        if not _submitted_by_us(request, data):
            return _form(request, settings, "login.html", 403, next=target, email=email, error="The form expired. Please try again.")
        device = await _known_device(request, db_session, signer, email)
        wait = await login_throttle.wait(request, email, device=device)
        if wait:
            return _form(request, settings, "login.html", 429, next=target, email=email,
                         error=f"Too many attempts. Try again in {wait} seconds.")
        user = await authenticate(db_session, email, str(data.get("password", "")))
        if user is None:
            return _form(request, settings, "login.html", 400, next=target, email=email, error="Wrong email or password.")
        return await _signed_in(db_session, user, signer, settings, target)


class InvitationController(Controller):
    """The link a teammate was sent: choose a password, and be signed in."""

    path = "/invite/{token:str}"

    @get(operation_id="dashboardInvitation", include_in_schema=False)
    async def invitation(self, request: Request[Any, Any, Any], db_session: AsyncSession, settings: Settings, token: str) -> Any:
        pending = await pending_invite(db_session, token)
        if pending is None:
            raise Problem(404, "not-found", "invitation not found")
        return _form(request, settings, "invitation.html", email=pending.email, errors={})

    @post(operation_id="dashboardAcceptInvitation", include_in_schema=False)
    async def accept_invitation(
        self, request: Request[Any, Any, Any], db_session: AsyncSession, settings: Settings, signer: Signer, token: str
    ) -> Any:
        pending = await pending_invite(db_session, token)
        if pending is None:
            raise Problem(404, "not-found", "invitation not found")
        data, email = await form(request), pending.email
        password = str(data.get("password", ""))
        if not _submitted_by_us(request, data):
            return _form(request, settings, "invitation.html", 403, email=email, errors={"_": "The form expired. Please try again."})
        if password != str(data.get("confirm", "")):
            return _form(request, settings, "invitation.html", 400, email=email, errors={"confirm": "The two passwords differ."})
        try:
            user = await accept(db_session, pending, password)
        except AccountError as exc:
            return _form(request, settings, "invitation.html", 400, email=email, errors={exc.field: str(exc)})
        return await _signed_in(db_session, user, signer, settings, f"{PREFIX}/")


@post("/logout", operation_id="dashboardLogout", include_in_schema=False)
async def logout(viewer: Viewer, db_session: AsyncSession) -> Redirect:
    await sessions.end(db_session, viewer)
    response = see_other(f"{PREFIX}/login", "logged-out")
    response.cookies.append(Cookie(key=COOKIE, value="", path=PREFIX, max_age=0, httponly=True, samesite="lax"))
    return response
