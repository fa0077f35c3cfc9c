"""The cost-versus-mIoU frontier as pictures: a static PNG and a self-contained interactive HTML page.

Both take the trial table of ``labelmix.platform.results`` (columns ``trial_id``, ``cost/hours``,
``val/miou``, ``pareto``, ``config/mix.full`` ...). Trials with an unknown cost or score (errored,
diverged, over budget) are not drawn. The HTML page has no external resources (inline SVG and a few
lines of JavaScript), so it opens offline and inside the MLflow artifact viewer.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from labelmix.platform.frontier import pareto_mask

COST, SCORE = "cost/hours", "val/miou"
X_LABEL = "annotation cost (hours)"
Y_LABEL = "foreground mIoU (val)"
MIX_TYPES = (("full", "F"), ("box", "B"), ("global", "G"), ("none", "N"))


def mix_label(row) -> str:
    """``F6% B40% G30% N24%`` from the ``config/mix.*`` fractions of one trial row (``?`` without a mix)."""
    values = [_float(row.get(f"config/mix.{kind}")) for kind, _ in MIX_TYPES]
    if all(v is None for v in values):
        return "?"
    return " ".join(f"{letter}{100 * (v or 0.0):.0f}%" for (_, letter), v in zip(MIX_TYPES, values))


def plotted(table: pd.DataFrame) -> pd.DataFrame:
    """The drawable trials (finite cost and score), with a ``pareto`` column, sorted by cost."""
    if table.empty or COST not in table or SCORE not in table:
        return pd.DataFrame(columns=["trial_id", COST, SCORE, "pareto"])
    frame = table.copy()
    frame[COST] = pd.to_numeric(frame[COST], errors="coerce")
    frame[SCORE] = pd.to_numeric(frame[SCORE], errors="coerce")
    if "pareto" not in frame:
        frame["pareto"] = pareto_mask(frame[COST].to_numpy(float), frame[SCORE].to_numpy(float))
    finite = np.isfinite(frame[COST].to_numpy(float)) & np.isfinite(frame[SCORE].to_numpy(float))
    frame = frame[finite].copy()
    frame["pareto"] = frame["pareto"].fillna(False).astype(bool)
    return frame.sort_values([COST, SCORE], ascending=[True, False]).reset_index(drop=True)


def frontier_png(table: pd.DataFrame, path, title: str | None = None) -> Path:
    """Static plot: every trial in grey, the frontier as a step line with markers and mix labels."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster heads; never opens a window
    import matplotlib.pyplot as plt

    frame = plotted(table)
    front = frame[frame["pareto"]]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    try:
        ax.scatter(frame[COST], frame[SCORE], s=22, color="0.65", alpha=0.8, label=f"trials ({len(frame)})", zorder=2)
        if len(front):
            # Step "post": between two frontier points the best reachable mIoU is the cheaper one's.
            xs, ys = front[COST].to_numpy(float), front[SCORE].to_numpy(float)
            right = max(float(frame[COST].max()), xs[-1]) * 1.02
            ax.step(np.append(xs, right), np.append(ys, ys[-1]), where="post", color="tab:red", lw=1.8, zorder=3)
            ax.scatter(xs, ys, s=46, color="tab:red", edgecolor="black", lw=0.6, label=f"frontier ({len(front)})", zorder=4)
            ax.margins(x=0.04, y=0.1)
        if frame.empty:
            ax.text(0.5, 0.5, "no finished trials with a cost and a score yet", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
        ax.set_xlabel(X_LABEL)
        ax.set_ylabel(Y_LABEL)
        ax.set_title(f"{title}: annotation cost vs mIoU" if title else "annotation cost vs mIoU")
        ax.grid(True, color="0.9", zorder=0)
        ax.set_xlim(left=0)
        if len(frame):
            ax.legend(loc="lower right", fontsize=8)
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


def frontier_html(table: pd.DataFrame, path, title: str | None = None) -> Path:
    """One self-contained page: SVG scatter + frontier step line, hover a point for its details."""
    frame = plotted(table)
    heading = f"{title}: annotation cost vs mIoU" if title else "annotation cost vs mIoU"
    if frame.empty:
        xt, yt = [0.0, 1.0], [0.0, 1.0]
    else:
        xt = nice_ticks(0.0, float(frame[COST].max()))
        yt = nice_ticks(float(frame[SCORE].min()), float(frame[SCORE].max()))
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
    parts.append(f'<text x="{_LEFT + plot_w / 2}" y="{_H - 12}" text-anchor="middle">{X_LABEL}</text>')
    parts.append(f'<text transform="translate(16 {_TOP + plot_h / 2}) rotate(-90)" text-anchor="middle">{Y_LABEL}</text>')
    parts.append(f'<text x="{_W / 2}" y="22" text-anchor="middle" class="title">{html.escape(heading)}</text>')

    front = frame[frame["pareto"]]
    if len(front):
        xs, ys = front[COST].to_numpy(float), front[SCORE].to_numpy(float)
        points = []
        for i, (x, y) in enumerate(zip(xs, ys)):
            if i:
                points.append(f"{sx(x):.1f},{sy(ys[i - 1]):.1f}")  # horizontal, then up: a step
            points.append(f"{sx(x):.1f},{sy(y):.1f}")
        points.append(f"{_LEFT + plot_w:.1f},{sy(ys[-1]):.1f}")
        parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="#d62728" stroke-width="2"/>')
    for _, row in pd.concat([frame[~frame["pareto"]], front]).iterrows():  # frontier drawn on top
        info = {
            "trial": str(row.get("trial_id", "")),
            "mix": mix_label(row),
            "hours": f"{float(row[COST]):.2f}",
            "mIoU": f"{float(row[SCORE]):.3f}",
            "ds_type": str(row.get("config/ds_type", "")) if pd.notna(row.get("config/ds_type")) else "",
            "frontier": "yes" if row["pareto"] else "no",
        }
        cls, r = ("front", 6) if row["pareto"] else ("trial", 4)
        parts.append(
            f'<circle class="{cls}" cx="{sx(float(row[COST])):.1f}" cy="{sy(float(row[SCORE])):.1f}" r="{r}" '
            f"data-info='{html.escape(json.dumps(info), quote=True)}'/>"
        )
    if frame.empty:
        parts.append(f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle" fill="#777">no finished trials with a cost and a score yet</text>')

    page = _PAGE.format(
        title=html.escape(heading), width=_W, height=_H, svg="\n".join(parts),
        count=len(frame), front=len(front),
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; color: #222; }}
svg text {{ font-size: 13px; }} svg text.tick {{ font-size: 11px; fill: #555; }} svg text.title {{ font-size: 15px; font-weight: bold; }}
circle.trial {{ fill: #aaa; fill-opacity: 0.8; }} circle.front {{ fill: #d62728; stroke: #000; stroke-width: 0.7; }}
circle:hover {{ stroke: #000; stroke-width: 2; cursor: pointer; }}
#tip {{ position: absolute; display: none; background: #fffff0; border: 1px solid #888; padding: 6px 8px;
        font-size: 12px; pointer-events: none; white-space: nowrap; box-shadow: 2px 2px 4px #ccc; }}
</style></head>
<body>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">
{svg}
</svg>
<p>{count} trials drawn, {front} on the frontier (red). Hover a point for its trial, mix, hours and mIoU.</p>
<div id="tip"></div>
<script>
(function () {{
  var tip = document.getElementById("tip");
  document.querySelectorAll("circle[data-info]").forEach(function (c) {{
    c.addEventListener("mousemove", function (e) {{
      var d = JSON.parse(c.getAttribute("data-info")), lines = [];
      for (var k in d) {{ lines.push("<b>" + k + "</b> " + String(d[k]).replace(/[&<>]/g, function (s) {{
        return {{"&": "&amp;", "<": "&lt;", ">": "&gt;"}}[s]; }})); }}
      tip.innerHTML = lines.join("<br>");
      tip.style.left = (e.pageX + 12) + "px"; tip.style.top = (e.pageY + 12) + "px"; tip.style.display = "block";
    }});
    c.addEventListener("mouseleave", function () {{ tip.style.display = "none"; }});
  }});
}})();
</script>
</body></html>
"""


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
