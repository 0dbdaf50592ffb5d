"""What every dashboard page shares: the login guard with its CSRF check, form reading, rendering
pages and errors, and redirects after a POST (so a reload never repeats an action), with what a
POST made to be shown once (a new secret, key or invitation link) carried to the page it leads to."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import msgspec
from litestar import MediaType, Request, Response
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie, FormMultiDict
from litestar.exceptions import HTTPException
from litestar.handlers import BaseRouteHandler
from litestar.response import Redirect, Template
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard.sessions import COOKIE, Signer, Viewer, resume
from gateway.problems import Problem, render_problem
from gateway.settings import Settings
from tenants.crypto import SecretBox, same

PREFIX = "/dashboard"
CSRF_FIELD = "csrf_token"
_SHOWN = "hookgate_shown"
_SHOWN_SECONDS = 300  # long enough to follow a redirect on a slow link; a secret left longer is revealed again, not replayed
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
# Pages hold one tenant's data and sometimes a secret: never cached, never framed, and only our
# own scripts, styles and form targets.
_HEADERS = {
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "referrer-policy": "same-origin",
}

# Messages a redirect may ask the next page to show (a key, never free text from the URL).
NOTICES = {
    "endpoint-saved": "Changes saved.",
    "endpoint-enabled": "Endpoint enabled: new events will be delivered to it.",
    "endpoint-disabled": "Endpoint disabled: events are no longer delivered to it, and its waiting deliveries become dead letters (redrive them once it is enabled again).",
    "endpoint-deleted": "Endpoint deleted. Its past deliveries stay in the event log.",
    "test-sent": "Test event sent. It shows up below within a few seconds.",
    "replayed": "Replay queued: a new delivery is on its way.",
    "replay-joined": "Its delivery was still waiting to be retried: it goes now, with the same webhook-id and a fresh schedule (no second copy).",
    "redrive-started": "Redrive started: the dead letters are being retried (progress below).",
    "purged": "Dead letters purged.",
    "acknowledged": "Anomaly acknowledged.",
    "revoked": "API key revoked: requests with it are refused from now on.",
    "logged-out": "You are logged out.",
    "teammate-removed": "Teammate removed: they are signed out and can no longer log in.",
    "invitation-withdrawn": "Invitation withdrawn: its link no longer works.",
    "password-changed": "Password changed. Your other sessions are signed out.",
    "source-created": "Source created.",
    "endpoint-created": "Endpoint created.",
    "source-rotated": "New secret added. The previous one keeps working through the grace period.",
    "source-rotated-now": "New secret added. The previous ones no longer verify.",
    "endpoint-rotated": "New signing secret. The previous one keeps signing through the grace period.",
    "endpoint-rotated-now": "New signing secret. The previous ones no longer sign.",
    "key-created": "API key created.",
    "invited": "Invitation created.",
    "replay-cancelled": "Replay job cancelled: its deliveries not yet tried are withdrawn (a redrive's go back to the dead letters).",
    "replay-finished": "That job had already finished: nothing to cancel.",
}


class LoginRequired(HTTPException):
    status_code = 401


def viewer_of(request: ASGIConnection[Any, Any, Any, Any]) -> Viewer:
    """The guard's Viewer for this request (a dependency of every signed-in page)."""
    return request.state["viewer"]  # type: ignore[no-any-return]


def login_guard(sessions: Callable[[], AsyncSession], signer: Signer) -> Callable[..., Any]:
    """A guard that admits only a live session, and on a POST only with the session's CSRF token."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
        async with sessions() as db:
            viewer = await resume(db, connection.cookies.get(COOKIE), signer)
        if viewer is None:
            raise LoginRequired()
        if connection.scope["method"] not in _SAFE:
            token = (await form(connection)).get(CSRF_FIELD, "")  # type: ignore[arg-type]
            if not same(str(token), viewer.csrf_token):
                raise Problem(403, "csrf", "This form expired or did not come from the dashboard. Go back, reload and try again.")
        connection.state["viewer"] = viewer

    return guard


async def form(request: Request[Any, Any, Any]) -> FormMultiDict:
    """The posted form (Litestar keeps it, so the guard and the handler read it once)."""
    return await request.form()


def field(data: FormMultiDict, name: str) -> str:
    value = data.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def grace_choice(data: FormMultiDict) -> int | None:
    """A rotate form's choice: 0 when the previous secrets must stop now (a leak), else None (the
    operator's grace period)."""
    return 0 if field(data, "expire_previous") else None


def optional_uuid(value: str) -> uuid.UUID | None:
    """A filter or form value that should be an id; blank or malformed means not given."""
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


def ids(data: FormMultiDict, name: str) -> list[uuid.UUID]:
    """Checked boxes' ids; anything that is not a UUID is ignored."""
    return [found for value in data.getall(name, []) if (found := optional_uuid(str(value))) is not None]


def page(request: Request[Any, Any, Any], name: str, status_code: int = 200, **context: Any) -> Template:
    """A page with what the layout needs; a list's ``next_cursor`` becomes an "Older" link that keeps the filters."""
    viewer: Viewer | None = request.state.get("viewer")
    notice = NOTICES.get(request.query_params.get("done", ""))
    if context.get("next_cursor"):
        query = {key: value for key, value in request.query_params.items() if key not in ("cursor", "done")}
        context["older"] = f"{request.url.path}?{urlencode({**query, 'cursor': context['next_cursor']})}"
    response = Template(
        template_name=name,
        context={"viewer": viewer, "csrf": viewer.csrf_token if viewer else "", "notice": notice, "path": request.url.path, **context},
        status_code=status_code,
        media_type=MediaType.HTML,
        headers=_HEADERS,
    )
    if request.state.get(_SHOWN):  # shown once, here (another tab's page must not take it on its way)
        response.cookies.append(Cookie(key=_SHOWN, value="", path=PREFIX, max_age=0))
    return response


def see_other(path: str, done: str | None = None, **query: str) -> Redirect:
    """303 after a POST, with an optional notice key for the next page (and its filters, ``query``)."""
    query = {**query, "done": done} if done else query
    return Redirect(path=f"{path}?{urlencode(query)}" if query else path, status_code=303)


def secure_cookies(settings: Settings) -> bool:
    return settings.public_url.startswith("https://")


def see_other_showing(request: Request[Any, Any, Any], box: SecretBox, path: str, done: str, **shown: Any) -> Redirect:
    """303 to ``path``, whose page shows ``shown`` once (``shown_once``). It travels encrypted in a
    short-lived cookie bound to the session and that page: never in a URL or history entry, never
    readable by a script, and a reload of the page neither repeats the POST nor shows it again."""
    sealed = box.encrypt(msgspec.json.encode({"session": str(viewer_of(request).session.id), "path": path, "shown": shown}).decode())
    response = see_other(path, done)
    response.cookies.append(Cookie(key=_SHOWN, value=sealed.decode(), path=PREFIX, max_age=_SHOWN_SECONDS, httponly=True,
                                   samesite="strict", secure=secure_cookies(request.app.state["settings"])))
    return response


def shown_once(request: Request[Any, Any, Any], box: SecretBox) -> dict[str, Any]:
    """What the POST before this page made to show here (``see_other_showing``); {} when nothing,
    or it is stale, another session's or another page's. ``page`` then drops the cookie: only the
    page it was for takes it (another tab's refresh in between must not); unclaimed, it expires."""
    sealed = request.cookies.get(_SHOWN)
    try:
        carried = msgspec.json.decode(box.decrypt(sealed.encode(), ttl=_SHOWN_SECONDS)) if sealed else {}
    except (ValueError, msgspec.DecodeError):
        return {}
    if carried.get("session") != str(viewer_of(request).session.id) or carried.get("path") != request.url.path:
        return {}
    request.state[_SHOWN] = True
    return carried["shown"]  # type: ignore[no-any-return]


def field_errors(exc: msgspec.ValidationError | Problem, fields: dict[str, str], plain: dict[str, str] | None = None) -> dict[str, str]:
    """An error from a schema or a service, put next to the form field it is about.

    ``fields`` maps a schema path (``$.url``) or a problem kind (``unsafe-url``) to a field name;
    what matches nothing goes at the top of the form (``_``). ``plain`` rewords a field's schema
    errors for people (the schema's own words are for API clients)."""
    if isinstance(exc, Problem):
        key, text = exc.kind, str(exc.detail)
    else:
        text, _, path = str(exc).partition(" - at `")
        key = path.rstrip("`")
    name = fields.get(key, "_")
    # A service names the API field it is about ("event_types: …"): next to that field, it need not.
    text = (plain or {}).get(name, text) if not isinstance(exc, Problem) else text.removeprefix(f"{name}: ")
    return {name: text[:1].upper() + text[1:]}


def _error_page(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Errors as pages: no session → the login page; 404 the same for missing and another tenant's."""
    if isinstance(exc, LoginRequired):
        query = request.url.query
        back = (f"{request.url.path}?{query}" if query else request.url.path) if request.method == "GET" else PREFIX  # filters kept
        return Redirect(path=f"{PREFIX}/login?next={quote(back)}", status_code=303)
    status = exc.status_code
    detail = exc.detail if status < 500 else "Something went wrong on our side. Try again in a moment."
    if status == 404:
        detail = "There is nothing here. It may have been deleted, or the link is wrong."
    return page(request, "error.html", status_code=status, status=status, detail=detail)


def _unexpected_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Anything else a page raised, logged and classified as the API does (503 while storage is
    unavailable, 500 otherwise), shown as a page with the dashboard's headers, not as JSON."""
    status, problem, _headers = render_problem(exc, request.url.path, None)
    return _error_page(request, HTTPException(status_code=status, detail=problem["detail"]))


def with_dashboard_pages(api: Callable[[Request[Any, Any, Any], Exception], Response[Any]]) -> dict[type[Exception], Any]:
    """The app's own handlers, for what no route's handlers took: an unknown URL or a wrong method
    under the dashboard is one of its pages (a person is looking), anywhere else ``api``'s answer."""

    def answer(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        if request.url.path != PREFIX and not request.url.path.startswith(f"{PREFIX}/"):
            return api(request, exc)
        return _error_page(request, exc) if isinstance(exc, HTTPException) else _unexpected_page(request, exc)

    return {HTTPException: answer, Exception: answer}
