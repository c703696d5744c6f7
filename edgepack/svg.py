"""Small inline-SVG helpers for the HTML report (no JavaScript, no network): scales, axes, box rows, scatter.

Every string that reaches the markup goes through ``esc`` (names come from user recipes). Marks a reader
should see carry ``class="mark"`` (the Chromium test checks each renders with a non-zero size).
"""

from __future__ import annotations

import html
import math

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def esc(v) -> str:
    return html.escape(str(v), quote=True)


def num(v: float) -> str:
    return f"{v:.1f}"


class Scale:
    """Maps [lo, hi] onto pixels [a, b]; ``log`` for values spanning decades (all > 0)."""

    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool = False):
        self.log = log and lo > 0
        f = math.log10 if self.log else float
        self.lo, self.hi = f(lo), f(hi)
        if self.hi <= self.lo:
            self.lo, self.hi = self.lo - 0.5, self.hi + 0.5
        self.a, self.b, self._f = a, b, f

    def __call__(self, v: float) -> float:
        return self.a + (self._f(v) - self.lo) / (self.hi - self.lo) * (self.b - self.a)

    def ticks(self, n: int = 5) -> list[float]:
        if self.log:
            return [10.0 ** e for e in range(math.floor(self.lo), math.ceil(self.hi) + 1) if self.lo <= e <= self.hi] or [10 ** self.lo]
        step = _nice((self.hi - self.lo) / max(n, 1))
        first = math.ceil(self.lo / step) * step
        return [first + i * step for i in range(int((self.hi - first) / step + 1e-9) + 1)]


def _nice(x: float) -> float:
    e = 10.0 ** math.floor(math.log10(x)) if x > 0 else 1.0
    return next(m * e for m in (1, 2, 2.5, 5, 10) if m * e >= x)


def extent(values: list[float], pad: float = 0.05, log: bool = False) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if log and lo > 0:
        return lo / (1 + pad * 4), hi * (1 + pad * 4)
    span = (hi - lo) or abs(hi) or 1.0
    return lo - span * pad, hi + span * pad


def tick_label(v: float) -> str:
    return f"{v:.3g}"


def doc(width: int, height: int, body: list[str], title: str, plot_id: str) -> str:
    """A standalone plot: ``<svg class="plot">`` with a <title> for screen readers and tooltips."""
    return (f'<svg class="plot" id="{esc(plot_id)}" role="img" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}"><title>{esc(title)}</title>' + "".join(body) + "</svg>")


def text(x: float, y: float, s, anchor: str = "start", cls: str = "", size: int = 11) -> str:
    return f'<text x="{num(x)}" y="{num(y)}" text-anchor="{anchor}" font-size="{size}"{_cls(cls)}>{esc(s)}</text>'


def _cls(cls: str) -> str:
    return f' class="{esc(cls)}"' if cls else ""


def line(x1, y1, x2, y2, stroke="#888", width=1.0, cls="") -> str:
    return (f'<line x1="{num(x1)}" y1="{num(y1)}" x2="{num(x2)}" y2="{num(y2)}" stroke="{stroke}" '
            f'stroke-width="{width}"{_cls(cls)}/>')


def x_axis(s: Scale, y: float, label: str, height: float) -> list[str]:
    """Ticks with grid lines up to ``y - height`` and a label under the axis."""
    out = [line(s.a, y, s.b, y, "#333")]
    for t in s.ticks():
        x = s(t)
        out += [line(x, y, x, y - height, "#eee"), line(x, y, x, y + 4, "#333"), text(x, y + 16, tick_label(t), "middle")]
    out.append(text((s.a + s.b) / 2, y + 32, label, "middle", size=12))
    return out


def y_axis(s: Scale, x: float, label: str, width: float) -> list[str]:
    out = [line(x, s.a, x, s.b, "#333")]
    for t in s.ticks():
        y = s(t)
        out += [line(x, y, x + width, y, "#eee"), line(x - 4, y, x, y, "#333"), text(x - 6, y + 4, tick_label(t), "end")]
    mid = (s.a + s.b) / 2
    out.append(f'<text transform="translate({num(x - 46)},{num(mid)}) rotate(-90)" text-anchor="middle" font-size="12">{esc(label)}</text>')
    return out


def quantile(sorted_v: list[float], q: float) -> float:
    if not sorted_v:
        return float("nan")
    i = q * (len(sorted_v) - 1)
    lo = math.floor(i)
    hi = min(lo + 1, len(sorted_v) - 1)
    return sorted_v[lo] + (sorted_v[hi] - sorted_v[lo]) * (i - lo)


def box_row(s: Scale, y: float, h: float, samples: list[float], color: str, tip: str) -> list[str]:
    """One distribution: whiskers p5-p95, box p25-p75, median, and up to 300 sample dots (evenly thinned)."""
    v = sorted(samples)
    p5, p25, p50, p75, p95 = (quantile(v, q) for q in (0.05, 0.25, 0.5, 0.75, 0.95))
    x25, x75 = s(p25), s(p75)
    out = [line(s(p5), y, s(p95), y, color, 1.2), line(s(p5), y - h / 4, s(p5), y + h / 4, color),
           line(s(p95), y - h / 4, s(p95), y + h / 4, color),
           f'<rect class="mark" x="{num(x25)}" y="{num(y - h / 2)}" width="{num(max(x75 - x25, 2.0))}" height="{num(h)}" '
           f'fill="{color}" fill-opacity="0.25" stroke="{color}"><title>{esc(tip)}</title></rect>',
           line(s(p50), y - h / 2, s(p50), y + h / 2, color, 2.5)]
    step = max(1, len(v) // 300)
    for i, x in enumerate(v[::step]):
        jitter = ((i * 7919) % 11 - 5) / 5 * h * 0.35
        out.append(f'<circle cx="{num(s(x))}" cy="{num(y + jitter)}" r="1.4" fill="{color}" fill-opacity="0.5"/>')
    return out


def pareto_front(points: list[dict], higher_is_better: bool) -> set[int]:
    """Indices of points no other point beats on latency, metric and size at once (ties allowed, one strictly)."""
    def better_eq(a, b):
        m = a["y"] >= b["y"] if higher_is_better else a["y"] <= b["y"]
        return a["x"] <= b["x"] and m and a["size"] <= b["size"]

    def strictly(a, b):
        return a["x"] < b["x"] or a["size"] < b["size"] or (a["y"] > b["y"] if higher_is_better else a["y"] < b["y"])

    return {i for i, p in enumerate(points)
            if not any(j != i and better_eq(q, p) and strictly(q, p) for j, q in enumerate(points))}
