"""Simulated Stripe traffic for many tenants, with labelled incidents, for offline evaluation.

Events are the real Stripe payloads from the fixtures directory with fresh ids, ``created`` times,
customers, card fingerprints and amounts. Normal traffic has daily and weekly seasonality, slow
random drift, and the noise detectors must live with: a few failed charges, refunds, voluntary
cancellations, provider retries (late and duplicate deliveries), the odd bad signature. Incidents
are sized relative to each tenant's volume. Output is streamed in received order, an hour at a time,
so a week of 10,000 events/hour tenants never has to fit in memory.
"""

from __future__ import annotations

import copy
import heapq
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ml.findings import KINDS

# shared/ lies beside the repository (the work tree, or the clean clone CI runs in); `--fixtures` overrides.
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "stripe-events"
START = datetime(2026, 3, 2, tzinfo=timezone.utc)  # a Monday
HOUR = 3600.0
_WARMUP_HOURS = 12  # no incidents before the detectors have some history

# Normal traffic: relative weight of each event type (per fixture type; the rest share _OTHER_WEIGHT).
_MIX = {
    "payment_intent.created": 14,
    "payment_intent.succeeded": 13,
    "charge.succeeded": 13,
    "charge.failed": 0.6,
    "payment_intent.payment_failed": 0.6,
    "charge.captured": 1,
    "charge.updated": 2,
    "invoice.finalized": 6,
    "invoice.paid": 6,
    "invoice.updated": 3,
    "invoice.payment_failed": 0.3,
    "invoice_payment.paid": 2,
    "customer.subscription.created": 1.5,
    "customer.subscription.updated": 4,
    "customer.subscription.deleted": 0.6,
    "customer.updated": 3,
    "checkout.session.completed": 3,
    "charge.refunded": 0.4,
    "refund.created": 0.4,
    "credit_note.created": 0.2,
    "payment_method.attached": 2,
    "setup_intent.succeeded": 1,
    "setup_intent.created": 1,
    "charge.dispute.created": 0.03,
    "radar.early_fraud_warning.created": 0.03,
}
_OTHER_WEIGHT = 0.08
_VISIBLE_LAG = 10.0  # s of backlog lag that sets an event apart from normal delivery (lognormal, median 0.8 s)
_DUPLICATE_RATE = 0.003  # provider re-sends (lost 2xx)
_RETRY_RATE = 0.003  # deliveries that only succeeded on a later retry
_BAD_SIGNATURES_PER_DAY = 0.5
_RETRY_AFTER_DECLINE = 0.3  # declined customers who try another card a minute or two later
_PLACEHOLDER = re.compile(r'"@@(\w+)@@"')


@dataclass
class _Template:
    """A fixture pre-serialised with placeholders, so rendering an event is a string join."""

    parts: list[str]
    fields: list[str]

    @classmethod
    def of(cls, event: dict[str, Any]) -> _Template:
        event = copy.deepcopy(event)
        event["id"] = "@@id@@"
        event["created"] = "@@created@@"
        obj = event["data"]["object"]
        if "customer" in obj:
            obj["customer"] = "@@customer@@"
        card = (obj.get("payment_method_details") or {}).get("card")
        if isinstance(card, dict) and "fingerprint" in card:
            card["fingerprint"] = "@@fingerprint@@"
        for key in ("amount", "amount_refunded", "total"):
            if key in obj:
                obj[key] = f"@@{key}@@"
        pieces = _PLACEHOLDER.split(json.dumps(event, separators=(",", ":")))
        return cls(pieces[0::2], pieces[1::2])

    def render(self, values: dict[str, Any]) -> str:
        out = [self.parts[0]]
        for name, part in zip(self.fields, self.parts[1:], strict=True):
            out.append(_json(values.get(name)))
            out.append(part)
        return "".join(out)


def _json(value: Any) -> str:
    if value is None:
        return "null"
    return f'"{value}"' if isinstance(value, str) else str(value)


def load_templates(directory: Path = FIXTURES) -> dict[str, _Template]:
    """One template per event type; ``invoice.payment_failed`` (no fixture) is derived from ``invoice.paid``."""
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise FileNotFoundError(f"no Stripe event fixtures (*.json) in {directory}; pass --fixtures DIR")
    templates = {}
    for path in paths:
        event = json.loads(path.read_text())
        templates[event["type"]] = _Template.of(event)
        if event["type"] == "invoice.paid":
            failed = copy.deepcopy(event)
            failed["type"] = "invoice.payment_failed"
            failed["data"]["object"].update(status="open", paid=False, attempt_count=1)
            templates["invoice.payment_failed"] = _Template.of(failed)
    return templates


@dataclass
class Tenant:
    name: str
    peak_per_hour: float
    tz_shift: float  # hours: where the tenant's customers' day peaks
    weekend_factor: float
    price: float  # typical charge, minor units
    customers: int
    drift: np.ndarray  # per-hour multiplicative drift

    def rate_per_minute(self, t: np.ndarray) -> np.ndarray:
        """Expected events per minute at epoch seconds ``t``: daily curve x weekly factor x drift."""
        hours = (t - START.timestamp()) / HOUR
        local = (hours + self.tz_shift) % 24
        daily = 0.2 + 0.8 * ((1 - np.cos(2 * np.pi * (local - 4) / 24)) / 2) ** 1.5
        weekday = (((hours + self.tz_shift) // 24) % 7).astype(int)
        weekly = np.where(weekday >= 5, self.weekend_factor, 1.0)
        drift = self.drift[np.clip(hours.astype(int), 0, len(self.drift) - 1)]
        return self.peak_per_hour / 60 * daily * weekly * drift


@dataclass
class Incident:
    tenant: str
    kind: str
    start: float
    end: float
    params: dict[str, float] = field(default_factory=dict)
    observed: float | None = None  # received time of the first request the incident changed

    def label(self) -> dict[str, str]:
        """The label starts at the first request that shows the incident (its start if none does, or if
        it shows as an absence: a volume drop); nothing in the stream differs from normal before it."""
        start = self.start if self.observed is None else min(self.observed, self.end)
        return {"tenant": self.tenant, "kind": self.kind, "start": _iso(start), "end": _iso(self.end)}

    def saw(self, received: float) -> None:
        self.observed = received if self.observed is None else min(self.observed, received)


_Line = tuple[float, int, str]  # received, sequence (a stable tie-break), the JSON line
_FAILED = {"charge.succeeded": "charge.failed", "payment_intent.succeeded": "payment_intent.payment_failed"}


class Simulation:
    def __init__(
        self, days: int, tenants: int, seed: int, max_per_hour: float = 10_000, templates: dict[str, _Template] | None = None
    ) -> None:
        self.days = days
        self.max_per_hour = max_per_hour
        self.rng = np.random.default_rng(seed)
        self.templates = templates or load_templates()
        self.types = list(self.templates)
        weights = np.array([_MIX.get(name, _OTHER_WEIGHT) for name in self.types])
        self.weights = weights / weights.sum()
        self._failable = np.array([i for i, name in enumerate(self.types) if name in _FAILED])
        self.tenants = [self._tenant(i, tenants) for i in range(tenants)]
        self.incidents = self._schedule()
        self._seq = 0
        self._extra: dict[int, list[_Line]] = {}  # incident lines by the hour they were created in
        for incident in self.incidents:
            _INJECT[incident.kind](self, incident)

    def _tenant(self, i: int, count: int) -> Tenant:
        rng = self.rng
        peak = 10 * (self.max_per_hour / 10) ** (i / (count - 1)) if count > 1 else self.max_per_hour
        drift = np.exp(np.convolve(rng.normal(0, 0.08, self.days * 24 + 6), np.ones(6) / 6**0.5, mode="valid"))
        return Tenant(
            name=f"t{i:02d}",
            peak_per_hour=peak,
            tz_shift=float(rng.uniform(-6, 6)),
            weekend_factor=float(rng.uniform(0.5, 1.1)),
            price=float(np.exp(rng.uniform(np.log(500), np.log(10_000)))),
            customers=int(max(50, 20 * peak)),
            drift=drift[: self.days * 24 + 1],
        )

    def _schedule(self) -> list[Incident]:
        """About 0.6 incidents per tenant-day, every kind at least once, never overlapping within a tenant."""
        total = max(len(KINDS), round(0.6 * len(self.tenants) * self.days))
        kinds = [KINDS[i % len(KINDS)] for i in range(total)]
        self.rng.shuffle(kinds)
        busy: dict[str, list[tuple[float, float]]] = {t.name: [] for t in self.tenants}
        incidents = []
        horizon = START.timestamp() + self.days * 86400
        for n, kind in enumerate(kinds):
            tenant = self.tenants[(n + int(self.rng.integers(len(self.tenants)))) % len(self.tenants)]
            for _ in range(200):
                duration = _DURATION[kind](self.rng)
                start = (
                    START.timestamp()
                    + _WARMUP_HOURS * HOUR
                    + float(self.rng.uniform(0, (self.days * 24 - _WARMUP_HOURS - 8) * HOUR))
                )
                if start + duration + HOUR > horizon:
                    continue
                if all(start > e + 2 * HOUR or start + duration + 2 * HOUR < s for s, e in busy[tenant.name]):
                    busy[tenant.name].append((start, start + duration))
                    incidents.append(Incident(tenant.name, kind, start, start + duration))
                    break
        return sorted(incidents, key=lambda i: i.start)

    def lines(self) -> Iterator[str]:
        """Every received request, in received order."""
        pending: list[_Line] = []
        for hour in range(self.days * 24):
            hour_start = START.timestamp() + hour * HOUR
            for tenant in self.tenants:
                for line in self._normal_hour(tenant, hour_start):
                    heapq.heappush(pending, line)
            for line in self._extra.pop(hour, []):
                heapq.heappush(pending, line)
            while pending and pending[0][0] < hour_start + HOUR:
                yield heapq.heappop(pending)[2]
        # what is still pending arrives after the capture ends

    def _normal_hour(self, tenant: Tenant, hour_start: float) -> Iterator[_Line]:
        rng = self.rng
        minutes = hour_start + 60 * np.arange(60)
        rates = tenant.rate_per_minute(minutes) * self._volume_factor(tenant.name, minutes)
        counts = rng.poisson(rates)
        created = np.repeat(minutes, counts) + rng.uniform(0, 60, counts.sum())
        types = rng.choice(len(self.types), size=len(created), p=self.weights)
        lags = rng.lognormal(np.log(0.8), 0.6, len(created))
        retried = rng.random(len(created)) < _RETRY_RATE
        lags[retried] += rng.uniform(60, 3600, retried.sum())
        backlog = self._incident_lag(tenant.name, created)
        lags += backlog
        failing = self._failure_probability(tenant.name, created)
        fails = rng.random(len(created)) < failing
        failed_by_incident = fails & np.isin(types, self._failable)
        self._observe(tenant.name, "webhook_lag", created, created + lags, backlog >= _VISIBLE_LAG)
        self._observe(tenant.name, "failure_spike", created, created + lags, failed_by_incident)
        duplicated = rng.random(len(created)) < _DUPLICATE_RATE
        customers = rng.integers(tenant.customers, size=len(created))
        cards = customers + tenant.customers * (rng.random(len(created)) < 0.1)  # some customers have a second card
        amounts = (tenant.price * rng.lognormal(0, 0.6, len(created))).astype(int)
        for i, when in enumerate(created.tolist()):
            event_type = self.types[types[i]]
            if fails[i]:
                event_type = _FAILED.get(event_type, event_type)
            amount = int(amounts[i])
            values = {
                "customer": f"cus_{tenant.name}_{customers[i]}",
                "fingerprint": f"fp{tenant.name}x{cards[i]}",
                "amount": amount,
            }
            text = self._event(event_type, when, {**values, "amount_refunded": amount, "total": amount})
            yield self._line(tenant.name, when + lags[i], text)
            if duplicated[i]:
                yield self._line(tenant.name, when + lags[i] + float(rng.uniform(5, 600)), text)
            if event_type == "charge.failed" and rng.random() < _RETRY_AFTER_DECLINE:
                retry = when + float(rng.uniform(30, 180))
                outcome = "charge.failed" if rng.random() < max(0.4, failing[i]) else "charge.succeeded"
                values["fingerprint"] = f"fp{tenant.name}y{customers[i]}"
                yield self._line(
                    tenant.name,
                    retry + lags[i],
                    self._event(outcome, retry, {**values, "amount_refunded": amount, "total": amount}),
                )
        for _ in range(rng.poisson(_BAD_SIGNATURES_PER_DAY / 24)):
            when = hour_start + float(rng.uniform(0, HOUR))
            yield self._line(tenant.name, when, self._event(self._random_type(), when, self._party(tenant)), valid=False)

    def _party(self, tenant: Tenant) -> dict[str, Any]:
        """Customer, card and amount of an ordinary event of this tenant."""
        customer = int(self.rng.integers(tenant.customers))
        amount = int(tenant.price * self.rng.lognormal(0, 0.6))
        return {
            "customer": f"cus_{tenant.name}_{customer}",
            "fingerprint": f"fp{tenant.name}x{customer}",
            "amount": amount,
            "amount_refunded": amount,
            "total": amount,
        }

    def _event(self, event_type: str, created: float, values: dict[str, Any]) -> str:
        return self.templates[event_type].render({"id": f"evt_{self._next()}", "created": int(created), **values})

    def _line(self, tenant: str, received: float, event_text: str, *, valid: bool = True) -> _Line:
        text = f'{{"tenant":"{tenant}","received_at":"{_iso(received)}","event":{event_text},"signature_valid":{"true" if valid else "false"}}}'
        return received, self._next(), text

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _random_type(self) -> str:
        return self.types[int(self.rng.choice(len(self.types), p=self.weights))]

    def _tenant_named(self, name: str) -> Tenant:
        return next(t for t in self.tenants if t.name == name)

    def _active(self, tenant: str, kind: str) -> list[Incident]:
        return [i for i in self.incidents if i.tenant == tenant and i.kind == kind]

    def _volume_factor(self, tenant: str, t: np.ndarray) -> np.ndarray:
        factor = np.ones_like(t)
        for incident in self._active(tenant, "volume_drop"):
            factor[(t >= incident.start) & (t < incident.end)] = incident.params["factor"]
        return factor

    def _observe(self, tenant: str, kind: str, created: np.ndarray, received: np.ndarray, changed: np.ndarray) -> None:
        """Note, per incident of ``kind``, the first received event (created during it) that it ``changed``."""
        for incident in self._active(tenant, kind):
            inside = changed & (created >= incident.start) & (created < incident.params.get("created_end", incident.end))
            if inside.any():
                incident.saw(float(received[inside].min()))

    def _incident_lag(self, tenant: str, created: np.ndarray) -> np.ndarray:
        """A delivery backlog: lag grows one second per second up to its cap, for events created in the incident."""
        lag = np.zeros_like(created)
        for incident in self._active(tenant, "webhook_lag"):
            inside = (created >= incident.start) & (created < incident.params["created_end"])
            lag[inside] = np.minimum(incident.params["max_lag"], created[inside] - incident.start)
        return lag

    def _failure_probability(self, tenant: str, created: np.ndarray) -> np.ndarray:
        probability = np.zeros_like(created)
        for incident in self._active(tenant, "failure_spike"):
            probability[(created >= incident.start) & (created < incident.end)] = incident.params["failure"]
        return probability

    def _add(
        self, tenant: str, created: float, received: float, text: str, *, valid: bool = True, shows: Incident | None = None
    ) -> None:
        """Queue an injected request; ``shows``: the incident it makes visible."""
        hour = int((created - START.timestamp()) // HOUR)
        self._extra.setdefault(hour, []).append(self._line(tenant, received, text, valid=valid))
        if shows is not None:
            shows.saw(received)

    def _expected_per_minute(self, incident: Incident) -> float:
        return float(self._tenant_named(incident.tenant).rate_per_minute(np.array([incident.start]))[0])


def _inject_card_testing(sim: Simulation, incident: Incident) -> None:
    """Stolen cards tried in quick succession, mostly as a guest, mostly declined, small amounts."""
    rng, tenant = sim.rng, sim._tenant_named(incident.tenant)
    per_minute = max(3.0, float(rng.uniform(0.3, 1.0)) * sim._expected_per_minute(incident))
    count = rng.poisson(per_minute * (incident.end - incident.start) / 60)
    attacker = f"cus_{tenant.name}_attacker{sim._next()}" if rng.random() < 0.3 else None
    for when in np.sort(rng.uniform(incident.start, incident.end, count)):
        event_type = "charge.succeeded" if rng.random() < 0.1 else "charge.failed"
        values = {"customer": attacker, "fingerprint": f"fpstolen{sim._next()}", "amount": int(rng.integers(50, 500))}
        sim._add(
            tenant.name, when, when + float(rng.lognormal(np.log(0.8), 0.6)), sim._event(event_type, when, values), shows=incident
        )


def _inject_silent_lapse(sim: Simulation, incident: Incident) -> None:
    """Subscriptions deleted for customers whose invoice payment failed hours or days earlier (dunning gave up)."""
    rng, tenant = sim.rng, sim._tenant_named(incident.tenant)
    count = max(3, round(float(rng.uniform(0.5, 1.5)) * math.sqrt(tenant.peak_per_hour / 10)))
    earliest = max(START.timestamp(), incident.start - 72 * HOUR)
    for _ in range(count):
        party = sim._party(tenant)
        failed = float(rng.uniform(earliest, incident.start - 600))
        deleted = float(rng.uniform(incident.start, incident.end))
        sim._add(tenant.name, failed, failed + 1, sim._event("invoice.payment_failed", failed, party))
        sim._add(tenant.name, deleted, deleted + 1, sim._event("customer.subscription.deleted", deleted, party), shows=incident)


def _inject_duplicate_flood(sim: Simulation, incident: Incident) -> None:
    """One to three events re-sent over and over (a provider or proxy stuck retrying)."""
    rng, tenant = sim.rng, sim._tenant_named(incident.tenant)
    per_minute = max(2.0, float(rng.uniform(0.1, 0.5)) * sim._expected_per_minute(incident))
    texts = []
    for _ in range(int(rng.integers(1, 4))):
        text = sim._event(sim._random_type(), incident.start - 1, sim._party(tenant))
        sim._add(tenant.name, incident.start - 1, incident.start, text)
        texts.append(text)
    for when in rng.uniform(incident.start, incident.end, rng.poisson(per_minute * (incident.end - incident.start) / 60)):
        sim._add(tenant.name, incident.start, float(when), texts[int(rng.integers(len(texts)))], shows=incident)


def _inject_webhook_lag(sim: Simulation, incident: Incident) -> None:
    """A delivery backlog: see ``Simulation._incident_lag``; the label runs until the backlog has drained."""
    max_lag = float(sim.rng.uniform(300, 1800))
    incident.params.update(max_lag=max_lag, created_end=incident.end)
    incident.end += max_lag


def _inject_negative_invoice(sim: Simulation, incident: Incident) -> None:
    """A negative invoice (a pricing or proration bug) or a refund far beyond the usual, 30-150x the typical charge."""
    rng, tenant = sim.rng, sim._tenant_named(incident.tenant)
    amount = int(tenant.price * float(rng.uniform(30, 150)))
    party = sim._party(tenant)
    if rng.random() < 0.5:
        steps = [
            ("invoice.finalized", {"total": -amount}),
            ("invoice.paid", {"total": -amount}),
            ("credit_note.created", {"total": amount}),
        ]
    else:
        steps = [("charge.refunded", {"amount": amount, "amount_refunded": amount}), ("refund.created", {"amount": amount})]
    for offset, (event_type, values) in enumerate(steps):
        when = incident.start + 40 * offset
        sim._add(tenant.name, when, when + 1, sim._event(event_type, when, {**party, **values}), shows=incident)


def _inject_volume_drop(sim: Simulation, incident: Incident) -> None:
    """Traffic stops (an integration broke) or falls to a fraction of normal (a region or product down)."""
    factor = 0.0 if sim.rng.random() < 0.5 else float(sim.rng.uniform(0.03, 0.2))
    incident.params["factor"] = factor


def _inject_failure_spike(sim: Simulation, incident: Incident) -> None:
    """A processor or bank outage: ordinary customers' charges fail at 40-90%."""
    incident.params["failure"] = float(sim.rng.uniform(0.4, 0.9))


def _inject_bad_signature(sim: Simulation, incident: Incident) -> None:
    """Someone probing the ingest URL with forged or stale signatures."""
    rng, tenant = sim.rng, sim._tenant_named(incident.tenant)
    per_minute = float(rng.uniform(2, 20))
    for when in rng.uniform(incident.start, incident.end, rng.poisson(per_minute * (incident.end - incident.start) / 60)):
        sim._add(
            tenant.name,
            float(when),
            float(when),
            sim._event(sim._random_type(), float(when), sim._party(tenant)),
            valid=False,
            shows=incident,
        )


_INJECT: dict[str, Callable[[Simulation, Incident], None]] = {
    "card_testing": _inject_card_testing,
    "failure_spike": _inject_failure_spike,
    "silent_lapse": _inject_silent_lapse,
    "duplicate_flood": _inject_duplicate_flood,
    "webhook_lag": _inject_webhook_lag,
    "negative_invoice": _inject_negative_invoice,
    "volume_drop": _inject_volume_drop,
    "bad_signature": _inject_bad_signature,
}
_MINUTE = 60.0
_DURATION: dict[str, Callable[[np.random.Generator], float]] = {
    "card_testing": lambda rng: float(rng.uniform(5, 30)) * _MINUTE,
    "failure_spike": lambda rng: float(rng.uniform(30, 240)) * _MINUTE,
    "silent_lapse": lambda rng: float(rng.uniform(5, 20)) * _MINUTE,
    "duplicate_flood": lambda rng: float(rng.uniform(5, 30)) * _MINUTE,
    "webhook_lag": lambda rng: float(rng.uniform(15, 90)) * _MINUTE,
    "negative_invoice": lambda rng: 3 * _MINUTE,
    "volume_drop": lambda rng: float(rng.uniform(60, 360)) * _MINUTE,
    "bad_signature": lambda rng: float(rng.uniform(5, 30)) * _MINUTE,
}


def simulate(
    days: int, tenants: int, seed: int, out: Path, max_per_hour: float = 10_000, fixtures: Path = FIXTURES
) -> tuple[int, int]:
    """Write ``events.jsonl`` and ``labels.jsonl`` into ``out``; returns (lines, incidents).

    Tenants' peak volumes are spread log-uniformly from 10 events/hour to ``max_per_hour``.
    """
    out.mkdir(parents=True, exist_ok=True)
    sim = Simulation(days, tenants, seed, max_per_hour, load_templates(fixtures))
    count = 0
    with (out / "events.jsonl").open("w") as events:
        for line in sim.lines():
            events.write(line)
            events.write("\n")
            count += 1
    with (out / "labels.jsonl").open("w") as labels:
        for incident in sim.incidents:
            labels.write(json.dumps(incident.label()) + "\n")
    return count, len(sim.incidents)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")
