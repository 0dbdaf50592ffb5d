"""``hookgate worker``: the dispatch loop, the doorbell listener, and an arq worker for cron jobs.

The dispatch loop (delivery and sweeping) needs only the database: while Redis is down it keeps
delivering without breaker and rate limit, the doorbell listener retries, and the arq side is
restarted when Redis comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any
from urllib.parse import parse_qs, urlsplit

from arq.connections import RedisSettings
from arq.cron import cron
from arq.worker import Worker

from gateway.doorbell import listen
from gateway.health import readiness
from gateway.logs import configure as configure_logs
from gateway.probes import serve_probes
from gateway.settings import Settings, get_settings
from gateway.tracing import configure as configure_tracing
from gateway.wiring import Runtime
from ml.online.training import retrain

_log = logging.getLogger("hookgate.worker")
_ARQ_RESTART_DELAY = 2.0
_ARQ_CLOSE_SECONDS = 3.0  # how long a stop waits for arq to let go of Redis


async def _retrain(ctx: dict[str, Any]) -> None:
    runtime: Runtime = ctx["runtime"]
    await retrain(runtime.sessions, runtime.settings)


def arq_redis(url: str) -> RedisSettings:
    """arq's connection settings for ``HOOKGATE_REDIS_URL``. arq reads only the address, the
    password, the database and the scheme of a URL; the TLS options that redis-py takes from its
    query (a CA bundle for a managed Redis: ``rediss://…?ssl_ca_certs=/etc/…/ca.crt``) are passed
    on, or arq alone would refuse the server's certificate."""
    settings = RedisSettings.from_dsn(url)
    query = {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
        if name in query:
            setattr(settings, name, query[name])
    if "ssl_check_hostname" in query:
        settings.ssl_check_hostname = query["ssl_check_hostname"].lower() in ("1", "true", "yes")
    return settings


def _arq_worker(settings: Settings, ctx: dict[str, Any]) -> Worker:
    return Worker(
        functions=[],
        # arq runs each cron tick once across all workers (its job id is the tick).
        cron_jobs=[cron(_retrain, name="retrain_anomaly_models", minute=set(range(0, 60, 10)), timeout=600, max_tries=1)],
        redis_settings=arq_redis(settings.redis_url),
        ctx=ctx,
        handle_signals=False,
        keep_result=0,
    )


async def _run_arq(settings: Settings, ctx: dict[str, Any]) -> None:
    """Keep an arq worker running; when Redis fails, wait and start a fresh one."""
    while True:
        worker = _arq_worker(settings, ctx)
        try:
            await worker.async_run()
        except asyncio.CancelledError:
            # Redis may be gone, or hang (arq's pool has no socket timeout): stopping must still finish.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.close(), _ARQ_CLOSE_SECONDS)
            raise
        except Exception:  # noqa: BLE001 - Redis gone; deliveries go on from the database
            _log.warning("arq worker stopped (Redis unavailable?); restarting", exc_info=True)
        with contextlib.suppress(Exception):
            await worker.close()
        await asyncio.sleep(_ARQ_RESTART_DELAY)


async def run_worker(settings: Settings | None = None, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (by default: until SIGTERM/SIGINT), then drain in-flight attempts."""
    settings = settings or get_settings()
    configure_logs(settings.log_level)
    configure_tracing(settings, "worker")
    runtime = Runtime(settings, pre_ping=False)
    dispatcher = runtime.dispatcher()
    replays = runtime.replay_runner(dispatcher)
    monitor = runtime.anomaly_monitor()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    probes = None
    if settings.worker_metrics_port:
        probes = await serve_probes(
            settings.worker_metrics_host, settings.worker_metrics_port, lambda: readiness(runtime.sessions, runtime.redis)
        )
    dispatcher.start()
    replays.start()
    monitor.start()
    tasks = [asyncio.create_task(_run_arq(settings, {"runtime": runtime}), name="hookgate-arq")]
    if runtime.redis is not None:
        tasks.append(asyncio.create_task(listen(runtime.redis, dispatcher.ring, stop), name="hookgate-doorbell"))
    _log.info("worker started")
    try:
        await stop.wait()
    finally:
        stop.set()  # also when this task itself was cancelled: the doorbell listener ends on it
        if probes is not None:
            probes.close()
        for task in tasks:
            task.cancel()
        # The loops stop at once, beside the Redis side's teardown: a stop must not wait on Redis first.
        stopping = asyncio.gather(replays.stop(), monitor.stop(), dispatcher.stop(grace=settings.delivery_timeout))
        await asyncio.gather(*tasks, return_exceptions=True)  # whatever they died of, the rest must stop too
        await stopping
        await runtime.close()
