"""Shared runtime wiring for the app and the worker: one place that picks backends by mode.

Embedded mode keeps the breaker and limiters in process; production shares them through Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from delivery.breaker import Breaker, BreakerConfig, MemoryBreaker, RedisBreaker
from delivery.dispatcher import SWEEP_GRACE_SECONDS, Dispatcher
from delivery.engine import DeliveryEngine
from delivery.replays.runner import ReplayRunner
from delivery.sender import DeliveryClient
from gateway.database import create_engine, session_factory
from gateway.limiter import Limiter, MemoryLimiter, RedisLimiter
from gateway.settings import Settings
from ml.online.monitor import AnomalyMonitor
from tenants.crypto import SecretBox


def breaker_config(settings: Settings) -> BreakerConfig:
    return BreakerConfig(
        failure_threshold=settings.breaker_failure_threshold,
        failure_ratio=settings.breaker_failure_ratio,
        window_seconds=settings.breaker_window_seconds,
        min_volume=settings.breaker_min_volume,
        cooldown=settings.breaker_cooldown_seconds,
        max_cooldown=settings.breaker_max_cooldown_seconds,
        probe_timeout=settings.lease_seconds,
        probe_wait=min(5.0, settings.breaker_cooldown_seconds),
        closed_trust=settings.breaker_closed_trust_seconds,
    )


@dataclass
class Runtime:
    settings: Settings
    # False in the worker: every transaction there is retried or redone when its connection is dead.
    pre_ping: bool = True
    engine: AsyncEngine = field(init=False)
    sessions: async_sessionmaker[AsyncSession] = field(init=False)
    box: SecretBox = field(init=False)
    redis: aioredis.Redis | None = field(init=False)
    breaker: Breaker = field(init=False)
    limiter: Limiter = field(init=False)
    _client: DeliveryClient | None = field(init=False, default=None)
    _control_engine: AsyncEngine | None = field(init=False, default=None)
    _ingest_engine: AsyncEngine | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        settings = self.settings
        self.engine = self._engine(pool_size=settings.db_pool_size, pre_ping=self.pre_ping)
        self.sessions = session_factory(self.engine)
        self.box = SecretBox(settings.secret_key)
        config = breaker_config(settings)
        if settings.is_embedded:
            self.redis = None
            self.breaker, self.limiter = MemoryBreaker(config), MemoryLimiter()
        else:
            self.redis = aioredis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=2)
            self.breaker, self.limiter = RedisBreaker(self.redis, config), RedisLimiter(self.redis)

    def delivery_engine(self) -> DeliveryEngine:
        """This process's delivery engine, with its pooled HTTP client and, on Postgres, a small pool
        of its own for the passes (they must not queue for a connection behind the attempts)."""
        settings = self.settings
        self._client = DeliveryClient(
            connect_timeout=settings.delivery_connect_timeout, max_connections=settings.delivery_concurrency
        )
        control = None
        if not settings.is_embedded:  # SQLite has one writer anyway: a second pool would only contend
            self._control_engine = self._engine(pool_size=2, pre_ping=self.pre_ping, generic_plans=True)
            # Autocommit: every statement of a pass is atomic on its own (DeliveryEngine.claim), so
            # BEGIN and COMMIT would only be two more round trips before each delivery.
            control = session_factory(self._control_engine.execution_options(isolation_level="AUTOCOMMIT"))
        return DeliveryEngine(self.sessions, settings, self.box, self.breaker, self.limiter, self._client, control)

    def _engine(self, **options: Any) -> AsyncEngine:
        """An engine on the database whose statements have the process's time limit."""
        return create_engine(self.settings.database_url, command_timeout=self.settings.db_command_timeout_seconds, **options)

    def dispatcher(self) -> Dispatcher:
        """The delivery loop of this process."""
        settings = self.settings
        return Dispatcher(
            self.delivery_engine(),
            concurrency=settings.delivery_concurrency,
            poll_interval=min(1.0, settings.sweeper_interval_seconds),
            sweep_interval=settings.sweeper_interval_seconds,
            sweep_grace=SWEEP_GRACE_SECONDS,
        )

    def ingest_engine(self) -> AsyncEngine:
        """The group commit's own pool, without pre-ping: at one batch in flight, the ping was a
        round trip on every commit (a third of its time under load). A batch that meets a dead
        connection is retried once on a new one (``GroupCommit``)."""
        settings = self.settings
        if settings.is_embedded:  # SQLite: one writer, one pool
            return self.engine
        self._ingest_engine = self._engine(pool_size=settings.ingest_commit_concurrency, pre_ping=False)
        return self._ingest_engine

    def replay_runner(self, dispatcher: Dispatcher) -> ReplayRunner:
        """Replay jobs advance in the same process as the dispatcher that delivers what they queue."""
        return ReplayRunner(
            self.sessions,
            self.settings,
            self.box,
            wake=dispatcher.wakeup.set,
            poll_interval=min(1.0, self.settings.sweeper_interval_seconds),
        )

    def anomaly_monitor(self) -> AnomalyMonitor:
        """Scores each closed window; retrains models itself only in embedded mode (an arq cron
        job does it in production)."""
        return AnomalyMonitor(self.sessions, self.settings, retrains=self.settings.is_embedded)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        for engine in (self._control_engine, self._ingest_engine):
            if engine is not None:
                await engine.dispose()
        await self.engine.dispose()
