"""Ingest throughput side by side: the HTTP ceiling, an empty Litestar handler, the DIY baseline
and Hookgate in production mode, under the same load generator and the same events.

Each run starts every target in turn on this machine, warms it up, and drives it with ``wrk``
(``--threads`` threads, ``--connections`` connections, ``--duration`` seconds) posting unique,
validly signed, real-shaped Stripe events (``shared/fixtures/stripe-events``, fresh ids), each once:

- ``ceiling``: a bare ASGI app on Granian (reads the body, answers 200);
- ``litestar``: an empty Litestar handler on Granian (the framework's floor);
- ``diy``: FastAPI on uvicorn, ``stripe.Webhook.construct_event``, select-then-insert per request
  on Postgres (``bench/targets/diy_receiver.py``: what users would otherwise run);
- ``hookgate``: ``hookgate serve`` (Granian) on Postgres and Redis: signature, dedupe, admission,
  commit before the 2xx, doorbell.

Every target gets ``--workers`` server processes. After each DIY and Hookgate run every
acknowledged event is looked up in the database: a run that lost one fails, whatever its speed.
Writes ``bench/results/<--name>.json`` (each run, and the medians) and prints the ratios
Hookgate/DIY and Hookgate/ceiling of the median throughputs.

Run from the repository root: ``.venv/bin/python -m bench.ingest_throughput [--runs 3]``
(needs ``wrk``: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench import procstats
from bench.servers import granian_argv, hookgate_env, unthrottled_tenant, wait_port
from bench.targets.diy_receiver import SCHEMA as DIY_SCHEMA
from tests.support.processes import Process, serve
from tests.support.services import create_database, drop_database, free_port, fresh_services, test_postgres_url
from tests.support.stripe_events import fixture_names, stripe_event, stripe_signature

RESULTS = Path(__file__).with_name("results")
LUA = Path(__file__).with_name("wrk") / "post_events.lua"
TARGETS = ("ceiling", "litestar", "diy", "hookgate")


@dataclass(frozen=True)
class Running:
    """A started target: where to post, with which Stripe secret, its server's pid, and how to
    count how many of the acknowledged ids it really stored (None: it stores nothing)."""

    url: str
    path: str
    secret: str
    pid: int
    stored: Callable[[list[str]], Awaitable[int]] | None = None


@dataclass(frozen=True)
class Load:
    threads: int
    connections: int
    duration: int
    events: int
    warmup: int


@asynccontextmanager
async def _asgi_app(app: str, workers: int, logs: Path) -> AsyncIterator[Running]:
    port = free_port()
    with Process(granian_argv(app, workers, port), logs / f"{app.split(':')[0]}.log") as process:
        await asyncio.to_thread(wait_port, process, port)
        assert process.proc is not None
        yield Running(f"http://127.0.0.1:{port}", "/ingest/bench", "whsec_bench", process.proc.pid)


@asynccontextmanager
async def _diy(workers: int, logs: Path) -> AsyncIterator[Running]:
    admin, name = test_postgres_url(), f"hookgate_diy_{uuid.uuid4().hex[:10]}"
    dsn = (await create_database(admin, name)).replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(DIY_SCHEMA)
        port, secret = free_port(), "whsec_" + uuid.uuid4().hex
        argv = [sys.executable, "-m", "uvicorn", "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "warning", "--no-access-log", "bench.targets.diy_receiver:app"]
        env = {"DIY_DATABASE_URL": dsn, "DIY_STRIPE_SECRET": secret}
        with Process(argv, logs / "diy.log", env) as process:
            await asyncio.to_thread(wait_port, process, port)
            assert process.proc is not None

            async def stored(ids: list[str]) -> int:
                return int(await connection.fetchval("SELECT count(*) FROM diy_events WHERE id = ANY($1::text[])", ids))

            yield Running(f"http://127.0.0.1:{port}", "/webhook", secret, process.proc.pid, stored)
    finally:
        await connection.close()
        await drop_database(admin, name)


@asynccontextmanager
async def _hookgate(workers: int, logs: Path) -> AsyncIterator[Running]:
    async with fresh_services("hookgate_bench", redis_db=4) as (url, redis_url):
        port = str(free_port())
        with serve(hookgate_env(url, redis_url, port), logs, workers=workers) as gateway:
            await asyncio.to_thread(gateway.wait_http, f"http://127.0.0.1:{port}/healthz")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                _, auth = await unthrottled_tenant(http)
                source = (await http.post("/api/v1/sources", json={"name": "stripe", "provider": "stripe"}, headers=auth)).json()
            connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))

            async def stored(ids: list[str]) -> int:
                return int(await connection.fetchval("SELECT count(*) FROM events WHERE id = ANY($1::uuid[])", ids))

            try:
                assert gateway.proc is not None
                yield Running(f"http://127.0.0.1:{port}", httpx.URL(source["ingest_url"]).path, source["secret"], gateway.proc.pid, stored)
            finally:
                await connection.close()


def _start(target: str, workers: int, logs: Path) -> Any:
    if target == "ceiling":
        return _asgi_app("bench.targets.bare_asgi:app", workers, logs)
    if target == "litestar":
        return _asgi_app("bench.targets.litestar_empty:app", workers, logs)
    if target == "diy":
        return _diy(workers, logs)
    return _hookgate(workers, logs)


def _requests_file(path: Path, secret: str, count: int) -> None:
    """``count`` fresh events, one ``<Stripe-Signature>\\t<body>`` line each, signed now."""
    names = cycle(fixture_names())
    with path.open("w") as out:
        for _ in range(count):
            body = json.dumps(stripe_event(next(names)), separators=(",", ":"))
            out.write(f"{stripe_signature(body.encode(), secret)}\t{body}\n")


def _wrk(running: Running, requests: Path, out: Path, threads: int, connections: int, duration: int) -> dict[str, Any]:
    env = {**os.environ, "WRK_PATH": running.path, "WRK_THREADS": str(threads), "WRK_REQUESTS": str(requests), "WRK_OUT": str(out)}
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--timeout", "10s", "-s", str(LUA), running.url]
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=duration + 120)
    return json.loads(out.read_text())


def _profile(running: Running, seconds: int, name: str) -> list[subprocess.Popen[bytes]]:
    """py-spy flame graphs (SVG) of the target's worker processes, into bench/results/."""
    workers = [stat.pid for stat in procstats.tree(running.pid) if stat.pid != running.pid] or [running.pid]
    RESULTS.mkdir(exist_ok=True)
    spy = str(Path(sys.executable).with_name("py-spy"))
    return [
        subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100", "--format", "flamegraph",
                          "--output", str(RESULTS / f"{name}-{n}.svg")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for n, pid in enumerate(workers)
    ]


async def _measure(target: str, workers: int, load: Load, work: Path, profile: str | None = None) -> dict[str, Any]:
    async with _start(target, workers, work) as running:
        warm, main = work / f"{target}-warm.tsv", work / f"{target}.tsv"
        await asyncio.to_thread(_requests_file, warm, running.secret, load.warmup)
        await asyncio.to_thread(_wrk, running, warm, work / f"{target}-warm.json", load.threads, load.connections, 2)
        await asyncio.to_thread(_requests_file, main, running.secret, load.events)
        before, cpu_before = procstats.tree(running.pid), procstats.machine()
        spies = _profile(running, load.duration - 1, profile) if profile else []
        raw = await asyncio.to_thread(_wrk, running, main, work / f"{target}.json", load.threads, load.connections, load.duration)
        for spy in spies:
            await asyncio.to_thread(spy.wait)
        processes = procstats.usage(before, procstats.tree(running.pid))
        machine = procstats.machine_share(cpu_before, procstats.machine())
        acked = (work / f"{target}.json.acked").read_text().split()
        stored = None if running.stored is None else await running.stored(acked)
    seconds = raw["duration_us"] / 1e6
    ok = sum(count for status, count in raw["statuses"].items() if status.startswith("2"))
    latency = {f"{k}_ms": round(v / 1000, 2) for k, v in raw["latency_us"].items()}
    result = {
        "target": target, "requests": raw["requests"], "seconds": round(seconds, 2),
        "throughput_per_second": round(ok / seconds, 1), "latency": latency, "statuses": raw["statuses"],
        "non_2xx": raw["requests"] - ok, "errors": raw["errors"], "events_reused": raw["wrapped"] > 0,
        "processes": processes, "machine_cpu_percent": machine,
    }
    if stored is not None:
        result |= {"acknowledged": len(acked), "stored_of_acknowledged": stored, "lost": len(acked) - stored}
    return result


async def _run_all(targets: Sequence[str], workers: int, load: Load, runs: int, profile: str | None) -> dict[str, Any]:
    per_run: list[dict[str, Any]] = []
    for number in range(1, runs + 1):
        work = Path(tempfile.mkdtemp(prefix="hookgate-bench-"))
        try:
            results = {
                target: await _measure(target, workers, load, work, f"flame_{target}" if target == profile and number == 1 else None)
                for target in targets
            }
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for target, result in results.items():
            lat = result["latency"]
            print(f"run {number} {target:9} {result['throughput_per_second']:9.1f}/s  p50 {lat['p50_ms']} ms  "
                  f"p99 {lat['p99_ms']} ms  non-2xx {result['non_2xx']}  lost {result.get('lost', '-')}  "
                  f"others' CPU (nice/steal) {result['machine_cpu_percent']['nice']}/{result['machine_cpu_percent']['steal']} %", flush=True)
        per_run.append(results)
    return {"runs": per_run, "median": _medians(per_run, targets)}


def _medians(per_run: list[dict[str, Any]], targets: Sequence[str]) -> dict[str, Any]:
    medians: dict[str, Any] = {}
    for target in targets:
        results = [run[target] for run in per_run]
        medians[target] = {
            "throughput_per_second": statistics.median(r["throughput_per_second"] for r in results),
            "p50_ms": statistics.median(r["latency"]["p50_ms"] for r in results),
            "p99_ms": statistics.median(r["latency"]["p99_ms"] for r in results),
            "max_ms": max(r["latency"]["max_ms"] for r in results),
            "peak_rss_mb": max(p["peak_rss_mb"] for r in results for p in r["processes"]),
            "lost": sum(r.get("lost", 0) for r in results),
        }
    return medians


def _ratios(medians: dict[str, Any]) -> dict[str, float]:
    rate = {target: m["throughput_per_second"] for target, m in medians.items()}
    pairs = {"hookgate/diy": ("hookgate", "diy"), "hookgate/litestar": ("hookgate", "litestar"), "hookgate/ceiling": ("hookgate", "ceiling")}
    return {name: round(rate[a] / rate[b], 2) for name, (a, b) in pairs.items() if a in rate and b in rate and rate[b]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per target and run")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--workers", type=int, default=2, help="server processes per target")
    parser.add_argument(
        "--events", type=int, help="unique events prepared per target and run (default: 8,000 per second of load, so none repeats)"
    )
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--name", default="ingest_throughput", help="results file name (bench/results/<name>.json)")
    parser.add_argument("--profile", choices=TARGETS, help="record py-spy flame graphs of this target's workers in the first run "
                        "(bench/results/flame_<target>-<n>.svg; needs py-spy and root)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    targets = [t for t in args.targets.split(",") if t]
    if unknown := set(targets) - set(TARGETS):
        sys.exit(f"unknown targets: {', '.join(sorted(unknown))}")
    load = Load(args.threads, args.connections, args.duration, args.events or 8_000 * args.duration, warmup=2_000)
    report = asyncio.run(_run_all(targets, args.workers, load, args.runs, args.profile))
    report |= {"command": " ".join(sys.argv), "load": vars(args), "ratios": _ratios(report["median"])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"median": report["median"], "ratios": report["ratios"]}, indent=2))
    if any(m["lost"] for m in report["median"].values()):
        sys.exit("FAILED: acknowledged events are missing from the database")


if __name__ == "__main__":
    main()
