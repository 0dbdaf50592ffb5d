"""The dashboard as the app factory mounts it: the public login route and static files, the
signed-in pages behind the login guard, and the template engine."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from litestar import Router
from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.di import Provide
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig
from markupsafe import Markup
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard.account import account, change_password
from dashboard.anomalies import AnomalyPages, ApiKeyPages
from dashboard.dead_letters import DeadLetterPages, cancel_replay, replays
from dashboard.endpoints import EndpointPages
from dashboard.events import EventPages
from dashboard.login import InvitationController, LoginController, LoginThrottle, logout
from dashboard.overview import overview
from dashboard.sessions import Signer
from dashboard.sources import SourcePages
from dashboard.team import invite_teammate, remove_teammate, team, withdraw_invitation
from dashboard.web import PREFIX, login_guard, viewer_of
from gateway.limiter import Limiter, Rate
from gateway.settings import Settings

_HERE = Path(__file__).parent


def _when(value: datetime | None) -> Markup:
    """A UTC time, short on the page (marked UTC) and exact in the tooltip and the markup, from which
    the page's script shows it in the browser's own time zone."""
    if value is None:
        return Markup("—")
    return Markup('<time datetime="{}" title="{}">{}</time>').format(
        value.isoformat(), value.strftime("%Y-%m-%d %H:%M:%S UTC"), value.strftime("%d %b %Y %H:%M:%S UTC")
    )


def _endpoint_label(endpoint: Any) -> str:
    """An endpoint as a choice in a list: several can share a URL, and deleted ones stay named."""
    described = f"{endpoint.url} — {endpoint.description[:60]}" if endpoint.description else endpoint.url
    return f"{described} (deleted)" if endpoint.deleted_at is not None else described


def _engine(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters["when"] = _when
    engine.engine.filters["endpoint_label"] = _endpoint_label


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(directory=_HERE / "templates", engine=JinjaTemplateEngine, engine_callback=_engine)


def dashboard_routers(sessions: Callable[[], AsyncSession], settings: Settings, limiter: Limiter) -> list[Router]:
    signer = Signer.from_secret(settings.secret_key)

    def constant(value: object) -> Provide:
        return Provide(lambda: value, use_cache=True, sync_to_thread=False)

    throttle = constant(LoginThrottle(limiter, Rate.parse(settings.dashboard_login_limit), settings.proxy_networks))
    public = Router(
        path=PREFIX,
        route_handlers=[LoginController, InvitationController],
        dependencies={"signer": constant(signer), "login_throttle": throttle},
        include_in_schema=False,
    )
    pages = Router(
        path=PREFIX,
        route_handlers=[overview, logout, SourcePages, EndpointPages, EventPages, DeadLetterPages, replays, cancel_replay, AnomalyPages, ApiKeyPages,
                       team, invite_teammate, remove_teammate, withdraw_invitation, account, change_password],
        guards=[login_guard(sessions, signer)],
        dependencies={"viewer": Provide(viewer_of, sync_to_thread=False), "login_throttle": throttle},
        include_in_schema=False,
    )
    static = create_static_files_router(path=f"{PREFIX}/static", directories=[_HERE / "static"], name="dashboard-static")
    return [public, pages, static]
