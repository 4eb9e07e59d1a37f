"""Line charts as server-rendered SVG geometry: the template draws them, no script and no inline style needed.

Chosen over pygal, whose every chart carries an inline <script> and <style> (a nonce-based CSP refuses
both) and 16 KB of markup. Series differ by dash pattern and end marker as well as by colour.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

WIDTH, HEIGHT = 480, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 14, 32  # room for the axis labels
FONT_SIZE = 15  # about 10 px on a phone, where the chart is drawn at 330 px wide
STYLES = (  # (stroke colour, dash pattern, end marker): told apart without colour too
    ("#b3471d", "", "circle"),
    ("#1d5fb3", "6 4", "square"),
)


@dataclass(frozen=True)
class Line:
    name: str
    points: str  # "x,y x,y ..." for <polyline>
    end: tuple[float, float]
    colour: str
    dash: str
    marker: str


@dataclass(frozen=True)
class Chart:
    key: str  # the element ids' prefix
    title: str
    description: str
    lines: list[Line]
    y_ticks: list[tuple[float, str]]
    x_ticks: list[tuple[float, str]]
    width: int = WIDTH
    height: int = HEIGHT
    font_size: int = FONT_SIZE
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM


def line_chart(key: str, title: str, days: list[date], series: list[tuple[str, list[int]]], per_day: bool = True) -> Chart:
    """One chart of one or two series over `days`; the description says in words what the lines show.

    Per-day counts stand on zero; a running total (`per_day=False`) gets an axis around its own range."""
    values = [value for _, numbers in series for value in numbers]
    low, high, step = axis(min(values), max(values), zero_based=per_day)
    x = _scale(0, max(len(days) - 1, 1), LEFT, WIDTH - RIGHT)
    y = _scale(low, high, HEIGHT - BOTTOM, TOP)
    lines = []
    for (name, numbers), (colour, dash, marker) in zip(series, STYLES, strict=False):
        points = [(round(x(n), 1), round(y(value), 1)) for n, value in enumerate(numbers)]
        lines.append(Line(name, " ".join(f"{px},{py}" for px, py in points), points[-1], colour, dash, marker))
    return Chart(key, title, describe(days, series, per_day), lines,
                 [(round(y(value), 1), f"{value:,}") for value in range(low, high + 1, step)],
                 [(round(x(n), 1), _day_label(days[n])) for n in _spread(len(days), 5)])


def axis(lowest: int, highest: int, zero_based: bool = True) -> tuple[int, int, int]:
    """(bottom, top, step) of a value axis with about four round steps that holds every value."""
    lowest = min(lowest, 0) if zero_based else lowest
    step = nice(max(highest - lowest, 1) / 4)
    bottom = math.floor(lowest / step) * step
    return bottom, max(math.ceil(highest / step) * step, bottom + step), step


def nice(value: float) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (at least 1)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def describe(days: list[date], series: list[tuple[str, list[int]]], per_day: bool) -> str:
    """The chart in a sentence or two, for screen readers (the table below has every number)."""
    span = f"from {_day_label(days[0])} to {_day_label(days[-1])}"
    parts = []
    for name, values in series:
        if per_day:
            peak = max(range(len(values)), key=lambda n: values[n])
            parts.append(f"{name}: {sum(values):,} in all, at most {values[peak]:,} on {_day_label(days[peak])}")
        else:
            parts.append(f"{name}: {values[0]:,} on {_day_label(days[0])}, {values[-1]:,} on {_day_label(days[-1])} "
                         f"({values[-1] - values[0]:+,})")
    return f"{'; '.join(parts)}; {span}."


def _scale(low: float, high: float, start: float, end: float):
    span = (high - low) or 1
    return lambda value: start + (value - low) * (end - start) / span


def _spread(length: int, count: int) -> list[int]:
    """`count` indexes spread evenly over `length` items, the first and the last among them."""
    if length <= count:
        return list(range(length))
    return sorted({round(n * (length - 1) / (count - 1)) for n in range(count)})


def _day_label(day: date) -> str:
    return f"{day.day} {day:%b}"
