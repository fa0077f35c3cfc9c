"""The cost-versus-quality frontier as pictures: a static PNG and a self-contained interactive HTML page.

Both take a trial table (``labelmix.platform.trial_table``: ``trial_id``, the objective metrics,
``pareto``, ``config/mix.full`` ...) and draw its frontier axes (``frontier_axes`` of the table's
objectives: x the cost axis, y the quality axis; by default cost/hours and val/miou). Trials without a
value on either axis (errored, diverged, over budget) are not drawn. The HTML page has no external
resources (inline SVG and a few lines of JavaScript), so it opens offline and inside the MLflow
artifact viewer.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from labelmix.platform.trial_table import frontier_axes, objective_values, table_objectives, with_pareto

LABELS = {  # axis label, short name for titles
    "cost/hours": ("annotation cost (hours)", "annotation cost"),
    "cost/reduction": ("annotation cost reduction (vs all full masks)", "cost reduction"),
    "val/miou": ("foreground mIoU (val)", "mIoU"),
    "val/mdice": ("foreground Dice (val)", "Dice"),
    "val/miou_bg": ("mIoU with background (val)", "mIoU with background"),
    "val/miou_calibrated": ("foreground mIoU, calibrated (val)", "calibrated mIoU"),
}
MIX_TYPES = (("full", "F"), ("box", "B"), ("global", "G"), ("none", "N"))


def mix_label(row) -> str:
    """``F6% B40% G30% N24%`` from the ``config/mix.*`` fractions of one trial row (``?`` without a mix),
    with `` by class`` where the masks went to a class-balanced subset (``config/mix_selection``)."""
    values = [_float(row.get(f"config/mix.{kind}")) for kind, _ in MIX_TYPES]
    if all(v is None for v in values):
        return "?"
    label = " ".join(f"{letter}{100 * (v or 0.0):.0f}%" for (_, letter), v in zip(MIX_TYPES, values))
    return f"{label} by class" if row.get("config/mix_selection") == "classes" else label


def _label(metric: str, short: bool = False) -> str:
    return LABELS.get(metric, (metric, metric))[1 if short else 0]


def _heading(title: str | None, x: str, y: str) -> str:
    what = f"{_label(x, True)} vs {_label(y, True)}"
    return f"{title}: {what}" if title else what


def plotted(table: pd.DataFrame, objectives=None) -> tuple[pd.DataFrame, str, str, bool]:
    """(trials, x, y, x_up): the drawable trials (counted, a value on both axes) with the axes as
    columns ``x`` and ``y`` and a ``pareto`` column, sorted by x; the axes' metric names; whether a
    larger x is better (then the front falls from left to right). ``objectives`` None: the table's."""
    objectives = table_objectives(table) if objectives is None else objectives
    (x, x_mode), (y, _) = frontier_axes(objectives)
    frame = table if "pareto" in table else with_pareto(table, objectives)
    values = objective_values(frame, objectives)  # N x 2
    frame = frame.assign(x=values[:, 0], y=values[:, 1])
    frame = frame[np.isfinite(values).all(axis=1)].copy()
    frame["pareto"] = frame["pareto"].fillna(False).astype(bool)
    return frame.sort_values(["x", "y"], ascending=[True, False]).reset_index(drop=True), x, y, x_mode == "max"


def frontier_png(table: pd.DataFrame, path, title: str | None = None, objectives=None) -> Path:
    """Static plot: every trial in grey, the frontier as a step line with markers and mix labels."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster heads; never opens a window
    import matplotlib.pyplot as plt

    frame, x, y, x_up = plotted(table, objectives)
    front = frame[frame["pareto"]]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    try:
        ax.scatter(frame["x"], frame["y"], s=22, color="0.65", alpha=0.8, label=f"trials ({len(frame)})", zorder=2)
        if len(front):
            # A step: between two frontier points the best reachable quality is the cheaper one's
            # (the left one's for a cost to minimise, the right one's for a reduction to maximise).
            xs, ys = front["x"].to_numpy(float), front["y"].to_numpy(float)
            if x_up:
                left = min(float(frame["x"].min()), xs[0])
                left -= 0.02 * (abs(left) or 1.0)
                ax.step(np.insert(xs, 0, left), np.insert(ys, 0, ys[0]), where="pre", color="tab:red", lw=1.8, zorder=3)
            else:
                right = max(float(frame["x"].max()), xs[-1]) * 1.02
                ax.step(np.append(xs, right), np.append(ys, ys[-1]), where="post", color="tab:red", lw=1.8, zorder=3)
            ax.scatter(xs, ys, s=46, color="tab:red", edgecolor="black", lw=0.6, label=f"frontier ({len(front)})", zorder=4)
            ax.margins(x=0.04, y=0.1)
        if frame.empty:
            ax.text(0.5, 0.5, "no finished trials with a cost and a score yet", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
        ax.set_xlabel(_label(x))
        ax.set_ylabel(_label(y))
        ax.set_title(_heading(title, x, y))
        ax.grid(True, color="0.9", zorder=0)
        if len(frame) == 0 or float(frame["x"].min()) >= 0:
            ax.set_xlim(left=0)
        if len(frame):
            ax.legend(loc="lower left" if x_up else "lower right", fontsize=8)  # away from the front
        fig.tight_layout()  # final axes box first: label placement works in display coordinates
        if len(front):
            _label_points(fig, ax, xs, ys, [mix_label(row) for _, row in front.iterrows()])
        path = Path(path)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


# Label offsets in points, best first. Up-left of a frontier point is always empty (nothing dominates
# it), so labels go there first; the other spots are tried when a neighbour's label is in the way.
_SPOTS = [(-6, 4, "right", "bottom"), (6, -4, "left", "top"), (-6, 16, "right", "bottom"),
          (8, -16, "left", "top"), (-6, 28, "right", "bottom"), (8, -28, "left", "top"),
          (-6, 40, "right", "bottom"), (8, -40, "left", "top")]


def _label_points(fig, ax, xs, ys, labels) -> None:
    """Place one label per point so that labels neither overlap each other nor leave the axes."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    centres = ax.transData.transform(np.column_stack([xs, ys]))
    taken = [Bbox.from_bounds(cx - 4, cy - 4, 8, 8) for cx, cy in centres]  # the markers themselves
    for x, y, label in zip(xs, ys, labels):
        chosen = None
        for dx, dy, ha, va in _SPOTS:
            text = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                               fontsize=7.5, color="darkred", zorder=5)
            extent = text.get_window_extent(renderer).expanded(1.04, 1.15)
            inside = box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1
            if inside and not any(extent.overlaps(other) for other in taken):
                chosen = (text, extent, abs(dy) > 4)
                break
            text.remove()
        if chosen is None:  # crowded: the first spot, overlap accepted
            dx, dy, ha, va = _SPOTS[0]
            text = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                               fontsize=7.5, color="darkred", zorder=5)
            chosen = (text, text.get_window_extent(renderer), False)
        text, extent, far = chosen
        if far:  # a label moved away from its point gets a thin leader line
            ax.annotate("", (x, y), xytext=text.xyann, textcoords="offset points",
                        arrowprops=dict(arrowstyle="-", color="darkred", lw=0.5, alpha=0.6))
        taken.append(extent)


# --- interactive HTML ---------------------------------------------------------------------------

_W, _H = 760, 480
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 40, 55


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps) covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks, value = [], start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def _fmt(value: float) -> str:
    return f"{value:g}"


def frontier_svg(table: pd.DataFrame, title: str | None = None, objectives=None,
                 reference: tuple[str, float] | None = None, within: float = 0.05) -> str:
    """The frontier as one ``<svg>`` element: every drawable trial a circle (``data-info``: its trial,
    mix and objectives, for :data:`TIP_SCRIPT`), the frontier a red step line. ``reference`` (label,
    quality): a dashed horizontal line at that quality and a band ``within`` of it on the worse side."""
    frame, x, y, x_up = plotted(table, objectives)
    y_up = frontier_axes(table_objectives(table) if objectives is None else objectives)[1][1] == "max"
    heading = _heading(title, x, y)
    near = None if reference is None else reference[1] - within if y_up else reference[1] + within
    extra = [] if reference is None else [reference[1], near]  # the y axis covers the reference and its band
    if frame.empty:
        xt, yt = [0.0, 1.0], nice_ticks(min([0.0, *extra]), max([1.0, *extra])) if extra else [0.0, 1.0]
    else:
        xt = nice_ticks(min(0.0, float(frame["x"].min())), float(frame["x"].max()))
        yt = nice_ticks(min([float(frame["y"].min()), *extra]), max([float(frame["y"].max()), *extra]))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def sx(v: float) -> float:
        return _LEFT + (v - x0) / (x1 - x0) * plot_w

    def sy(v: float) -> float:
        return _TOP + plot_h - (v - y0) / (y1 - y0) * plot_h

    parts = [f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="white" stroke="#999"/>']
    for v in xt:
        parts.append(f'<line x1="{sx(v):.1f}" y1="{_TOP}" x2="{sx(v):.1f}" y2="{_TOP + plot_h}" stroke="#eee"/>')
        parts.append(f'<text x="{sx(v):.1f}" y="{_TOP + plot_h + 16}" text-anchor="middle" class="tick">{_fmt(v)}</text>')
    for v in yt:
        parts.append(f'<line x1="{_LEFT}" y1="{sy(v):.1f}" x2="{_LEFT + plot_w}" y2="{sy(v):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{_LEFT - 6}" y="{sy(v) + 4:.1f}" text-anchor="end" class="tick">{_fmt(v)}</text>')
    parts.append(f'<text x="{_LEFT + plot_w / 2}" y="{_H - 12}" text-anchor="middle">{html.escape(_label(x))}</text>')
    parts.append(f'<text transform="translate(16 {_TOP + plot_h / 2}) rotate(-90)" text-anchor="middle">'
                 f'{html.escape(_label(y))}</text>')
    parts.append(f'<text x="{_W / 2}" y="22" text-anchor="middle" class="title">{html.escape(heading)}</text>')
    if reference is not None:
        label, value = reference
        top, bottom = sorted((sy(value), sy(near)))
        parts.append(f'<rect class="within" x="{_LEFT}" y="{top:.1f}" width="{plot_w}" height="{bottom - top:.1f}" '
                     f'fill="#1f77b4" fill-opacity="0.08"/>')
        parts.append(f'<line class="reference" x1="{_LEFT}" y1="{sy(value):.1f}" x2="{_LEFT + plot_w}" '
                     f'y2="{sy(value):.1f}" stroke="#1f77b4" stroke-width="1.5" stroke-dasharray="6 4"/>')
        parts.append(f'<text x="{_LEFT + 6}" y="{sy(value) - 5:.1f}" fill="#1f77b4" class="tick">'
                     f'{html.escape(label)} {value:.3f}</text>')
        parts.append(f'<text x="{_LEFT + 6}" y="{sy(near) + (12 if y_up else -5):.1f}" fill="#1f77b4" class="tick">'
                     f'within {within:g} of the reference</text>')

    front = frame[frame["pareto"]]
    if len(front):
        xs, ys = front["x"].to_numpy(float), front["y"].to_numpy(float)
        # a step from the cheap end: horizontal, then vertical (the left end is cheap unless x_up)
        points = [f"{_LEFT:.1f},{sy(ys[0]):.1f}"] if x_up else []
        for i, (px, py) in enumerate(zip(xs, ys)):
            if i:
                corner = sy(py) if x_up else sy(ys[i - 1])
                points.append(f"{sx(px if not x_up else xs[i - 1]):.1f},{corner:.1f}")
            points.append(f"{sx(px):.1f},{sy(py):.1f}")
        if not x_up:
            points.append(f"{_LEFT + plot_w:.1f},{sy(ys[-1]):.1f}")
        parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="#d62728" stroke-width="2"/>')
    for _, row in pd.concat([frame[~frame["pareto"]], front]).iterrows():  # frontier drawn on top
        info = {
            "trial": str(row.get("trial_id", "")),
            "mix": mix_label(row),
            x: f"{float(row['x']):.{2 if x == 'cost/hours' else 3}f}",
            y: f"{float(row['y']):.3f}",
            "ds_type": str(row.get("config/ds_type", "")) if pd.notna(row.get("config/ds_type")) else "",
            "frontier": "yes" if row["pareto"] else "no",
        }
        cls, r = ("front", 6) if row["pareto"] else ("trial", 4)
        parts.append(
            f'<circle class="{cls}" cx="{sx(float(row["x"])):.1f}" cy="{sy(float(row["y"])):.1f}" r="{r}" '
            f"data-info='{html.escape(json.dumps(info), quote=True)}'/>"
        )
    if frame.empty:
        parts.append(f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle" fill="#777">no finished trials with a cost and a score yet</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}">\n'
            + "\n".join(parts) + "\n</svg>")


def frontier_html(table: pd.DataFrame, path, title: str | None = None, objectives=None) -> Path:
    """One self-contained page: SVG scatter + frontier step line, hover a point for its details."""
    frame, x, y, _ = plotted(table, objectives)
    page = _PAGE.format(
        title=html.escape(_heading(title, x, y)), style=SVG_STYLE, script=TIP_SCRIPT,
        svg=frontier_svg(table, title, objectives), count=len(frame), front=int(frame["pareto"].sum()),
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


# The page's style and hover script as plain text, for pages that embed frontier_svg (report.py).
SVG_STYLE = """svg text { font-size: 13px; } svg text.tick { font-size: 11px; fill: #555; } svg text.title { font-size: 15px; font-weight: bold; }
circle.trial { fill: #aaa; fill-opacity: 0.8; } circle.front { fill: #d62728; stroke: #000; stroke-width: 0.7; }
circle:hover { stroke: #000; stroke-width: 2; cursor: pointer; }
#tip { position: absolute; display: none; background: #fffff0; border: 1px solid #888; padding: 6px 8px;
        font-size: 12px; pointer-events: none; white-space: nowrap; box-shadow: 2px 2px 4px #ccc; }"""

TIP_SCRIPT = """<div id="tip"></div>
<script>
(function () {
  var tip = document.getElementById("tip");
  document.querySelectorAll("circle[data-info]").forEach(function (c) {
    c.addEventListener("mousemove", function (e) {
      var d = JSON.parse(c.getAttribute("data-info")), lines = [];
      for (var k in d) { lines.push("<b>" + k + "</b> " + String(d[k]).replace(/[&<>]/g, function (s) {
        return {"&": "&amp;", "<": "&lt;", ">": "&gt;"}[s]; })); }
      tip.innerHTML = lines.join("<br>");
      tip.style.left = (e.pageX + 12) + "px"; tip.style.top = (e.pageY + 12) + "px"; tip.style.display = "block";
    });
    c.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  });
})();
</script>"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; color: #222; }}
{style}
</style></head>
<body>
{svg}
<p>{count} trials drawn, {front} on the frontier (red). Hover a point for its trial, mix and objectives.</p>
{script}
</body></html>
"""


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
