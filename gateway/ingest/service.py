"""The ingest hot path: verify, parse, classify, admit, store once.

No 2xx leaves before the event row is committed; a storage failure is a 503 so the
provider retries, and nothing is half-written because the event is one INSERT.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from urllib.parse import parse_qs

import msgspec
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.admission.service import Admission
from gateway.database import STORAGE_ERRORS, utcnow
from gateway.events.facts import NONE, Facts, stripe_facts
from gateway.events.priority import Priority, classify
from gateway.events.store import event_row
from gateway.ingest import providers
from gateway.ingest.group_commit import GroupCommit, Stored
from gateway.ingest.tallies import BAD_SIGNATURES, bump
from gateway.limiter import Rate
from gateway.metrics import INGEST, INGEST_LATENCY, labelled
from gateway.problems import Problem
from gateway.tracing import current_span, current_traceparent, trace_id_hex
from tenants.limits import rate_for
from tenants.sources.directory import SourceDirectory, SourceKey
from tenants.sources.models import Source

_log = logging.getLogger("hookgate.ingest")
# Problem kinds on the ingest path → the outcome label of hookgate_ingest_requests_total.
_OUTCOMES = {
    "unknown-source": "unknown_source",
    "invalid-signature": "bad_signature",
    "invalid-json": "invalid_payload",
    "invalid-form": "invalid_payload",
    "rate-limited": "rate_limited",
}
_json = msgspec.json.Decoder()
_MAX_TOKEN = Source.ingest_token.type.length  # the column's: a longer token is no source's
# A stored event is in the event log already; its line is for debugging (one per event under load).
_STORED = frozenset({"accepted", "duplicate"})


class IngestService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        directory: SourceDirectory,
        admission: Admission,
        group_commit: GroupCommit,
        *,
        defaults: Mapping[Priority, Rate],
        tolerance: int,
    ) -> None:
        self._sessions = sessions
        self._directory = directory
        self._admission = admission
        self._group_commit = group_commit
        self._defaults = defaults
        self._tolerance = tolerance
        self._dialect = sessions.kw["bind"].dialect.name

    async def ingest(self, token: str, body: bytes, headers: Mapping[str, str]) -> Stored:
        """Verify and store once; every outcome is counted per tenant and provider."""
        started = time.perf_counter()
        source: SourceKey | None = None
        with current_span("ingest", kind=SpanKind.SERVER) as span:
            try:
                source = await self._find(token)
                span.set_attributes({"hookgate.tenant_id": str(source.tenant_id), "hookgate.source_id": str(source.id)})
                accepted = await self._accept(token, source, body, headers)
            except Exception as exc:
                outcome = _OUTCOMES.get(exc.kind, "error") if isinstance(exc, Problem) else "error"
                span.set_attribute("hookgate.outcome", outcome)
                observe(source, outcome, started, span)
                raise
            outcome = "duplicate" if accepted.duplicate else "accepted"
            span.set_attributes({"hookgate.outcome": outcome, "hookgate.event_id": str(accepted.id)})
            observe(source, outcome, started, span, accepted.id)
        return accepted

    async def _find(self, token: str) -> SourceKey:
        if len(token) > _MAX_TOKEN or not token.isprintable():
            # No source has it (a NUL cannot even be looked up in Postgres), and a miss is cached:
            # 60 KB tokens by the thousand would fill the cache that every tenant's ingest reads.
            raise Problem(404, "unknown-source", "no source has this ingest token")
        try:
            source = await self._directory.find(token)
        except STORAGE_ERRORS:
            raise _unavailable() from None
        if source is None:
            raise Problem(404, "unknown-source", "no source has this ingest token")
        return source

    async def _accept(self, token: str, source: SourceKey, body: bytes, headers: Mapping[str, str]) -> Stored:
        try:
            with current_span("verify"):
                await self._verify(token, source, body, headers)
        except Problem:
            await self._tally_bad_signature(source.tenant_id)
            raise
        if (unwrapped := _unwrapped(source.provider, body, headers)) is not body:
            body, headers = unwrapped, {**headers, "content-type": "application/json"}  # what is stored is the JSON
        payload = _parse(body, headers)
        identity = providers.identify(source.provider, body, payload, headers)
        facts = stripe_facts(identity.type, payload) if source.provider == "stripe" else NONE
        _check_storable(identity, facts)
        priority = classify(identity.type, source.priorities)  # type: ignore[arg-type]
        rate = rate_for(priority, source.limits, self._defaults)
        await self._admission.admit(source.tenant_id, priority, rate, redelivered=providers.redelivers(source.provider))
        return await self._store(source, body, headers, identity, priority, facts)

    async def _verify(self, token: str, source: SourceKey, body: bytes, headers: Mapping[str, str]) -> None:
        try:
            providers.verify(source.provider, body, headers, source.active_secrets(utcnow()), tolerance=self._tolerance)
        except providers.SignatureError as exc:
            fresher = await self._directory.reload_if_stale(token)
            if fresher is None or fresher.secrets == source.secrets:
                raise Problem(400, "invalid-signature", exc.message, reason=exc.reason) from None
            await self._verify(token, fresher, body, headers)

    async def _tally_bad_signature(self, tenant_id: uuid.UUID) -> None:
        """Counted for the bad-signature-probe detector; a failure to count never changes the answer."""
        try:
            async with self._sessions() as session, session.begin():
                await session.execute(bump(self._dialect, tenant_id, BAD_SIGNATURES, utcnow()))
        except STORAGE_ERRORS:
            _log.warning("bad signature not tallied: storage unavailable", exc_info=True)

    async def _store(
        self,
        source: SourceKey,
        body: bytes,
        headers: Mapping[str, str],
        identity: providers.Identity,
        priority: Priority,
        facts: Facts,
    ) -> Stored:
        values = event_row(
            source.tenant_id,
            source.id,
            external_id=identity.external_id,
            type=identity.type,
            created_at=identity.created_at,
            priority=priority,
            body=body,
            headers=providers.kept_headers(source.provider, headers),
            facts=facts,
            trace_context=current_traceparent(),
        )
        try:
            with current_span("store"):
                return await self._group_commit.store(values)
        except STORAGE_ERRORS:
            _log.warning("event not stored: storage unavailable", exc_info=True)
            raise _unavailable() from None


def observe(
    source: SourceKey | None, outcome: str, started: float, span: trace.Span | None = None, event_id: uuid.UUID | None = None
) -> None:
    """Count one ingest request and its latency, and log it: refusals and errors at INFO, stored
    events (accepted, duplicate) at DEBUG."""
    tenant, provider = (str(source.tenant_id), source.provider) if source is not None else ("", "")
    labelled(INGEST, tenant, provider, outcome).inc()
    labelled(INGEST_LATENCY, outcome).observe(time.perf_counter() - started)
    level = logging.DEBUG if outcome in _STORED else logging.INFO
    if not _log.isEnabledFor(level):
        return
    _log.log(
        level,
        "ingest",
        extra={
            "outcome": outcome,
            "tenant_id": tenant or None,
            "provider": provider or None,
            "event_id": str(event_id) if event_id else None,
            "trace_id": trace_id_hex(span) if span is not None else None,
        },
    )


def _media_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").partition(";")[0].strip().lower()


def _unwrapped(provider: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    """The event's JSON. GitHub's default content type is a form whose ``payload`` field holds it:
    the signature covers the form as sent (verified before this), the event is the field's JSON.
    GitHub does not redeliver by itself, so refusing its default would lose every event."""
    if provider != "github" or _media_type(headers) != "application/x-www-form-urlencoded":
        return body
    payload = parse_qs(body, keep_blank_values=True).get(b"payload")
    if not payload:
        raise Problem(400, "invalid-form", "a form-encoded GitHub webhook carries its event in a payload field, and this one has none")
    return payload[0]


def _parse(body: bytes, headers: Mapping[str, str]) -> dict[str, object]:
    try:
        payload = _json.decode(body)
    except msgspec.DecodeError as exc:
        media = _media_type(headers)
        hint = f" (it was sent as {media}: set the webhook's format to JSON)" if media and "json" not in media else ""
        raise Problem(400, "invalid-json", f"the body is not valid JSON: {exc}{hint}") from None
    except RecursionError:  # msgspec's depth limit raises this, not DecodeError
        raise Problem(400, "invalid-json", "the body is JSON nested too deeply") from None
    if not isinstance(payload, dict):
        raise Problem(400, "invalid-json", "the body must be a JSON object")
    return payload


def _check_storable(identity: providers.Identity, facts: Facts) -> None:
    """Postgres text cannot hold NUL: an id, type or customer with one is the sender's mistake (400),
    not a storage failure, and must not fail the group commit it would have joined."""
    fields = {"id": identity.external_id, "type": identity.type, "customer": facts.customer, "card fingerprint": facts.card_fingerprint}
    if bad := [name for name, value in fields.items() if value is not None and "\x00" in value]:
        raise Problem(400, "invalid-json", f"the event's {', '.join(bad)} contains a NUL character (\\u0000), which cannot be stored")


def _unavailable() -> Problem:
    return Problem(503, "storage-unavailable", "the event could not be stored; retry later", headers={"Retry-After": "5"})


