"""The ``hookgate`` command: dev, serve, migrate, worker, settings, users, secrets, ml."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from gateway.settings import Settings, get_settings, settings_from_env, settings_reference

_APP = "gateway.cli:served_app"


def served_app() -> Any:
    """The app as Granian runs it in each worker process, with its startup heap frozen."""
    from gateway.app import create_app

    app = create_app()
    _freeze_heap()
    return app


def _freeze_heap() -> None:
    """Move what startup allocated (modules, the app, its routes: most of the heap) out of the
    cyclic collector's reach, which otherwise walks all of it in every full collection: ~140 ms of
    stalled event loop a few times a minute under load, the ingest p99. Frozen: ~10–20 ms. Only in
    the long-lived processes; objects frozen here are never collected, which is what startup's are."""
    import gc

    gc.collect()
    gc.freeze()


def _granian(settings: Settings, host: str, port: int, workers: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings

    # Slow and oversized request heads are bounded here, before the app sees a byte.
    http1 = HTTP1Settings(header_read_timeout=round(settings.header_read_timeout_seconds * 1000), max_buffer_size=settings.max_header_bytes)
    Granian(_APP, factory=True, address=host, port=port, workers=workers, interface=Interfaces.ASGI, loop=Loops.uvloop,
            http1_settings=http1).serve()


def _dev(args: argparse.Namespace) -> None:
    from gateway.embedded import dev_environment, prepare

    env = dev_environment(Path(args.data_dir), args.host, args.port)
    os.environ.update(env)
    settings = settings_from_env(env)
    info = prepare(settings, Path(args.data_dir))
    print(
        "Hookgate is running in embedded mode (SQLite, no Redis).\n"
        f"  API:          {settings.public_url}/api/v1   (OpenAPI: {settings.public_url}/schema)\n"
        f"  operator key: {info.operator_key}\n"
        f"  tenant key:   {info.api_key}   (tenant {info.tenant_id})\n"
        f"  ingest URL:   {info.ingest_url}\n"
        f"  dashboard:    {settings.public_url}/dashboard/login   (user {info.dashboard_email}, password {info.dashboard_password})\n"
        f"  Stripe secret (whsec_): {info.source_secret}\n"
        f"  data:         {Path(args.data_dir).resolve()}   (other hookgate commands: HOOKGATE_DATABASE_URL={settings.database_url})\n",
        flush=True,
    )
    _granian(settings, args.host, args.port, 1)


def _serve(args: argparse.Namespace) -> None:
    settings = get_settings()  # fail fast on bad settings, before forking workers
    _metrics_dir()
    _granian(settings, args.host, args.port, args.workers)


def _metrics_dir() -> None:
    """prometheus_client's multiprocess mode: each Granian worker writes its metrics to files in
    one directory and /metrics sums them. A fresh directory per run, unless the operator names one
    (an emptyDir volume, say): that one is emptied first, as a previous run's files would count
    (its in-progress requests, cut off by a crash, for ever)."""
    import tempfile
    from pathlib import Path

    named = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if named is None:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="hookgate-metrics-")
        return
    for stale in Path(named).glob("*.db"):
        stale.unlink(missing_ok=True)


def _migrate(_args: argparse.Namespace) -> None:
    from gateway.migrate import upgrade

    upgrade(get_settings().database_url)
    print("database is at the latest schema")


def _worker(_args: argparse.Namespace) -> None:
    import asyncio

    import uvloop

    from gateway.worker import run_worker

    _freeze_heap()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run_worker())  # which configures JSON logs at HOOKGATE_LOG_LEVEL


def _settings(_args: argparse.Namespace) -> None:
    print(settings_reference())


def _users_create(args: argparse.Namespace) -> None:
    import asyncio
    import getpass
    import uuid

    from dashboard.accounts import AccountError, create_operator_user

    password = args.password or os.environ.get("HOOKGATE_USER_PASSWORD") or getpass.getpass("password: ")
    try:
        user = asyncio.run(create_operator_user(get_settings().database_url, uuid.UUID(args.tenant), args.email, password))
    except (AccountError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    print(f"created dashboard user {user.email} for tenant {user.tenant_id}; log in at {get_settings().public_url}/dashboard/login")


def _users_change(args: argparse.Namespace) -> None:
    """``users set-password`` (with a password) and ``users delete``: either way the sessions end."""
    import asyncio
    import getpass

    from dashboard.accounts import AccountError, operator_account_change

    deleting = args.users_command == "delete"
    password = None if deleting else args.password or os.environ.get("HOOKGATE_USER_PASSWORD") or getpass.getpass("new password: ")
    try:
        user = asyncio.run(operator_account_change(get_settings().database_url, args.email, password))
    except AccountError as exc:
        sys.exit(f"error: {exc}")
    print(f"{'deleted' if deleting else 'set a new password for'} dashboard user {user.email}; its sessions ended")


def _secrets_reencrypt(args: argparse.Namespace) -> None:
    import asyncio

    from gateway.database import create_engine, session_factory
    from tenants.crypto import SecretBox
    from tenants.reencrypt import reencrypt_all

    async def run() -> Any:
        settings = get_settings()
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            return await reencrypt_all(session_factory(engine), SecretBox(settings.secret_key), args.batch)
        finally:
            await engine.dispose()

    rotation = asyncio.run(run())
    for column, count in rotation.rewritten.items():
        print(f"{column}: {count} re-encrypted, {rotation.unreadable[column]} unreadable")
    if any(rotation.unreadable.values()):
        sys.exit("error: some secrets could not be decrypted with any key in HOOKGATE_SECRET_KEY; keep the old keys until they are")
    print("every secret is encrypted with the first key of HOOKGATE_SECRET_KEY; the others can be removed")


def _ml_simulate(args: argparse.Namespace) -> None:
    from ml.simulate import FIXTURES, simulate

    fixtures = Path(args.fixtures) if args.fixtures else FIXTURES
    lines, incidents = simulate(args.days, args.tenants, args.seed, Path(args.out), args.max_per_hour, fixtures)
    print(f"wrote {lines} events and {incidents} labelled incidents to {args.out}")


def _ml_evaluate(args: argparse.Namespace) -> None:
    import json

    from ml.evaluate import evaluate, format_report

    report = evaluate(Path(args.events), Path(args.labels), args.detectors)
    print(format_report(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


def _ml_commands(commands: argparse._SubParsersAction) -> None:
    ml = commands.add_parser("ml", help="anomaly detection: simulate traffic, evaluate detectors offline")
    actions = ml.add_subparsers(dest="ml_command", required=True)
    simulate = actions.add_parser("simulate", help="write events.jsonl and labels.jsonl with injected incidents")
    simulate.add_argument("--days", type=int, default=7)
    simulate.add_argument("--tenants", type=int, default=20)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--max-per-hour", type=float, default=10_000, help="busiest tenant's peak events/hour (the quietest has 10)")
    simulate.add_argument("--out", required=True, help="output directory")
    simulate.add_argument(
        "--fixtures", help="Stripe event payloads (*.json) to draw from (default: shared/fixtures/stripe-events beside the repo)"
    )
    simulate.set_defaults(run=_ml_simulate)
    evaluate = actions.add_parser("evaluate", help="replay events through the detectors and score them against labels")
    evaluate.add_argument("--events", required=True)
    evaluate.add_argument("--labels", required=True)
    evaluate.add_argument("--detectors", choices=("rules", "forest", "all"), default="all")
    evaluate.add_argument("--out", help="write the full report (every anomaly raised) as JSON")
    evaluate.set_defaults(run=_ml_evaluate)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; the Helm chart's container args are checked against it in tests."""
    parser = argparse.ArgumentParser(prog="hookgate", description="Multi-tenant webhook gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="embedded mode: one process, SQLite, no Redis")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--data-dir", default=".hookgate")
    dev.set_defaults(run=_dev)

    serve = commands.add_parser("serve", help="production HTTP tier on Granian")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="default: the CPUs this process may run on")
    serve.set_defaults(run=_serve)

    commands.add_parser("migrate", help="apply database migrations").set_defaults(run=_migrate)
    commands.add_parser("worker", help="delivery worker (dispatch loop, doorbell listener, arq cron)").set_defaults(run=_worker)
    commands.add_parser("settings", help="print every HOOKGATE_* setting").set_defaults(run=_settings)
    _ml_commands(commands)
    users = commands.add_parser("users", help="dashboard users").add_subparsers(dest="users_command", required=True)
    create_user = users.add_parser("create", help="create a tenant's dashboard user")
    create_user.add_argument("--tenant", required=True, help="tenant id")
    create_user.add_argument("--email", required=True)
    create_user.add_argument("--password", help="default: HOOKGATE_USER_PASSWORD, else asked for on the terminal")
    create_user.set_defaults(run=_users_create)
    set_password = users.add_parser("set-password", help="set a user's password and end its sessions")
    set_password.add_argument("--email", required=True)
    set_password.add_argument("--password", help="default: HOOKGATE_USER_PASSWORD, else asked for on the terminal")
    set_password.set_defaults(run=_users_change)
    delete_user = users.add_parser("delete", help="delete a user (and its sessions): offboarding, or freeing an email address")
    delete_user.add_argument("--email", required=True)
    delete_user.set_defaults(run=_users_change)
    secrets = commands.add_parser("secrets", help="secrets at rest").add_subparsers(dest="secrets_command", required=True)
    reencrypt = secrets.add_parser("reencrypt", help="re-encrypt every stored secret with the first HOOKGATE_SECRET_KEY")
    reencrypt.add_argument("--batch", type=int, default=500, help="rows per transaction")
    reencrypt.set_defaults(run=_secrets_reencrypt)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
