"""Charts as inline SVG drawn on the server: no front-end library, readable without JavaScript,
and each bar or point carries a <title> so hovering (or a screen reader) gives the exact value."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from markupsafe import Markup, escape

_W, _H, _PAD_L, _PAD_B, _PAD_T = 720, 220, 72, 28, 20


def _frame(label: str, body: str, top: str) -> Markup:
    height = _H - _PAD_B - _PAD_T
    grid = "".join(
        f'<line class="grid" x1="{_PAD_L}" x2="{_W}" y1="{_PAD_T + height * i / 2:.1f}" y2="{_PAD_T + height * i / 2:.1f}"/>'
        for i in range(3)
    )
    axis = (
        f'<text class="axis" x="{_PAD_L - 6}" y="{_PAD_T + 4}" text-anchor="end">{escape(top)}</text>'
        f'<text class="axis" x="{_PAD_L - 6}" y="{_PAD_T + height + 4}" text-anchor="end">0</text>'
    )
    return Markup(
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(label)}, last 24 hours" '
        f'>{grid}{axis}{body}</svg>'
    )


def _hour_labels(starts: Sequence[datetime]) -> str:
    step = (_W - _PAD_L) / max(len(starts), 1)
    return "".join(
        f'<text class="axis" x="{_PAD_L + step * (i + 0.5):.1f}" y="{_H - 6}" text-anchor="middle">{at:%H}h</text>'
        for i, at in enumerate(starts)
        if i % 4 == 0
    )


def bar_chart(points: Sequence[tuple[datetime, int]], label: str) -> Markup:
    """One bar per hour; the scale's top is the busiest hour."""
    top = max((value for _, value in points), default=0) or 1
    step = (_W - _PAD_L) / max(len(points), 1)
    height = _H - _PAD_B - _PAD_T
    bars = "".join(
        f'<rect class="bar" x="{_PAD_L + step * i + 2:.1f}" y="{_PAD_T + height * (1 - value / top):.1f}" '
        f'width="{max(step - 4, 1):.1f}" height="{height * value / top:.1f}">'
        f"<title>{at:%H}:00 UTC: {value} {escape(label)}</title></rect>"
        for i, (at, value) in enumerate(points)
    )
    return _frame(label, bars + _hour_labels([at for at, _ in points]), str(top))


def line_chart(points: Sequence[tuple[datetime, float | None]], label: str) -> Markup:
    """A 0–100 % line; hours without finished deliveries leave a gap instead of pretending 0."""
    step = (_W - _PAD_L) / max(len(points), 1)
    height = _H - _PAD_B - _PAD_T
    segments: list[list[str]] = [[]]
    dots = []
    for i, (at, ratio) in enumerate(points):
        if ratio is None:
            segments.append([])
            continue
        x, y = _PAD_L + step * (i + 0.5), _PAD_T + height * (1 - ratio)
        segments[-1].append(f"{x:.1f},{y:.1f}")
        dots.append(f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="3"><title>{at:%H}:00 UTC: {ratio:.0%} {escape(label)}</title></circle>')
    lines = "".join(f'<polyline class="line" points="{" ".join(s)}"/>' for s in segments if len(s) > 1)
    return _frame(label, lines + "".join(dots) + _hour_labels([at for at, _ in points]), "100%")
