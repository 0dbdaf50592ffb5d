"""``hookgate dev``: prepare a data directory with SQLite, keys, a demo tenant and its dashboard user, once."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from dashboard.accounts import create_user
from dashboard.models import User
from gateway.database import create_engine, session_factory, utcnow
from gateway.migrate import upgrade
from gateway.settings import Settings
from tenants.crypto import SecretBox
from tenants.secrets import active_plaintexts
from tenants.service import create_tenant
from tenants.sources.models import Source
from tenants.sources.schemas import SourceCreate
from tenants.sources.service import SourceService


@dataclass(frozen=True)
class DevInfo:
    tenant_id: str
    operator_key: str
    api_key: str
    ingest_url: str
    source_secret: str
    dashboard_email: str
    dashboard_password: str


DEMO_EMAIL = "demo@hookgate.dev"


def _kept(path: Path, make: str) -> str:
    """A value generated once and kept in the data directory (readable by the owner only)."""
    if not path.exists():
        path.write_text(make)
        path.chmod(0o600)
    return path.read_text().strip()


def _private(database: Path) -> Path:
    """The database file, readable by the owner only: it holds every payload (customers, amounts)
    and the dashboard's password hashes. SQLite gives its -wal and -shm files the same mode."""
    database.touch(mode=0o600)
    database.chmod(0o600)
    return database


def dev_environment(data_dir: Path, host: str, port: int) -> dict[str, str]:
    """The ``HOOKGATE_*`` variables of embedded mode; explicit ones in the environment win."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = {
        "HOOKGATE_MODE": "embedded",
        "HOOKGATE_DATABASE_URL": f"sqlite+aiosqlite:///{_private(data_dir / 'hookgate.db').resolve()}",
        "HOOKGATE_SECRET_KEY": _kept(data_dir / "secret.key", secrets.token_urlsafe(32)),
        "HOOKGATE_OPERATOR_KEY": os.environ.get("HOOKGATE_OPERATOR_KEY")
        or _kept(data_dir / "operator.key", "hgop_" + secrets.token_urlsafe(32)),
        "HOOKGATE_PUBLIC_URL": f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}",
        "HOOKGATE_ALLOW_PRIVATE_ENDPOINTS": "true",
    }
    return {**env, **{k: v for k, v in os.environ.items() if k.startswith("HOOKGATE_") and k != "HOOKGATE_MODE"}}


async def _demo(settings: Settings, demo_file: Path) -> DevInfo:
    engine = create_engine(settings.database_url)
    box = SecretBox(settings.secret_key)
    try:
        async with session_factory(engine)() as session:
            if not demo_file.exists():
                tenant, api_key = await create_tenant(session, "Demo")
                source, _ = await SourceService(session, tenant.id, box, settings).create(
                    SourceCreate(name="Stripe (demo)", provider="stripe")
                )
                demo_file.write_text(json.dumps({"tenant_id": str(tenant.id), "source_id": str(source.id), "api_key": api_key}))
                demo_file.chmod(0o600)
            demo = json.loads(demo_file.read_text())
            source = await session.get(Source, uuid.UUID(demo["source_id"]))
            assert source is not None, f"demo source missing: delete {demo_file} to recreate it"
            service = SourceService(session, source.tenant_id, box, settings)
            password = _kept(demo_file.parent / "dashboard.password", secrets.token_urlsafe(12))
            if await session.scalar(select(User.id).where(User.email == DEMO_EMAIL)) is None:
                await create_user(session, source.tenant_id, DEMO_EMAIL, password)
            return DevInfo(
                tenant_id=demo["tenant_id"],
                operator_key=settings.operator_key,
                api_key=demo["api_key"],
                ingest_url=service.shape(source).ingest_url,
                source_secret=active_plaintexts(box, source.secrets, utcnow())[0],
                dashboard_email=DEMO_EMAIL,
                dashboard_password=password,
            )
    finally:
        await engine.dispose()


def prepare(settings: Settings, data_dir: Path) -> DevInfo:
    """Migrate the SQLite database, refresh its statistics and make sure the demo tenant exists."""
    upgrade(settings.database_url)
    asyncio.run(_analyze(settings.database_url))
    return asyncio.run(_demo(settings, data_dir / "demo.json"))


async def _analyze(url: str) -> None:
    """SQLite has no autovacuum to gather statistics: without them its planner reads a tenant's dead
    letters through the index of all its deliveries (257 ms instead of ~0 at 400,000 deliveries).
    Sampled (``analysis_limit``), so a start stays quick on a large database."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("PRAGMA analysis_limit=1000")
            await connection.exec_driver_sql("ANALYZE")
    finally:
        await engine.dispose()
