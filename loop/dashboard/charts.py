"""Line charts as SVG markup, rendered on the server: no JavaScript library, nothing fetched by the browser.

Styling is by class (the stylesheet in static/) and presentation attributes, never inline `style`, so the
Content-Security-Policy needs no 'unsafe-inline'."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 360, 160
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 10, 24


def _tick(value: float) -> str:
    return f"{value:.3g}"


def line_chart(title: str, points: Sequence[tuple[float, float]], *, x_label: str = "iteration") -> Markup:
    """One series as a polyline with its points marked, its range on the y axis and x values below."""
    label = escape(title)
    if not points:
        return Markup(f'<figure class="chart"><figcaption>{label}</figcaption>'
                      f'<p class="empty">no data yet</p></figure>')
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
    svg = (f'<svg class="chart-svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
           f'aria-label="{label}">'
           f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}"/>'
           f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}"/>'
           f'<text class="tick" x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{_tick(y1)}</text>'
           f'<text class="tick" x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end">{_tick(y0)}</text>'
           f'{x_ticks}<polyline class="line" fill="none" points="{path}"/>{dots}</svg>')
    return Markup(f'<figure class="chart"><figcaption>{label}</figcaption>{svg}</figure>')
