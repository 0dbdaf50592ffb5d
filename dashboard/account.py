"""The signed-in user's own account: changing the password ends the user's other sessions (a
password someone else learned stops working everywhere they used it)."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard.accounts import set_password
from dashboard.login import LoginThrottle
from dashboard.models import User
from dashboard.passwords import password_problem, verify
from dashboard.sessions import Viewer
from dashboard.web import PREFIX, field, form, page, see_other


@get("/account", operation_id="dashboardAccount", include_in_schema=False)
async def account(request: Request[Any, Any, Any]) -> Any:
    return page(request, "account.html", errors={})


@post("/account/password", operation_id="dashboardChangePassword", include_in_schema=False)
async def change_password(
    request: Request[Any, Any, Any], viewer: Viewer, db_session: AsyncSession, login_throttle: LoginThrottle
) -> Any:
    """The new password is checked first, so a guess at the current one learns nothing else; the
    guesses count against the login limits (a stolen session must not try passwords freely)."""
    data = await form(request)
    new = field(data, "password")
    if problem := password_problem(new):
        return page(request, "account.html", 400, errors={"password": problem})
    if new != field(data, "confirm"):
        return page(request, "account.html", 400, errors={"confirm": "The two passwords differ."})
    if wait := await login_throttle.wait(request, viewer.user.email):
        return page(request, "account.html", 429, errors={"current": f"Too many attempts. Try again in {wait} seconds."})
    user = await db_session.get(User, viewer.user.id)
    if user is None or not verify(user.password_hash, field(data, "current")):
        return page(request, "account.html", 400, errors={"current": "That is not your current password."})
    await set_password(db_session, user, new, keep=viewer.session.id)
    return see_other(f"{PREFIX}/account", "password-changed")
