"""One window in, findings out: the rules, then the tenant's isolation forest for what they miss.

At most one finding per incident kind: when a rule and the forest agree on a kind, the rule's
finding stands (its explanation is the more specific one). The forest's findings are for windows
no rule flagged, labelled with the kind its most deviant feature points to. A forest finding on
amounts is dropped when the rules ran: the negative-invoice rule judges every amount, against the
tenant's p90 over its whole history once it has one, against its charges before, and against an
absolute floor before that, where the forest knows only the range of the day or week it was fitted
on (a slow tenant's handful of refunds, which the next ordinary one can leave: on five held-out
seeds the forest made 13 amount findings that the rules did not, all on a slow tenant's second
day, and all false alarms). A volume drop is dropped while the webhook-lag rule fires: a backlog
delays events, which lowers the received count for a while.
"""

from __future__ import annotations

from collections.abc import Sequence

from ml.baseline import Baseline
from ml.features import Window
from ml.findings import Finding
from ml.forest import TenantModel
from ml.rules import RECENT_WINDOWS, RULES, Thresholds

__all__ = ["Finding", "detect"]

_AMOUNTS = "negative_invoice"  # the kind the forest names for amounts, which the rule judges


def detect(
    window: Window,
    history: Sequence[Window],
    thresholds: Thresholds,
    model: TenantModel | None,
    *,
    baseline: Baseline | None = None,
    scored: tuple[float, list[str]] | None = None,
    rules: bool = True,
) -> list[Finding]:
    """Findings for ``window`` given the tenant's trailing closed windows (oldest first).

    ``baseline`` may be passed in when the caller caches it (it changes slowly; recomputing it
    costs a pass over the history); ``scored`` is the model's score for this window when the
    caller batch-scored it (``forest.score_many``); ``rules=False`` leaves the forest alone.
    """
    findings: list[Finding] = []
    if rules:
        baseline = baseline or Baseline.from_history(history, window.start, thresholds.card_testing_cards_per_customer)
        recent = [*history[-(RECENT_WINDOWS - 1) :], window]
        findings = _lag_explains_drop([finding for rule in RULES if (finding := rule(recent, baseline, thresholds)) is not None])
    if model is not None and not findings:
        score, explanation = scored or model.score(window)
        kind = model.kind(window) if score >= model.threshold else None
        if kind is not None and not (rules and kind == _AMOUNTS):
            findings.append(
                Finding(
                    detector="isolation_forest",
                    kind=kind,
                    severity="critical" if score >= model.threshold + 0.1 else "warning",
                    score=score,
                    explanation=explanation,
                    features={"anomaly_score": score, "threshold": model.threshold},
                )
            )
    return findings


def _lag_explains_drop(findings: list[Finding]) -> list[Finding]:
    """A backlog is also a drop in received events; while the lag rule holds, the events are late, not gone."""
    if any(f.kind == "webhook_lag" for f in findings):
        return [f for f in findings if f.kind != "volume_drop"]
    return findings
