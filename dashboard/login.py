"""Logging in and out. The login form has no session yet, so its CSRF token is a double-submit:
a random cookie the form must repeat (a cross-site page can send the cookie but cannot read it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, get, post
from litestar.datastructures import Cookie
from litestar.response import Redirect, Template
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard import sessions
from dashboard.accounts import authenticate
from dashboard.sessions import COOKIE, Signer, Viewer
from dashboard.web import CSRF_FIELD, PREFIX, field, form, page, see_other
from gateway.limiter import Limiter, Rate
from gateway.settings import Settings
from tenants.crypto import new_token, same

_LOGIN_CSRF = "hookgate_login_csrf"


def _next(target: str) -> str:
    """Only a dashboard path: never an open redirect to another site."""
    return target if target.startswith(PREFIX) and not target.startswith("//") and "\\" not in target else PREFIX


def _secure(settings: Settings) -> bool:
    return settings.public_url.startswith("https://")


def _form(request: Request[Any, Any, Any], settings: Settings, status_code: int = 200, **context: Any) -> Template:
    token = new_token(24)
    response = page(request, "login.html", status_code=status_code, login_csrf=token, **context)
    response.cookies.append(
        Cookie(key=_LOGIN_CSRF, value=token, path=f"{PREFIX}/login", httponly=True, samesite="lax", secure=_secure(settings))
    )
    return response


@dataclass(frozen=True)
class LoginThrottle:
    """GCRA limits on login attempts per client address and per email (the app's limiter: shared
    through Redis in production, so every worker counts the same attempts)."""

    limiter: Limiter
    rate: Rate

    async def wait(self, request: Request[Any, Any, Any], email: str) -> int:
        """Seconds to wait when this address or this email has tried too often, else 0."""
        client = request.client.host if request.client else "unknown"
        for key in (f"login:ip:{client}", f"login:email:{email}"):
            decision = await self.limiter.hit(key, self.rate)
            if not decision.allowed:
                return max(1, math.ceil(decision.retry_after))
        return 0


class LoginController(Controller):
    path = "/login"

    @get(operation_id="dashboardLoginForm", include_in_schema=False)
    async def login_form(self, request: Request[Any, Any, Any], settings: Settings, next: str = PREFIX) -> Template:
        return _form(request, settings, next=_next(next), email="")

    @post(operation_id="dashboardLogin", include_in_schema=False)
    async def login(
        self, request: Request[Any, Any, Any], db_session: AsyncSession, settings: Settings, signer: Signer, login_throttle: LoginThrottle
    ) -> Any:
        data = await form(request)
        email, target = field(data, "email").lower(), _next(field(data, "next"))
        if not same(str(data.get(CSRF_FIELD, "")), request.cookies.get(_LOGIN_CSRF, "")) or not request.cookies.get(_LOGIN_CSRF):
            return _form(request, settings, 403, next=target, email=email, error="The form expired. Please try again.")
        wait = await login_throttle.wait(request, email)
        if wait:
            return _form(request, settings, 429, next=target, email=email, error=f"Too many attempts. Try again in {wait} seconds.")
        user = await authenticate(db_session, email, str(data.get("password", "")))
        if user is None:
            return _form(request, settings, 400, next=target, email=email, error="Wrong email or password.")
        cookie = await sessions.start(db_session, user, signer, settings.dashboard_session_hours)
        response = see_other(target)
        response.cookies.append(
            Cookie(
                key=COOKIE, value=cookie, path=PREFIX, httponly=True, samesite="lax", secure=_secure(settings),
                max_age=int(settings.dashboard_session_hours * 3600),
            )
        )
        response.cookies.append(Cookie(key=_LOGIN_CSRF, value="", path=f"{PREFIX}/login", max_age=0))
        return response


@post("/logout", operation_id="dashboardLogout", include_in_schema=False)
async def logout(viewer: Viewer, db_session: AsyncSession) -> Redirect:
    await sessions.end(db_session, viewer)
    response = see_other(f"{PREFIX}/login", "logged-out")
    response.cookies.append(Cookie(key=COOKIE, value="", path=PREFIX, max_age=0, httponly=True, samesite="lax"))
    return response
