"""Event priority from its type: the design's defaults, overridable per source by patterns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from sqlalchemy import ColumnElement, func, or_, true

Priority = Literal["critical", "high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("critical", "high", "normal", "low")

# Checked in order: the first matching pattern wins (so payment invoice events beat invoice.*).
DEFAULT_RULES: tuple[tuple[str, Priority], ...] = (
    ("charge.*", "critical"),
    ("payment_intent.*", "critical"),
    ("invoice.payment_*", "critical"),
    ("invoice.paid", "critical"),
    ("checkout.session.completed", "critical"),
    ("customer.subscription.*", "high"),
    ("invoice.*", "high"),
    ("product.*", "low"),
    ("price.*", "low"),
    ("plan.*", "low"),
)


MAX_PATTERNS = 100  # per endpoint filter, source's priority overrides or replay
MAX_PATTERN_LENGTH = 255


def patterns_error(patterns: Sequence[str]) -> str | None:
    """What is wrong with a list of type patterns (``*``, exact types, prefixes such as ``invoice.*``:
    the only ones ``matches`` and ``matching`` know), or None. Control characters are refused: one
    NUL reaches the SQL that matches every tenant's filters in one statement, and fails it."""
    if not patterns:
        return "give at least one event type, or * for every type"
    if len(patterns) > MAX_PATTERNS:
        return f"at most {MAX_PATTERNS} patterns are allowed"
    for pattern in patterns:
        if not 1 <= len(pattern) <= MAX_PATTERN_LENGTH:
            return f"each event type must be 1 to {MAX_PATTERN_LENGTH} characters long"
        if not pattern.isprintable():
            return f"{pattern!r}: event types must not contain control characters"
        if "*" in pattern[:-1]:
            return f"{pattern!r}: '*' may only end an entry, as in '*' or 'invoice.*'"
    return None


def matches(pattern: str, event_type: str) -> bool:
    """``*`` matches all, a trailing ``*`` matches a prefix, anything else must be equal."""
    if pattern.endswith("*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


def matching(column: Any, patterns: Sequence[str]) -> ColumnElement[bool]:
    """``matches`` as SQL: the column equals, or (for a trailing ``*``) starts with, a pattern.
    Prefixes are compared as substrings, not with ``LIKE``, which SQLite folds to one case."""
    if "*" in patterns:
        return true()
    exact = [p for p in patterns if not p.endswith("*")]
    prefixes = [func.substr(column, 1, len(p) - 1) == p[:-1] for p in patterns if p.endswith("*")]
    return or_(*([column.in_(exact)] if exact else []), *prefixes)


def classify(event_type: str, overrides: Mapping[str, Priority] | None = None) -> Priority:
    """Overrides first, most specific (longest) pattern winning; then the defaults; else normal."""
    if overrides:
        for pattern in sorted(overrides, key=len, reverse=True):
            if matches(pattern, event_type):
                return overrides[pattern]
    for pattern, priority in DEFAULT_RULES:
        if matches(pattern, event_type):
            return priority
    return "normal"
