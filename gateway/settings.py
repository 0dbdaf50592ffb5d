"""One typed settings object, read once from ``HOOKGATE_*`` environment variables.

Every field below is documented where it is declared; ``docs/SETTINGS.md`` is generated from
the same place by ``hookgate settings``, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Literal

import msgspec

_PREFIX = "HOOKGATE_"
_log = logging.getLogger("hookgate.settings")


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


_RATE = msgspec.Meta(pattern=r"^\d+(\.\d+)?/\d+$")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    mode: Annotated[
        Literal["embedded", "production"],
        _doc("`embedded`: one process, in-process dispatcher and limiters (set by `hookgate dev`). "
             "`production`: Redis-backed queue, breaker and limiters."),
    ] = "production"
    database_url: Annotated[
        str,
        _doc("SQLAlchemy URL: `postgresql+asyncpg://…` in production, `sqlite+aiosqlite:///…` embedded."),
    ] = "sqlite+aiosqlite:///./hookgate.db"
    redis_url: Annotated[str, _doc("Redis URL for the queue, breakers and limiters (production).")] = (
        "redis://127.0.0.1:6379/0"
    )
    secret_key: Annotated[
        str,
        _doc("Key that encrypts signing secrets at rest: a random string of at least 32 characters; several, "
             "comma-separated, to rotate (the first encrypts and must be that long, all decrypt)."),
    ] = ""
    operator_key: Annotated[str, _doc("Bearer key of the operator (provisions tenants).")] = ""
    public_url: Annotated[
        str, _doc("Absolute base URL that providers reach, used to build ingest URLs.")
    ] = "http://127.0.0.1:8000"
    max_body_bytes: Annotated[int, _doc("Largest accepted ingest body; larger answers 413.")] = 1_048_576
    max_header_bytes: Annotated[
        int, msgspec.Meta(ge=8192), _doc("HTTP/1 read buffer of `hookgate serve`: a request head larger than this answers 431.")
    ] = 65_536
    header_read_timeout_seconds: Annotated[
        float, msgspec.Meta(gt=0), _doc("Seconds a client has to send a request head before `hookgate serve` drops it (slow clients).")
    ] = 10.0
    stripe_tolerance_seconds: Annotated[
        int, _doc("How old (or how far in the future) a signed timestamp may be.")
    ] = 300
    source_cache_ttl_seconds: Annotated[
        float, _doc("How long the ingest route caches a source lookup (and a miss).")
    ] = 5.0
    ingest_commit_batch_rows: Annotated[
        int, msgspec.Meta(ge=1, le=10_000), _doc("Most events one ingest group commit stores in one transaction.")
    ] = 256
    ingest_commit_concurrency: Annotated[
        int,
        msgspec.Meta(ge=1, le=1_000),
        _doc("Ingest transactions committing at once per process; events arriving while all are busy "
             "wait and commit together in the next (group commit). 1 gives the largest batches and, on a "
             "busy CPU, the most events per second (docs/PERFORMANCE.md); raise it only when the commit "
             "round trip, not the CPU, is the limit (a distant database). Keep it below the pool size."),
    ] = 1
    secret_grace_seconds: Annotated[
        int, _doc("Default time a replaced secret keeps verifying (sources) or signing (endpoints).")
    ] = 86_400
    db_pool_size: Annotated[int, msgspec.Meta(ge=1), _doc("Connections per process in the Postgres pool.")] = 10
    db_command_timeout_seconds: Annotated[
        float,
        msgspec.Meta(gt=0),
        _doc("Longest a gateway or worker waits for one Postgres statement. Past it the statement fails (ingest answers "
             "503) and its connection is dropped: after a network partition or a failover, a connection that will never "
             "answer is given up instead of holding every later batch behind it. Migrations and CLI commands have no limit."),
    ] = 15.0
    log_level: Annotated[
        str,
        _doc(
            "Python log level name (logs are JSON lines on stderr). `DEBUG` adds a line per stored (accepted or duplicate)"
            " event and per successful delivery attempt; refused and failed ingests and failed attempts log at `INFO`."
        ),
    ] = "INFO"
    otel_exporter: Annotated[
        Literal["none", "console", "otlp_grpc", "otlp_http"],
        _doc("Where OpenTelemetry traces go: `otlp_grpc`/`otlp_http` (to `HOOKGATE_OTEL_ENDPOINT`), "
             "`console` (stdout), or `none`."),
    ] = "none"
    otel_endpoint: Annotated[
        str, _doc("OTLP collector endpoint; empty uses the exporter's default (or `OTEL_EXPORTER_OTLP_*`).")
    ] = ""
    otel_service_name: Annotated[str, _doc("Service name prefix of the spans (`-gateway`, `-worker` added).")] = "hookgate"
    worker_metrics_host: Annotated[str, _doc("Address the worker's /metrics, /healthz and /readyz listener binds.")] = "0.0.0.0"
    worker_metrics_port: Annotated[
        int, msgspec.Meta(ge=0, le=65535), _doc("Port of that listener; 0 turns it off.")
    ] = 9101
    allow_private_endpoints: Annotated[
        bool, _doc("Allow deliveries to loopback/private/link-local addresses (true in `hookgate dev`).")
    ] = False
    retry_schedule: Annotated[
        str,
        _doc("Comma-separated delays in seconds between attempts, one entry per attempt: the first "
             "attempt always goes at once (its entry only counts the attempt), each later one waits its "
             "entry ±20 % after the previous. After the last one a delivery is dead."),
    ] = "0,5,300,1800,7200,18000,36000,50400,72000,86400"
    retry_after_max_seconds: Annotated[
        int, _doc("Upper bound on a receiver's `Retry-After` that Hookgate honours.")
    ] = 3600
    delivery_connect_timeout: Annotated[float, _doc("Seconds to connect to an endpoint.")] = 5.0
    delivery_timeout: Annotated[float, _doc("Total seconds for one delivery attempt.")] = 15.0
    delivery_concurrency: Annotated[
        int,
        msgspec.Meta(ge=1),
        _doc("Deliveries in flight per worker process (and its HTTP connection pool). A slot is held "
             "from claim to committed outcome, so a worker needs rate × turnaround of them."),
    ] = 512
    breaker_failure_threshold: Annotated[
        int, _doc("Consecutive failures that open an endpoint's circuit.")
    ] = 5
    breaker_failure_ratio: Annotated[
        float, _doc("Failure ratio over the window that also opens it (with the minimum volume).")
    ] = 0.5
    breaker_window_seconds: Annotated[int, _doc("Window for the failure ratio.")] = 60
    breaker_min_volume: Annotated[int, _doc("Attempts in the window before the ratio counts.")] = 20
    breaker_cooldown_seconds: Annotated[
        float, _doc("First cool-down before a half-open probe; doubles per failed probe.")
    ] = 30.0
    breaker_max_cooldown_seconds: Annotated[float, _doc("Cap on the doubling cool-down.")] = 600.0
    breaker_closed_trust_seconds: Annotated[
        float,
        msgspec.Meta(ge=0),
        _doc("How long a worker sends to an endpoint on Redis's word that its circuit is closed, without "
             "asking before each attempt (its own next failure ends it sooner). 0: ask every time."),
    ] = 1.0
    endpoint_disable_after_open_seconds: Annotated[
        float,
        msgspec.Meta(ge=0),
        _doc("An endpoint whose circuit has stayed open this long is disabled (`endpoint.disabled`) and its "
             "waiting deliveries made dead: held back without spending attempts, they would otherwise wait "
             "for ever. About the default retry schedule's span (3 days); 0: never."),
    ] = 259_200.0
    sweeper_interval_seconds: Annotated[
        float, _doc("How often the sweeper looks for due or orphaned work.")
    ] = 5.0
    lease_seconds: Annotated[
        float, _doc("How long a claimed delivery is held before the sweeper may hand it out again; must exceed the delivery timeout.")
    ] = 60.0

    ingest_limit_critical: Annotated[
        str, _RATE, _doc("Default admission limit for critical events per tenant: `events_per_second/burst`.")
    ] = "100/500"
    ingest_limit_high: Annotated[str, _RATE, _doc("Default admission limit for high-priority events.")] = "50/250"
    ingest_limit_normal: Annotated[str, _RATE, _doc("Default admission limit for normal events.")] = "50/250"
    ingest_limit_low: Annotated[str, _RATE, _doc("Default admission limit for low-priority events.")] = "20/100"
    usage_window_seconds: Annotated[
        int, msgspec.Meta(ge=60), _doc("Length of the fixed windows `GET /api/v1/usage` counts admissions in.")
    ] = 3600
    tenant_delivery_concurrency: Annotated[
        int,
        msgspec.Meta(ge=1),
        _doc("Deliveries one tenant may have in flight across all workers while others wait "
             "(operator override per tenant); idle capacity beyond it may be borrowed."),
    ] = 16
    max_endpoints_per_tenant: Annotated[
        int,
        msgspec.Meta(ge=1),
        _doc("Endpoints (not deleted) one tenant may register. Every event is matched against all of "
             "its tenant's endpoints in the delivery pass that every tenant shares."),
    ] = 100

    replay_batch_size: Annotated[
        int, msgspec.Meta(ge=1, le=5000), _doc("Events (or dead letters) a replay job queues per batch, in one transaction.")
    ] = 500
    replay_max_in_flight: Annotated[
        int,
        msgspec.Meta(ge=1),
        _doc("Undelivered deliveries one replay job may have before it waits: what keeps a million-event "
             "replay from flooding the queue ahead of live traffic."),
    ] = 2000
    stripe_api_base: Annotated[
        str, _doc("Base URL of Stripe's API, which backfills list events from.")
    ] = "https://api.stripe.com"

    anomaly_window_seconds: Annotated[
        int, msgspec.Meta(ge=60), _doc("Length of the anomaly feature windows (a multiple of 60).")
    ] = 60
    anomaly_grace_seconds: Annotated[
        float,
        msgspec.Meta(ge=0),
        _doc("How long after a window closes it is scored, so late requests still count: longer than an ingest "
             "commit may take and still be acknowledged (the statement time limit, 15 s, and a batch's wait)."),
    ] = 20.0
    anomaly_history_windows: Annotated[
        int,
        msgspec.Meta(ge=1),
        _doc("Trailing windows per tenant the detectors compare a window with (a day and an hour of "
             "60 s windows: the volume rule compares with the same hour a day earlier)."),
    ] = 1560
    anomaly_training_windows: Annotated[
        int, msgspec.Meta(ge=1), _doc("Trailing windows per tenant an isolation forest is trained on.")
    ] = 10080
    anomaly_retrain_seconds: Annotated[
        int, msgspec.Meta(ge=60), _doc("How old a tenant's model may get before it is trained again.")
    ] = 21600
    anomaly_quiet_windows: Annotated[
        int,
        msgspec.Meta(ge=1),
        _doc("Windows without a finding after which an open anomaly closes and anomaly.resolved is sent."),
    ] = 10
    anomaly_lapse_lookback_days: Annotated[
        int, msgspec.Meta(ge=1), _doc("How far back a payment failure makes a subscription deletion a silent lapse.")
    ] = 30
    anomaly_retention_days: Annotated[
        int, msgspec.Meta(ge=1), _doc("Days of feature windows, ingest tallies and window claims kept (the training history needs the windows).")
    ] = 8

    dashboard_session_hours: Annotated[
        float, msgspec.Meta(gt=0), _doc("How long a dashboard login lasts (the session cookie and its row).")
    ] = 12.0
    dashboard_login_limit: Annotated[
        str,
        _RATE,
        _doc("Login attempts per email address and per client address: `attempts_per_second/burst` "
             "(the default allows 10 at once, then one every 10 s)."),
    ] = "0.1/10"
    trusted_proxies: Annotated[
        str,
        _doc("Comma-separated addresses or CIDR networks of the reverse proxies in front of the gateway "
             "(an Ingress controller's pods). A request from one of them is from the last address in its "
             "`X-Forwarded-For` that is not itself a trusted proxy, for the dashboard's per-client login "
             "limit; empty: every client is the connection's peer, and `X-Forwarded-For` is ignored."),
    ] = ""
    dashboard_invite_hours: Annotated[
        float, msgspec.Meta(gt=0), _doc("How long a dashboard invitation link stays valid.")
    ] = 168.0

    def __post_init__(self) -> None:
        for name in ("ingest_limit_critical", "ingest_limit_high", "ingest_limit_normal", "ingest_limit_low", "dashboard_login_limit"):
            if float(getattr(self, name).split("/")[0]) <= 0 or int(getattr(self, name).split("/")[1]) < 1:
                raise ValueError(f"{name} needs a rate above 0 and a burst of at least 1")
        self.proxy_networks  # noqa: B018 - a malformed entry fails at start, not at the first login
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        try:  # parsed at start, not at the first failed attempt (which could then never be recorded)
            delays = self.retry_delays
        except ValueError:
            delays = ()
        if not delays or any(delay < 0 for delay in delays):
            raise ValueError("retry_schedule must be comma-separated delays in seconds, none negative (e.g. 0,5,300)")
        if self.anomaly_window_seconds % 60:
            raise ValueError("anomaly_window_seconds must be a multiple of 60 (ingest tallies are per minute)")
        if self.lease_seconds <= self.delivery_timeout:
            # A lease that can lapse mid-attempt hands the delivery out again: every slow receiver gets it twice.
            raise ValueError("lease_seconds must exceed delivery_timeout (a claimed delivery must outlive its attempt)")

    @property
    def proxy_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        """``trusted_proxies`` parsed; ValueError names a malformed entry."""
        return tuple(ip_network(part.strip(), strict=False) for part in self.trusted_proxies.split(",") if part.strip())

    @property
    def is_embedded(self) -> bool:
        return self.mode == "embedded"

    @property
    def retry_delays(self) -> tuple[float, ...]:
        return tuple(float(part) for part in self.retry_schedule.split(",") if part.strip())


# HOOKGATE_* variables that are not settings: read by one command or by the test suite, or set by
# Kubernetes for a Service named hookgate… (service links: <NAME>_SERVICE_HOST, <NAME>_PORT_8000_TCP, …).
_NOT_SETTINGS = frozenset({"USER_PASSWORD", "TEST_DATABASE_URL", "TEST_REDIS_URL", "FAULT_REPORT"})
_SERVICE_LINK = re.compile(r".*_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)")


def settings_from_env(environ: dict[str, str] | os._Environ[str] = os.environ) -> Settings:
    """Build settings from ``HOOKGATE_*`` variables; strings are coerced to the field types. A
    ``HOOKGATE_*`` variable that is no setting is warned about (a typo would otherwise leave the
    default in force without a word), not refused: the Helm chart's schema refuses them."""
    fields = {name for name in Settings.__struct_fields__}
    for key in environ:
        name = key[len(_PREFIX):]
        known = name.lower() in fields or name in _NOT_SETTINGS or _SERVICE_LINK.fullmatch(key)
        if key.startswith(_PREFIX) and not known:
            close = difflib.get_close_matches(name.lower(), fields, n=1)
            hint = f" (did you mean {_PREFIX}{close[0].upper()}?)" if close else ""
            _log.warning("%s is not a Hookgate setting%s: it is ignored", key, hint)
    raw = {
        key[len(_PREFIX):].lower(): value
        for key, value in environ.items()
        if key.startswith(_PREFIX) and key[len(_PREFIX):].lower() in fields
    }
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SystemExit(f"invalid HOOKGATE_* setting: {exc}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return settings_from_env()


def settings_reference() -> str:
    """Markdown table of every setting, its default and meaning."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    defaults = Settings()
    for field in msgspec.structs.fields(Settings):
        meta = [m for m in getattr(field.type, "__metadata__", ()) if isinstance(m, msgspec.Meta)]
        text = next((m.description for m in meta if m.description), "")
        rows.append(f"| `{_PREFIX}{field.name.upper()}` | `{getattr(defaults, field.name)}` | {text} |")
    return "\n".join(rows)
