"""Small server-rendered SVG charts for the dashboard: no script, no ``style=`` (colours are
classes of dashboard.css), every label escaped. SVG markup inside the HTML needs nothing from
the CSP."""

from __future__ import annotations

from collections.abc import Sequence

from umec.ui.render import esc

W, H, PAD = 480, 140, 24


def _frame(title: str, inner: str, css: str) -> str:
    return (f'<figure class="chart {css}"><svg class="chart-svg" viewBox="0 0 {W} {H}" '
            f'role="img" aria-label="{esc(title)}" xmlns="http://www.w3.org/2000/svg">'
            f'<title>{esc(title)}</title>{inner}</svg>'
            f"<figcaption>{esc(title)}</figcaption></figure>")


def bars(title: str, data: Sequence[tuple[str, float]], css: str = "") -> str:
    """Vertical bars, one per (label, value); the label under every bar when they fit."""
    if not data or max(v for _, v in data) <= 0:
        return _frame(title, f'<text class="chart-empty" x="{W // 2}" y="{H // 2}" '
                             'text-anchor="middle">nothing yet</text>', css)
    top = max(v for _, v in data)
    width = (W - 2 * PAD) / len(data)
    label_every = max(1, len(data) // 12)
    parts = [f'<line class="chart-axis" x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" '
             f'y2="{H - PAD}"></line>',
             f'<text class="chart-label" x="2" y="{PAD - 8}">{esc(_num(top))}</text>']
    for i, (label, value) in enumerate(data):
        h = (H - 2 * PAD) * value / top
        x = PAD + i * width
        parts.append(f'<rect class="chart-bar" x="{x + 1:.1f}" y="{H - PAD - h:.1f}" '
                     f'width="{max(width - 2, 1):.1f}" height="{h:.1f}">'
                     f"<title>{esc(label)}: {esc(_num(value))}</title></rect>")
        if i % label_every == 0:
            parts.append(f'<text class="chart-label" x="{x + width / 2:.1f}" y="{H - 8}" '
                         f'text-anchor="middle">{esc(label[:max(14, int(width // 7))])}</text>')
    return _frame(title, "".join(parts), css)


def line(title: str, points: Sequence[tuple[float, float]], first: str, last: str,
         unit: str, css: str = "") -> str:
    """A line through (x, y) points (x in seconds), with the range's ends labelled."""
    if len(points) < 2:
        return _frame(title, f'<text class="chart-empty" x="{W // 2}" y="{H // 2}" '
                             'text-anchor="middle">not enough readings</text>', css)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    dx, dy = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    coords = " ".join(f"{PAD + (x - x0) / dx * (W - 2 * PAD):.1f},"
                      f"{H - PAD - (y - y0) / dy * (H - 2 * PAD):.1f}" for x, y in points)
    inner = (f'<line class="chart-axis" x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" '
             f'y2="{H - PAD}"></line>'
             f'<polyline class="chart-line" points="{coords}"></polyline>'
             f'<text class="chart-label" x="2" y="{PAD - 8}">{esc(_num(y1))} {esc(unit)}</text>'
             f'<text class="chart-label" x="2" y="{H - PAD - 4}">{esc(_num(y0))}</text>'
             f'<text class="chart-label" x="{PAD}" y="{H - 8}">{esc(first)}</text>'
             f'<text class="chart-label" x="{W - PAD}" y="{H - 8}" text-anchor="end">'
             f"{esc(last)}</text>")
    return _frame(title, inner, css)


def _num(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e6 else f"{value:.3g}"
