"""The app factory: the one place where the packages are assembled into a Litestar app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Response, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.plugins.prometheus import PrometheusConfig
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard.routes import dashboard_routers, template_config
from dashboard.web import with_dashboard_pages
from delivery.controller import DeliveryController
from delivery.replays.controller import ReplayController
from gateway.admission.controller import usage
from gateway.admission.service import Admission
from gateway.doorbell import Doorbell, RedisDoorbell
from gateway.events.controller import EventController
from gateway.head import HeadAsGet
from gateway.health import NOT_MIGRATED, readiness, ready
from gateway.idempotency.middleware import IdempotencyMiddleware
from gateway.ingest.controller import INGEST_STATE, ingest
from gateway.ingest.fast_path import IngestFastPath
from gateway.ingest.group_commit import GroupCommit
from gateway.ingest.service import IngestService
from gateway.logs import configure as configure_logs
from gateway.metrics import exposition
from gateway.openapi import complete as complete_openapi
from gateway.openapi import declared_query_only, openapi_config
from gateway.problems import Problem, problem_response
from gateway.requests import JsonRequest
from gateway.settings import Settings, get_settings
from gateway.tracing import configure as configure_tracing
from gateway.wiring import Runtime
from ml.online.controller import AnomalyController
from tenants.controller import TenantController
from tenants.endpoints.controller import EndpointController
from tenants.limits import default_rates
from tenants.sources.controller import SourceController
from tenants.sources.directory import SourceDirectory

# Request counts and latency per route template (hookgate_requests_total, …), for the API's panels.
_HTTP_METRICS = PrometheusConfig(app_name="hookgate", prefix="hookgate", group_path=True, exclude=["/metrics"])


@get("/healthz", operation_id="healthz", summary="The process is serving", tags=["health"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


# Litestar adds the charset to a text type itself; a duplicated parameter makes the header invalid
# (Go's mime parser, which Prometheus uses, rejects it).
_METRICS_TYPE = CONTENT_TYPE_LATEST.removesuffix("; charset=utf-8")


@get("/metrics", operation_id="metrics", summary="Prometheus metrics (all Granian workers)", tags=["health"], media_type=_METRICS_TYPE)
async def metrics() -> Response[bytes]:
    return Response(exposition(), media_type=_METRICS_TYPE)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    configure_logs(settings.log_level)
    configure_tracing(settings, "gateway")
    runtime = Runtime(settings)
    sessions, box = runtime.sessions, runtime.box
    dispatcher = runtime.dispatcher() if settings.is_embedded else None
    replays = runtime.replay_runner(dispatcher) if dispatcher is not None else None
    monitor = runtime.anomaly_monitor() if dispatcher is not None else None
    doorbell: Doorbell = dispatcher or RedisDoorbell(runtime.redis)
    directory = SourceDirectory(sessions, box, settings.source_cache_ttl_seconds)
    admission = Admission(runtime.limiter, window_seconds=settings.usage_window_seconds)
    group_commit = GroupCommit(
        runtime.ingest_engine(), doorbell, max_rows=settings.ingest_commit_batch_rows, concurrency=settings.ingest_commit_concurrency
    )
    ingest_service = IngestService(
        sessions,
        directory,
        admission,
        group_commit,
        defaults=default_rates(settings),
        tolerance=settings.stripe_tolerance_seconds,
    )

    async def provide_session() -> AsyncIterator[AsyncSession]:
        async with sessions() as session:
            yield session

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        background = [task for task in (dispatcher, replays, monitor) if task is not None]
        for task in background:
            task.start()
        try:
            yield
        finally:
            await asyncio.gather(*(task.stop() for task in background))
            await group_commit.shutdown()
            await runtime.close()

    def _constant(value: object) -> Provide:
        return Provide(lambda: value, use_cache=True, sync_to_thread=False)

    @get("/readyz", operation_id="readyz", summary="Database reachable (Redis reported, not required)", tags=["health"])
    async def readyz() -> dict[str, object]:
        """Only the database gates readiness: without Redis, admission still lets critical and high
        events in (the rest get a 503 their provider retries) and the sweeper delivers what the
        doorbell could not ring, so a Redis outage must not take every gateway pod out of its
        Service. It shows as ``degraded``."""
        checks = await readiness(sessions, runtime.redis)
        if not ready(checks, needs=("database",)):
            behind = checks["database"] == NOT_MIGRATED
            detail = "the database schema is older than this release: run hookgate migrate" if behind else "the database is unreachable"
            raise Problem(503, "not-ready", detail, checks=checks)
        return {"status": "ready" if ready(checks) else "degraded", "checks": checks}

    app = Litestar(
        route_handlers=[
            healthz,
            readyz,
            metrics,
            ingest,
            usage,
            TenantController,
            SourceController,
            EndpointController,
            EventController,
            DeliveryController,
            ReplayController,
            AnomalyController,
            *dashboard_routers(sessions, settings, runtime.limiter),
        ],
        guards=[declared_query_only],
        dependencies={
            "db_session": Provide(provide_session),
            "settings": _constant(settings),
            "secret_box": _constant(box),
            "admission": _constant(admission),
            "source_directory": _constant(directory),
            "breaker": _constant(runtime.breaker),
            "doorbell": _constant(doorbell),
        },
        middleware=[
            _HTTP_METRICS.middleware,
            DefineMiddleware(
                IdempotencyMiddleware, sessions=sessions, box=box, max_body=settings.max_body_bytes, operator_key=settings.operator_key
            ),
        ],
        exception_handlers=with_dashboard_pages(problem_response),
        template_config=template_config(),
        openapi_config=openapi_config(),
        request_max_body_size=settings.max_body_bytes,
        request_class=JsonRequest,  # deeply nested JSON is a 400, not a 500
        logging_config=None,  # gateway/logs.py: one JSON line per record
        state=State({"settings": settings, INGEST_STATE: ingest_service}),
        lifespan=[lifespan],
    )
    complete_openapi(app)
    app.asgi_handler = IngestFastPath(HeadAsGet(app.asgi_handler), ingest_service, max_body=settings.max_body_bytes)
    return app
