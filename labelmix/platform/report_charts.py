"""The report's small charts (``labelmix report``): learning curves of every trial, and mIoU against
the mask fraction with one colour per dominant weak-label type. Plain SVG strings, no Ray, no
plotting library (the frontier chart is plots.frontier_svg)."""

from __future__ import annotations

import html
import itertools
import json
import math
from typing import TYPE_CHECKING

from labelmix.platform.trial_table import SCORE, frontier_axes, objective_values, table_objectives

if TYPE_CHECKING:
    import pandas as pd

WEAK = {"box": "#ff7f0e", "global": "#2ca02c", "none": "#9467bd", "full only": "#1f77b4"}
OTHER = ("#8c564b", "#e377c2", "#17becf", "#bcbd22")  # ties of two or three weak-label types
W, H, LEFT, RIGHT, TOP, BOTTOM = 620, 360, 60, 130, 34, 48  # small plots: the legend sits on the right


def quality(table: pd.DataFrame, objectives=None):
    """The quality axis (the frontier's y) of each row as floats, NaN where the row does not count."""
    return objective_values(table, objectives)[:, 1]


def cell_text(value) -> str:
    """A cell's text: floats with 3 decimals (3 digits below 0.01), unset as an empty string."""
    import numpy as np

    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.3f}" if value == 0 or abs(value) >= 0.01 else f"{float(value):.3g}"
    return str(value)


def _axes(xt: list[float], yt: list[float], xlabel: str, ylabel: str, title: str):
    """The frame, grid, ticks and labels of a small plot: (svg parts, x -> px, y -> px)."""
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def sx(v: float) -> float:
        return LEFT + (v - xt[0]) / (xt[-1] - xt[0]) * pw

    def sy(v: float) -> float:
        return TOP + ph - (v - yt[0]) / (yt[-1] - yt[0]) * ph

    parts = [f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="white" stroke="#999"/>']
    for v in xt:
        parts.append(f'<line x1="{sx(v):.1f}" y1="{TOP}" x2="{sx(v):.1f}" y2="{TOP + ph}" stroke="#eee"/>'
                     f'<text x="{sx(v):.1f}" y="{TOP + ph + 15}" text-anchor="middle" class="tick">{v:g}</text>')
    for v in yt:
        parts.append(f'<line x1="{LEFT}" y1="{sy(v):.1f}" x2="{LEFT + pw}" y2="{sy(v):.1f}" stroke="#eee"/>'
                     f'<text x="{LEFT - 5}" y="{sy(v) + 4:.1f}" text-anchor="end" class="tick">{v:g}</text>')
    parts.append(f'<text x="{LEFT + pw / 2}" y="{H - 10}" text-anchor="middle">{html.escape(xlabel)}</text>'
                 f'<text transform="translate(14 {TOP + ph / 2}) rotate(-90)" text-anchor="middle">{html.escape(ylabel)}</text>'
                 f'<text x="{LEFT + pw / 2}" y="20" text-anchor="middle" class="title">{html.escape(title)}</text>')
    return parts, sx, sy


def _svg(parts: list[str]) -> str:
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}">\n' + "\n".join(parts) + "\n</svg>"


def _legend(entries: list[tuple[str, str]]) -> list[str]:
    return [f'<circle cx="{W - RIGHT + 14}" cy="{TOP + 8 + 16 * i}" r="4" fill="{colour}"/>'
            f'<text x="{W - RIGHT + 22}" y="{TOP + 12 + 16 * i}" class="tick">{html.escape(name)}</text>'
            for i, (name, colour) in enumerate(entries)]


def _ticks(values, low=None) -> list[float]:
    """Axis ticks covering the values (and ``low``), with a little room so no marker sits on the frame."""
    from labelmix.platform.plots import nice_ticks

    values = [float(v) for v in values if math.isfinite(float(v))] or [0.0, 1.0]
    bottom, top = (min(values) if low is None else min(low, *values)), max(values)
    room = 0.03 * ((top - bottom) or abs(top) or 1.0)
    return nice_ticks(bottom if low is not None and bottom == low else bottom - room, top + room)


def curves_svg(curves: dict[str, list[tuple[float, float]]], front: set[str], reference: set[str], metric: str = SCORE) -> str:
    """One polyline per trial with points (``data-trial`` = its id): frontier trials red on top,
    reference trials blue dashed, the others grey."""
    from labelmix.platform.plots import LABELS

    drawn = {t: p for t, p in curves.items() if p}
    xt = _ticks([x for p in drawn.values() for x, _ in p], low=0.0)
    yt = _ticks([y for p in drawn.values() for _, y in p])
    parts, sx, sy = _axes(xt, yt, "epoch", LABELS.get(metric, (metric,))[0], f"learning curves ({len(drawn)} trials)")
    order = sorted(drawn, key=lambda t: (t in front, t in reference))  # highlighted ones drawn last
    for trial in order:
        cls = "front" if trial in front else "reference" if trial in reference else "trial"
        points = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in drawn[trial])
        parts.append(f'<polyline class="curve {cls}" data-trial="{html.escape(trial)}" points="{points}">'
                     f'<title>{html.escape(trial)}: {drawn[trial][-1][1]:.3f} at epoch {drawn[trial][-1][0]:g}</title></polyline>')
    parts += _legend([("frontier", "#d62728"), ("reference", "#1f77b4"), ("other", "#999")])
    return _svg(parts)


def dominant_weak(row) -> str:
    """The weak-label type with the largest fraction (box, global or none; a tie joins them:
    ``box+global``); ``full only`` without weak labels."""
    from labelmix.platform.plots import _float

    fractions = {kind: _float(row.get(f"config/mix.{kind}")) or 0.0 for kind in ("box", "global", "none")}
    top = max(fractions.values())
    return "+".join(k for k, v in fractions.items() if v == top) if top > 0 else "full only"


def mix_effect_svg(table: pd.DataFrame, objectives=None) -> str:
    """Quality against the mask fraction: a point per counted trial, coloured by its dominant weak-label
    type, and per type a line through the mean at each fraction."""
    import numpy as np
    import pandas as pd

    from labelmix.platform.plots import LABELS, mix_label

    metric = frontier_axes(table_objectives(table) if objectives is None else objectives)[1][0]
    full = pd.to_numeric(table["config/mix.full"], errors="coerce").to_numpy(float) if "config/mix.full" in table else np.full(len(table), np.nan)
    frame = table.assign(_x=full, _y=quality(table, objectives))
    frame = frame[np.isfinite(frame["_x"]) & np.isfinite(frame["_y"])]
    frame = frame.assign(_kind=[dominant_weak(row) for _, row in frame.iterrows()])
    parts, sx, sy = _axes(_ticks(frame["_x"], low=0.0), _ticks(frame["_y"]), "mask fraction (config/mix.full)",
                          LABELS.get(metric, (metric,))[0], "quality vs mask fraction, by dominant weak label")
    kinds = sorted(set(frame["_kind"]), key=lambda k: (list(WEAK).index(k) if k in WEAK else len(WEAK), k))
    others = itertools.cycle(OTHER)
    colour = {k: WEAK[k] if k in WEAK else next(others) for k in kinds}
    for kind in kinds:
        group = frame[frame["_kind"] == kind]
        means = group.groupby("_x")["_y"].mean().sort_index()
        points = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in means.items())
        parts.append(f'<polyline class="series" data-kind="{kind}" points="{points}" fill="none" stroke="{colour[kind]}" stroke-width="1.5"/>')
        for _, row in group.iterrows():
            info = {"trial": str(row.get("trial_id", "")), "mix": mix_label(row), metric: f"{row['_y']:.3f}",
                    "case": cell_text(row.get("case"))}
            parts.append(f'<circle cx="{sx(row["_x"]):.1f}" cy="{sy(row["_y"]):.1f}" r="4" fill="{colour[kind]}" '
                         f"data-info='{html.escape(json.dumps(info), quote=True)}'/>")
    if frame.empty:
        parts.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" fill="#777">no finished trial with a mix and a score</text>')
    parts += _legend([(f"mostly {k}" if k != "full only" else k, colour[k]) for k in kinds])
    return _svg(parts)
