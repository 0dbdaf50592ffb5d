"""A signed-in dashboard user for route tests: its session cookie and CSRF token on the shared client."""

from __future__ import annotations

import re
import uuid
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient

from dashboard.accounts import create_user
from gateway.database import create_engine, session_factory

PASSWORD = "correct horse battery"
SESSION = "hookgate_session"


def csrf_field(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field in the form"
    return match.group(1)


class Browser:
    """One signed-in user on the shared test client: its session cookie and its CSRF token."""

    def __init__(self, client: AsyncTestClient[Litestar], cookie: str, csrf: str) -> None:
        self.client, self.cookie, self.csrf = client, cookie, csrf

    def _use(self) -> None:
        self.client.cookies.clear()
        self.client.cookies.set(SESSION, self.cookie)

    async def get(self, path: str, *, cookies: dict[str, str] | None = None, **params: str) -> Any:
        self._use()
        for name, value in (cookies or {}).items():
            self.client.cookies.set(name, value)
        return await self.client.get(path, params=params or None, follow_redirects=False)

    async def post(self, path: str, data: dict[str, Any] | None = None, *, csrf: bool = True) -> Any:
        self._use()
        fields = {**(data or {}), **({"csrf_token": self.csrf} if csrf else {})}
        return await self.client.post(path, data=fields, follow_redirects=False)

    async def follow(self, redirect: Any) -> Any:
        """The page a POST's 303 leads to, fetched as a browser would: with the cookies it set."""
        assert redirect.status_code == 303, redirect.text
        return await self.get(redirect.headers["location"], cookies=dict(redirect.cookies.items()))


async def add_user(database_url: str, tenant_id: str, email: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            await create_user(session, uuid.UUID(tenant_id), email, PASSWORD)
    finally:
        await engine.dispose()


async def log_in(client: AsyncTestClient[Litestar], email: str, password: str = PASSWORD, next: str = "/dashboard/") -> Any:
    client.cookies.clear()
    form = await client.get("/dashboard/login")
    data = {"email": email, "password": password, "csrf_token": csrf_field(form.text), "next": next}
    return await client.post("/dashboard/login", data=data, follow_redirects=False)


async def browser_for(client: AsyncTestClient[Litestar], database_url: str, tenant_id: str, name: str) -> Browser:
    """A new user of the tenant, signed in."""
    email = f"{name.lower()}-{uuid.uuid4().hex[:6]}@example.com"
    await add_user(database_url, tenant_id, email)
    response = await log_in(client, email)
    assert response.status_code == 303 and response.headers["location"] == "/dashboard/", response.text
    cookie = response.cookies[SESSION]
    client.cookies.set(SESSION, cookie)
    page = await client.get("/dashboard/")
    return Browser(client, cookie, csrf_field(page.text))
