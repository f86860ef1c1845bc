"""Line charts as inline SVG: no plotting library, no script, crisp at any zoom.

Each series is one `<g class="series" data-label=...>` with its polyline (and markers where the
points are few, such as evaluations), and a `<title>` so a browser shows its name on hover.
"""

from __future__ import annotations

import dataclasses
import html
import math

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
DASHES = ("", "6 3", "2 3", "8 3 2 3")
MAX_POINTS = 1000  # per series; longer runs are thinned (every k-th point, the last kept)
_W, _H = 620, 260  # plot area plus margins, in SVG units (the page scales it)
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 12, 28, 40


@dataclasses.dataclass
class Series:
  label: str
  points: list[tuple[float, float]]
  color: str = PALETTE[0]
  dash: str = ""


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
  """About `n` round values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
  if hi <= lo:
    return [lo]
  raw = (hi - lo) / n
  mag = 10 ** math.floor(math.log10(raw))
  step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
  first = math.ceil(lo / step - 1e-9) * step
  return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
  if v == 0:
    return "0"
  if abs(v) >= 1e5 or abs(v) < 1e-3:
    return f"{v:.1e}"
  return f"{v:.4g}"


def _thin(points: list) -> list:
  if len(points) <= MAX_POINTS:
    return points
  k = math.ceil(len(points) / MAX_POINTS)
  return points[::k] + ([points[-1]] if (len(points) - 1) % k else [])


def line_chart(series: list[Series], *, title: str, ylabel: str = "", xlabel: str = "step") -> str:
  """One chart of `series` (x: step) with axes, grid, and a legend below it."""
  series = [dataclasses.replace(s, points=_thin(s.points)) for s in series if s.points]
  cols = 3 if max((len(s.label) for s in series), default=0) <= 24 else 2
  legend_rows = math.ceil(len(series) / cols)
  height = _H + 8 + 18 * legend_rows
  xs = [p[0] for s in series for p in s.points] or [0.0]
  ys = [p[1] for s in series for p in s.points] or [0.0]
  x0, x1 = min(xs), max(xs)
  y0, y1 = min(ys), max(ys)
  if x1 == x0:
    x0, x1 = x0 - 1, x1 + 1
  if y1 == y0:
    pad = abs(y0) * 0.1 or 1.0
    y0, y1 = y0 - pad, y1 + pad
  else:
    y0, y1 = y0 - (y1 - y0) * 0.05, y1 + (y1 - y0) * 0.05
  pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

  def sx(x):
    return _LEFT + (x - x0) / (x1 - x0) * pw

  def sy(y):
    return _TOP + ph - (y - y0) / (y1 - y0) * ph

  esc = html.escape
  out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height}" '
         f'role="img" aria-label="{esc(title)}">',
         f'<text x="{_W / 2}" y="16" text-anchor="middle" class="title">{esc(title)}</text>']
  for t in ticks(y0, y1):
    out.append(f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" '
               f'class="grid"/><text x="{_LEFT - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">'
               f'{_fmt(t)}</text>')
  for t in ticks(x0, x1):
    out.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{_TOP + ph}" y2="{_TOP + ph + 4}" '
               f'class="axis"/><text x="{sx(t):.1f}" y="{_TOP + ph + 16}" '
               f'text-anchor="middle">{_fmt(t)}</text>')
  out.append(f'<rect x="{_LEFT}" y="{_TOP}" width="{pw}" height="{ph}" class="frame"/>')
  out.append(f'<text x="{_LEFT + pw / 2}" y="{_TOP + ph + 32}" text-anchor="middle">'
             f'{esc(xlabel)}</text>')
  if ylabel:
    out.append(f'<text transform="translate(14 {_TOP + ph / 2}) rotate(-90)" '
               f'text-anchor="middle">{esc(ylabel)}</text>')
  for i, s in enumerate(series):
    pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
    dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
    out.append(f'<g class="series" data-label="{esc(s.label)}" data-points="{len(s.points)}">'
               f'<title>{esc(s.label)}</title>'
               f'<polyline points="{pts}" fill="none" stroke="{s.color}" stroke-width="1.6"{dash}/>')
    if len(s.points) <= 40:
      out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.6" fill="{s.color}"/>'
              for x, y in s.points]
    out.append("</g>")
    lx, ly = _LEFT + (i % cols) * (pw / cols), _H + 12 + 18 * (i // cols)
    out.append(f'<line x1="{lx:.1f}" x2="{lx + 22:.1f}" y1="{ly - 4}" y2="{ly - 4}" '
               f'stroke="{s.color}" stroke-width="2"{dash}/><text x="{lx + 26:.1f}" y="{ly}" '
               f'class="legend">{esc(s.label)}</text>')
  out.append("</svg>")
  return "".join(out)
