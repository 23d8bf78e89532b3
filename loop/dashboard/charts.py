"""Line charts as SVG markup, rendered on the server: no JavaScript library, nothing fetched by the browser.

Styling is by class (the stylesheet in static/) and presentation attributes, never inline `style`, so the
Content-Security-Policy needs no 'unsafe-inline'."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 360, 160
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 10, 24


def _tick(value: float) -> str:
    return f"{value:.3g}"


def _empty(label: str) -> Markup:
    return Markup(f'<figure class="chart"><figcaption>{label}</figcaption><p class="empty">no data yet</p></figure>')


def _figure(label: str, high: float, low: float, body: str, caption: str = "") -> Markup:
    """The plot's frame (both axes, the y range as two ticks) around `body`, captioned."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    svg = (f'<svg class="chart-svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
           f'aria-label="{label}">'
           f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}"/>'
           f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}"/>'
           f'<text class="tick" x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{_tick(high)}</text>'
           f'<text class="tick" x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end">{_tick(low)}</text>'
           f'{body}</svg>')
    return Markup(f'<figure class="chart"><figcaption>{label}{caption}</figcaption>{svg}</figure>')


def line_chart(title: str, points: Sequence[tuple[float, float]], *, x_label: str = "iteration") -> Markup:
    """One series as a polyline with its points marked, its range on the y axis and x values below."""
    label = escape(title)
    if not points:
        return _empty(label)
    xs, ys = [float(x) for x, _ in points], [float(y) for _, y in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y0 == y1:
        y0, y1 = y0 - 0.5 if y0 else -0.5, y1 + 0.5 if y1 else 0.5
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def at(x: float, y: float) -> tuple[float, float]:
        return LEFT + (x - x0) / (x1 - x0) * plot_w, TOP + (1 - (y - y0) / (y1 - y0)) * plot_h

    coords = [at(x, y) for x, y in zip(xs, ys, strict=True)]
    path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
    dots = "".join(f'<circle class="dot" cx="{cx:.1f}" cy="{cy:.1f}" r="2.5"><title>{escape(x_label)} '
                   f'{_tick(x)}: {_tick(y)}</title></circle>' for (cx, cy), x, y in zip(coords, xs, ys, strict=True))
    shown_x = sorted(set(xs)) if len(set(xs)) <= 8 else [x0, x1]
    x_ticks = "".join(f'<text class="tick" x="{at(x, y0)[0]:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
                      f'{_tick(x)}</text>' for x in shown_x)
    return _figure(label, y1, y0, f'{x_ticks}<polyline class="line" fill="none" points="{path}"/>{dots}')


Groups = Sequence[tuple[str, Sequence[tuple[str, float | None]]]]
"""(group label, [(series, value or None when unmeasured)]) for each group of a bar chart."""


def bar_chart(title: str, groups: Groups, *, top: float = 1.0) -> Markup:
    """Grouped bars on a fixed 0..`top` scale (shares, so charts compare): each group, labelled below, holds one bar
    per series, styled by the series' name (class `bar-NAME`) and keyed in the caption."""
    label = escape(title)
    if not groups:
        return _empty(label)
    series = list(dict.fromkeys(name for _, values in groups for name, _ in values))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(groups)
    width = 0.8 * slot / len(series)
    shapes = []
    for g, (group, values) in enumerate(groups):
        left = LEFT + g * slot + 0.1 * slot
        for name, value in values:
            if value is None:
                continue
            height = max(0.0, min(value, top)) / top * plot_h
            x = left + series.index(name) * width
            shapes.append(f'<rect class="bar bar-{escape(name)}" x="{x:.1f}" y="{TOP + plot_h - height:.1f}" '
                          f'width="{width:.1f}" height="{height:.1f}"><title>{escape(group)}, {escape(name)}: '
                          f'{_tick(value)}</title></rect>')
        shapes.append(f'<text class="tick" x="{LEFT + (g + 0.5) * slot:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
                      f'{escape(group)}</text>')
    keys = "".join(f'<span class="key bar-{escape(name)}">{escape(name)}</span>' for name in series)
    return _figure(label, top, 0.0, "".join(shapes), keys)


TASK_SERIES = (("candidate", ""), ("previous", "previous_"), ("base", "base_"))
"""The policies an evaluation measures, by the prefix of their metrics."""


def task_accuracy_chart(metrics: Mapping[str, float]) -> Markup:
    """An evaluation's task accuracy per task set (and over all of them, with more than one), the candidate against
    the previous policy and the base; empty markup when the evaluation has no task set."""
    sets = sorted(name.removeprefix("task_accuracy_") for name in metrics
                  if name.startswith("task_accuracy_") and name != "task_accuracy_drop")
    if not sets:
        return Markup("")
    names = [f"task_accuracy_{s}" for s in sets] + (["task_accuracy"] if len(sets) > 1 else [])
    groups = [(name.removeprefix("task_accuracy_") if name != "task_accuracy" else "all",
               [(policy, metrics.get(prefix + name)) for policy, prefix in TASK_SERIES]) for name in names]
    return bar_chart("task accuracy: answers that meet their whole task", groups)
