"""The anomaly monitor: when a window closes, score every tenant's window and keep incidents.

It runs in every worker (and in the embedded app); an insert into ``anomaly_runs`` claims each
window, in the same transaction as its results, so exactly one process scores it and a process
that dies mid-window leaves it to the next. Detection needs only the database.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.background import BackgroundLoop
from gateway.database import dialect_insert, utcnow
from gateway.ingest.tallies import IngestTally
from gateway.metrics import ANOMALIES, ANOMALY_WINDOW_SCORED
from gateway.settings import Settings
from ml.baseline import Baseline, refresh_block, windows_before
from ml.detection import Finding, detect
from ml.features import Window
from ml.forest import TenantModel, score_many
from ml.incidents import Incident, fold
from ml.online import alerts
from ml.online.models import Anomaly, FeatureWindowRow, TenantModelRow, WindowRun
from ml.online.training import retrain
from ml.online.windows import window_features
from ml.rules import Thresholds
from tenants.models import Tenant

_log = logging.getLogger("hookgate.anomalies")
RETRAIN_CHECK_SECONDS = 600  # how often stale models are looked for (arq cron in production)
CATCH_UP_WINDOWS = 60  # the most windows scored late after a gap; older ones stay unscored


class AnomalyMonitor:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings, *, retrains: bool) -> None:
        self._sessions = sessions
        self._settings = settings
        self._retrains = retrains  # embedded mode: no arq cron, so the monitor retrains models itself
        self._retrained = 0.0
        self._seconds = settings.anomaly_window_seconds
        self._history: dict[uuid.UUID, deque[Window]] = {}
        self._models: dict[uuid.UUID, tuple[datetime, TenantModel]] = {}
        self._baselines: dict[uuid.UUID, tuple[datetime, Baseline]] = {}
        self._scored_until = 0.0  # end of the newest window this process scored (the stall gauge)
        self._loop = BackgroundLoop(self._run, name="hookgate-anomalies")

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    def last_closed(self, now: datetime) -> datetime:
        """The start of the latest window that closed at least the grace period ago."""
        settled = now.timestamp() - self._settings.anomaly_grace_seconds
        return datetime.fromtimestamp((settled // self._seconds - 1) * self._seconds, UTC)

    async def _run(self) -> None:
        scored: datetime | None = None  # the latest window this loop saw scored, with none missing before it
        while not self._loop.stopping:
            start = self.last_closed(utcnow())
            if start != scored:
                try:
                    if await self._score_each(await self._unscored(start)):
                        scored = start
                    if self._retrains and time.monotonic() - self._retrained >= RETRAIN_CHECK_SECONDS:
                        self._retrained = time.monotonic()
                        await retrain(self._sessions, self._settings)
                except Exception:  # noqa: BLE001 - the database may be down; try again shortly
                    _log.warning("anomaly monitor pass failed; retrying", exc_info=True)
            next_due = start.timestamp() + 2 * self._seconds + self._settings.anomaly_grace_seconds
            await self._loop.pause(min(5.0, max(0.2, next_due - time.time())))

    async def _unscored(self, latest: datetime) -> list[datetime]:
        """The windows up to ``latest``, oldest first, that no process has scored, within the last
        ``CATCH_UP_WINDOWS``: after a gap (the database down past a window's end, every worker
        down, a restart) the missed ones are scored late, none from before the first window ever
        scored. A window left unscored is never looked at, and would break the run of windows its
        tenants' detectors read."""
        step = timedelta(seconds=self._seconds)
        async with self._sessions() as session:
            earliest = await session.scalar(select(func.min(WindowRun.window_start)))
            if earliest is None:  # a new installation: nothing was missed
                return [latest]
            first = max(latest - (CATCH_UP_WINDOWS - 1) * step, earliest)
            done = set(await session.scalars(select(WindowRun.window_start).where(WindowRun.window_start >= first)))
        count = int((latest - first) / step) + 1
        return [due for due in (first + n * step for n in range(count)) if due not in done]

    async def _score_each(self, windows: list[datetime]) -> bool:
        """Score each window; one that fails is tried again on the next pass (while it is within
        reach) and does not hold up the newer ones. True if none failed."""
        failed: list[datetime] = []
        for due in windows:
            try:
                await self.score_window(due)
            except Exception:  # noqa: BLE001 - the database may be down, or this window's data unscorable
                if not failed:
                    _log.warning("anomaly window %s not scored; retrying", due.isoformat(), exc_info=True)
                failed.append(due)
        if len(failed) > 1:
            _log.warning("%d anomaly windows not scored, %s to %s; retrying", len(failed), failed[0].isoformat(), failed[-1].isoformat())
        return not failed

    async def score_window(self, start: datetime) -> int | None:
        """Score the window starting at ``start``; None if another process already did."""
        async with self._sessions() as session, session.begin():
            claim = dialect_insert(session.bind.dialect.name)(WindowRun).values(window_start=start, finished_at=utcnow(), tenants=0)
            if await session.scalar(claim.on_conflict_do_nothing().returning(WindowRun.window_start)) is None:
                return None
            carried = await self._carried(session, start)
            windows = await window_features(
                session,
                start,
                self._seconds,
                lapse_lookback=timedelta(days=self._settings.anomaly_lapse_lookback_days),
                tenants=carried,
            )
            opened: list[tuple[str, str]] = []  # (detector, severity) of the anomalies opened, counted once committed
            if windows:
                await self._detect(session, start, windows, carried, opened)
            await _prune(session, start - timedelta(days=self._settings.anomaly_retention_days))
            await session.execute(
                WindowRun.__table__.update().where(WindowRun.window_start == start).values(tenants=len(windows), finished_at=utcnow())
            )
        for detector, severity in opened:  # a window rolled back and scored again must not count them twice
            ANOMALIES.labels(detector=detector, severity=severity).inc()
        self._scored_until = max(self._scored_until, (start + timedelta(seconds=self._seconds)).timestamp())  # a late catch-up is older
        ANOMALY_WINDOW_SCORED.set(self._scored_until)
        return len(windows)

    async def _carried(self, session: AsyncSession, start: datetime) -> dict[uuid.UUID, datetime]:
        """Tenants with a window in the latest one stored before this and who sent something within
        the history span, with when they last did. The latest stored, not the one just before:
        after a window no one scored, silent tenants would otherwise stop being watched (and
        their open anomalies would never close)."""
        previous = await session.scalar(select(func.max(FeatureWindowRow.start)).where(FeatureWindowRow.start < start))
        if previous is None:
            return {}
        horizon = start - timedelta(seconds=self._seconds * self._settings.anomaly_history_windows)
        rows = await session.execute(
            select(FeatureWindowRow.tenant_id, FeatureWindowRow.last_active).where(
                FeatureWindowRow.start == previous, FeatureWindowRow.last_active >= horizon
            )
        )
        return {tenant_id: last_active for tenant_id, last_active in rows}

    async def _detect(
        self,
        session: AsyncSession,
        start: datetime,
        windows: dict[uuid.UUID, Window],
        last_active: dict[uuid.UUID, datetime],
        opened: list[tuple[str, str]],
    ) -> None:
        tenant_ids = list(windows)
        histories = await self._histories(session, tenant_ids, start)
        models = await self._current_models(session, tenant_ids)
        thresholds = await _thresholds(session, tenant_ids)
        open_incidents = {
            (row.tenant_id, row.kind): row
            for row in await session.scalars(select(Anomaly).where(Anomaly.tenant_id.in_(tenant_ids), Anomaly.ended_at.is_(None)))
        }
        scored = score_many({str(tenant_id): model for tenant_id, model in models.items()}, list(windows.values()))
        rows = []
        for tenant_id, window in windows.items():
            model = models.get(tenant_id)
            history = list(histories[tenant_id])
            try:
                findings = detect(
                    window, history, thresholds[tenant_id], model, baseline=self._baseline(tenant_id, window, history, thresholds[tenant_id]), scored=scored.get(window.tenant)
                )
            except Exception:  # noqa: BLE001 - one tenant's data must not leave every tenant's window unscored
                _log.exception("tenant %s: window %s not checked for anomalies", tenant_id, start.isoformat())
                findings = []
            await self._keep_incidents(session, tenant_id, window, findings, open_incidents, opened)
            active = window.start if window.events else last_active.get(tenant_id, window.start)
            rows.append({"tenant_id": tenant_id, "start": start, "seconds": self._seconds, "features": FeatureWindowRow.features_of(window), "last_active": active})
            histories[tenant_id].append(window)
        await session.execute(FeatureWindowRow.__table__.insert(), rows)

    async def _keep_incidents(
        self,
        session: AsyncSession,
        tenant_id: uuid.UUID,
        window: Window,
        findings: Sequence[Finding],
        open_incidents: dict[tuple[uuid.UUID, str], Anomaly],
        opened: list[tuple[str, str]],
    ) -> None:
        """One open anomaly per (tenant, kind): opened by a finding (added to ``opened``), updated, closed when quiet."""
        strongest: dict[str, Finding] = {}
        for finding in findings:
            if finding.kind not in strongest or finding.score > strongest[finding.kind].score:
                strongest[finding.kind] = finding
        kinds = set(strongest) | {kind for (tenant, kind) in open_incidents if tenant == tenant_id}
        for kind in sorted(kinds):
            row = open_incidents.get((tenant_id, kind))
            incident, change = fold(
                _incident(row) if row is not None else None,
                strongest.get(kind),
                window,
                quiet_windows=self._settings.anomaly_quiet_windows,
            )
            if incident is None or change == "unchanged":
                continue
            if row is None:
                row = Anomaly(tenant_id=tenant_id, kind=kind)
                session.add(row)
            _copy(incident, row)
            row.windows = 1 if change == "opened" else row.windows + (change == "updated")
            await session.flush()
            if change == "opened":
                opened.append((row.detector, row.severity))
                await alerts.detected(session, row)
            elif change == "closed":
                await alerts.resolved(session, row)

    def _baseline(self, tenant_id: uuid.UUID, window: Window, history: list[Window], thresholds: Thresholds) -> Baseline:
        """What "typical" is for the tenant, once per block of windows (``refresh_block``), from the
        history before the block: the same in every worker, whichever scored the windows before."""
        block = refresh_block(window.start, self._seconds)
        cached = self._baselines.get(tenant_id)
        if cached is None or cached[0] != block:
            cached = (block, Baseline.from_history(windows_before(history, block), block, thresholds.card_testing_cards_per_customer))
            self._baselines[tenant_id] = cached
        return cached[1]

    async def _histories(self, session: AsyncSession, tenant_ids: Iterable[uuid.UUID], start: datetime) -> dict[uuid.UUID, deque[Window]]:
        """Each tenant's trailing windows, from this process's cache when it scored the last
        window too, else from the database."""
        size = self._settings.anomaly_history_windows
        previous = start - timedelta(seconds=self._seconds)
        stale = [t for t in tenant_ids if not (t in self._history and self._history[t] and self._history[t][-1].start == previous)]
        for tenant_id in stale:
            self._history[tenant_id] = deque(maxlen=size)
        if stale:
            rows = await session.scalars(
                select(FeatureWindowRow)
                .where(
                    FeatureWindowRow.tenant_id.in_(stale),
                    FeatureWindowRow.start >= start - timedelta(seconds=self._seconds * size),
                    FeatureWindowRow.start < start,  # a window scored late comes before ones scored already
                )
                .order_by(FeatureWindowRow.start)
            )
            for row in rows:
                self._history[row.tenant_id].append(row.window())
        return {tenant_id: self._history[tenant_id] for tenant_id in tenant_ids}

    async def _current_models(self, session: AsyncSession, tenant_ids: list[uuid.UUID]) -> dict[uuid.UUID, TenantModel]:
        """The tenants' latest trained models, loaded again only when retrained. One that does not
        load (trained by a release with another feature set, or damaged) is deleted, so that the
        retrain job refits it first, and its tenant gets the rules alone meanwhile: one tenant's
        model must not stop every tenant's window."""
        rows = await session.execute(select(TenantModelRow.tenant_id, TenantModelRow.trained_at).where(TenantModelRow.tenant_id.in_(tenant_ids)))
        versions = {tenant_id: trained_at for tenant_id, trained_at in rows}
        changed = [t for t, at in versions.items() if t not in self._models or self._models[t][0] != at]
        for row in await session.scalars(select(TenantModelRow).where(TenantModelRow.tenant_id.in_(changed))) if changed else ():
            try:
                self._models[row.tenant_id] = (row.trained_at, TenantModel.loads(row.blob))
            except Exception:  # noqa: BLE001 - whatever is wrong with it, a refit replaces it
                _log.warning("tenant %s: its anomaly model does not load; deleted for a refit", row.tenant_id, exc_info=True)
                await session.delete(row)
                del versions[row.tenant_id]
        return {t: self._models[t][1] for t in versions}



async def _prune(session: AsyncSession, before: datetime) -> None:
    """Retention: feature windows, ingest tallies and window claims older than ``before`` (one index
    range each). Anomalies stay: they are the tenant's record."""
    await session.execute(delete(FeatureWindowRow).where(FeatureWindowRow.start < before))
    await session.execute(delete(IngestTally).where(IngestTally.minute < before))
    await session.execute(delete(WindowRun).where(WindowRun.window_start < before))


async def _thresholds(session: AsyncSession, tenant_ids: list[uuid.UUID]) -> dict[uuid.UUID, Thresholds]:
    rows = await session.execute(select(Tenant.id, Tenant.anomaly_thresholds).where(Tenant.id.in_(tenant_ids)))
    overrides = {tenant_id: values for tenant_id, values in rows}
    return {tenant_id: _tenant_thresholds(tenant_id, overrides.get(tenant_id)) for tenant_id in tenant_ids}


def _tenant_thresholds(tenant_id: uuid.UUID, overrides: dict[str, float] | None) -> Thresholds:
    """A tenant's thresholds; the defaults if its stored ones are no longer valid (one tenant's
    settings must not stop every tenant's window from being scored)."""
    try:
        return Thresholds.with_overrides(overrides)
    except ValueError as exc:
        _log.warning("tenant %s: stored anomaly thresholds ignored, defaults used: %s", tenant_id, exc)
        return Thresholds()


def _incident(row: Anomaly) -> Incident:
    return Incident(
        tenant=str(row.tenant_id),
        kind=row.kind,
        detector=row.detector,
        severity=row.severity,
        score=row.score,
        start=row.started_at,
        last_seen=row.last_seen_at,
        end=row.ended_at,
        explanation=list(row.explanation),
        features=dict(row.features),
    )


def _copy(incident: Incident, row: Anomaly) -> None:
    row.detector, row.severity, row.score = incident.detector, incident.severity, incident.score
    row.started_at, row.last_seen_at, row.ended_at = incident.start, incident.last_seen, incident.end
    row.explanation, row.features = list(incident.explanation), dict(incident.features)
    row.updated_at = utcnow()
