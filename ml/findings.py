"""What a detector reports about one window (before incident dedup)."""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = (
    "card_testing",
    "failure_spike",
    "silent_lapse",
    "duplicate_flood",
    "webhook_lag",
    "negative_invoice",
    "volume_drop",
    "bad_signature",
)
UNUSUAL = "unusual_traffic"  # the forest's kind when its top feature points at no rule's kind


@dataclass
class Finding:
    detector: str  # e.g. "card_testing" or "isolation_forest"
    kind: str  # one of KINDS, or UNUSUAL for the forest
    severity: str  # "warning" | "critical"
    score: float  # 0..1-ish, higher = more anomalous
    explanation: list[str] = field(default_factory=list)
    features: dict[str, float] = field(default_factory=dict)
