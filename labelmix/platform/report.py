"""``labelmix report STUDY``: one self-contained HTML page that summarises a study folder.

The page (``<study>/report.html``; no external resources, so it opens offline and in MLflow's artifact
viewer) has four parts, each drawn by a small function of the trial table (``trials.parquet``, read
with :func:`labelmix.platform.trial_table.read_table`) and the trial folders:

1. the frontier (plots.frontier_svg) with the reference: rows whose boolean ``reference`` column is
   True (the full-mask trial) are not part of the searched frontier; they are a dashed line at their
   quality and a band ``WITHIN`` of it;
2. the trial table, sortable by clicking a header (a few lines of inline JavaScript);
3. the learning curves: the quality metric per epoch from each ``run_trial_<id>_...`` folder's
   ``result.json`` (one JSON object per line), frontier trials in red;
4. the effect of each axis: quality against the mask fraction, one series per dominant weak-label
   type, and the mean quality per value of each other searched setting.

:func:`log_report` puts the page on the study's parent MLflow run (from ``mlflow_runs.json``).
The CLI imports this module to build its parser, so it imports only the standard library at the
top (and trial_table, which does too); pandas and the plots load when a report is built.
"""

from __future__ import annotations

import html
import itertools
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from labelmix.errors import UserError
from labelmix.platform.trial_table import (
    COST,
    MIX_COLUMNS,
    REFERENCE,
    RUNS_FILE,
    SCORE,
    TOLERANCE,
    TRIALS_FILE,
    counted,
    frontier_axes,
    objective_values,
    read_table,
    reference_rows,
    table_objectives,
    with_pareto,
)

if TYPE_CHECKING:
    import pandas as pd

REPORT_FILE = "report.html"
WITHIN = TOLERANCE  # the band around the reference: "within 0.05 of the full-mask quality"
TRIAL_FOLDER = re.compile(r"^run_trial_([0-9a-f]{8})(?:_|$)")  # Tune's <trainable>_<trial id>_... folders
CATEGORIES = 8  # a numeric setting with at most this many values is shown as a mean per value
WEAK = {"box": "#ff7f0e", "global": "#2ca02c", "none": "#9467bd", "full only": "#1f77b4"}
OTHER = ("#8c564b", "#e377c2", "#17becf", "#bcbd22")  # ties of two or three weak-label types
W, H, LEFT, RIGHT, TOP, BOTTOM = 620, 360, 60, 130, 34, 48  # small plots: the legend sits on the right


# --- the study's data ------------------------------------------------------------------------------


def quality(table: pd.DataFrame, objectives=None):
    """The quality axis (the frontier's y) of each row as floats, NaN where the row does not count."""
    return objective_values(table, objectives)[:, 1]


def reference_line(table: pd.DataFrame, objectives=None) -> Optional[tuple[str, float]]:
    """(label, quality) of the reference: the mean over the finished reference rows; None without one."""
    import numpy as np

    ref = reference_rows(table)
    values = quality(table, objectives)[ref]
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    names = sorted({str(c) for c in table.loc[ref, "case"].dropna()}) if "case" in table else []
    label = f"reference ({', '.join(names)})" if names else "reference"
    return (f"{label}, mean of {len(values)}" if len(values) > 1 else label), float(values.mean())


def searched_settings(table: pd.DataFrame) -> list[str]:
    """``config/...`` columns (mix fractions aside) whose value differs between rows, unset counted as a value."""
    return [c for c in table.columns
            if c.startswith("config/") and c not in MIX_COLUMNS and table[c].nunique(dropna=False) > 1]


def learning_curves(study_dir: Path, metric: str = SCORE) -> dict[str, list[tuple[float, float]]]:
    """Trial id -> (epoch, metric) points from each trial folder's result.json (half-written lines skipped)."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for folder in sorted(Path(study_dir).iterdir()):
        match = TRIAL_FOLDER.match(folder.name)
        if not match or not (folder / "result.json").is_file():
            continue
        points = []
        for line in (folder / "result.json").read_text(errors="replace").splitlines():
            try:
                result = json.loads(line)
                point = (float(result.get("epoch", result.get("training_iteration"))), float(result[metric]))
            except (ValueError, TypeError, KeyError, AttributeError):
                continue
            if all(math.isfinite(v) for v in point):
                points.append(point)
        curves[match.group(1)] = sorted(points)
    return curves


# --- pictures --------------------------------------------------------------------------------------


def _text(value) -> str:
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
                    "case": _text(row.get("case"))}
            parts.append(f'<circle cx="{sx(row["_x"]):.1f}" cy="{sy(row["_y"]):.1f}" r="4" fill="{colour[kind]}" '
                         f"data-info='{html.escape(json.dumps(info), quote=True)}'/>")
    if frame.empty:
        parts.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" fill="#777">no finished trial with a mix and a score</text>')
    parts += _legend([(f"mostly {k}" if k != "full only" else k, colour[k]) for k in kinds])
    return _svg(parts)


def setting_effects_html(table: pd.DataFrame, objectives=None) -> str:
    """Per searched setting (and ``case``): the mean quality per value, as a small table with bars
    (report_html passes the searched trials only: the reference is another mix, not a setting's effect)."""
    import numpy as np
    import pandas as pd

    score = quality(table, objectives)
    columns = (["case"] if "case" in table and table["case"].nunique(dropna=False) > 1 else []) + searched_settings(table)
    blocks = []
    for column in columns:
        numeric = pd.to_numeric(table[column], errors="coerce")
        many = numeric.notna().all() and numeric.nunique() > CATEGORIES
        keys = pd.cut(numeric, CATEGORIES).astype(str) if many else table[column].map(lambda v: _text(v) or "(unset)")
        stats = pd.DataFrame({"key": keys.to_numpy(), "y": score}).dropna().groupby("key")["y"].agg(["count", "mean", "std"])
        if stats.empty:
            continue
        best = float(np.nanmax(np.abs(stats["mean"]))) or 1.0
        rows = "".join(
            f'<tr><td>{html.escape(str(key))}</td><td>{int(s["count"])}</td><td>{s["mean"]:.3f}</td>'
            f'<td>{_text(s["std"])}</td><td><div class="bar" style="width:{200 * abs(s["mean"]) / best:.0f}px"></div></td></tr>'
            for key, s in stats.sort_values("mean", ascending=False).iterrows())
        name = column.removeprefix("config/")
        blocks.append(f'<table class="effect" data-setting="{html.escape(column)}"><caption>{html.escape(name)}'
                      f'{" (binned)" if many else ""}</caption><tr><th>value</th><th>trials</th><th>mean</th><th>std</th>'
                      f'<th></th></tr>{rows}</table>')
    return "\n".join(blocks) or "<p>no searched setting besides the mix.</p>"


def table_html(table: pd.DataFrame, objectives=None) -> str:
    """The sortable trial table: ids, case, status, mix, cost, quality, searched settings, pareto flag."""
    (x, _), (y, _) = frontier_axes(table_objectives(table) if objectives is None else objectives)
    wanted = ["trial_id", "case", REFERENCE, "status", *MIX_COLUMNS, COST, "cost/reduction", x, y, SCORE,
              *searched_settings(table), "pareto"]
    columns = [c for c in dict.fromkeys(wanted) if c in table]
    head = "".join(f'<th title="{html.escape(c)}">{html.escape(c.removeprefix("config/"))}</th>' for c in columns)
    body = []
    for _, row in table.iterrows():
        cells = []
        for c in columns:
            text = _text(row[c])
            raw = "" if text == "" else str(row[c])
            cells.append(f'<td data-v="{html.escape(raw, quote=True)}">{html.escape(text)}</td>')
        cls = ' class="front"' if bool(row.get("pareto", False)) else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f'<table class="sortable" id="trial-table"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(body) + "\n</tbody></table>"


# --- the page --------------------------------------------------------------------------------------


def report_html(table: pd.DataFrame, curves: dict[str, list[tuple[float, float]]], title: str) -> str:
    """The whole page from a trial table (as read_table gives it) and the learning curves."""
    from labelmix.platform.plots import SVG_STYLE, TIP_SCRIPT, frontier_svg

    objectives = table_objectives(table)
    flagged = with_pareto(table, objectives)  # the reference is never on the front
    ref = reference_rows(flagged)
    reference = reference_line(flagged, objectives)
    front = set(flagged.loc[flagged["pareto"].to_numpy(bool), "trial_id"].astype(str)) if "trial_id" in flagged else set()
    ref_ids = set(flagged.loc[ref, "trial_id"].astype(str)) if "trial_id" in flagged else set()
    (x, _), (y, _) = frontier_axes(objectives)
    finished = int(counted(flagged).sum())
    summary = (f"{len(flagged)} trials, {finished} finished, {len(front)} on the frontier of {y} vs {x}"
               + (f"; {reference[0]}: {y} {reference[1]:.3f}" if reference else "; no reference trial"))
    missing = len(set(flagged.get("trial_id", [])) - set(curves))
    return _PAGE.format(
        title=html.escape(title), style=SVG_STYLE, summary=html.escape(summary),
        frontier=frontier_svg(flagged[~ref], title, objectives, reference=reference, within=WITHIN),
        table=table_html(flagged, objectives), curves=curves_svg(curves, front, ref_ids, y),
        curves_note=f"Without a result.json here: {missing} of the table's trials." if missing else "",
        mix=mix_effect_svg(flagged, objectives), settings=setting_effects_html(flagged[~ref], objectives),
        tip=TIP_SCRIPT, sort=_SORT_SCRIPT,
        reference_note=(f"Blue: the reference ({int(ref.sum())} trial(s), not searched, not drawn as points) "
                        f"and the band within {WITHIN:g} of its {y}. " if reference else ""),
    )


def study_name(study_dir: Path) -> str:
    """The ``name`` of the study's spec.yaml, else the folder's name."""
    import yaml

    try:
        name = yaml.safe_load((Path(study_dir) / "spec.yaml").read_text()).get("name")
    except (OSError, yaml.YAMLError, AttributeError):
        name = None
    return str(name) if name else Path(study_dir).resolve().name


def write_report(study_dir: Path, out: Path | None = None) -> Path:
    """Write the study's report page (default ``<study_dir>/report.html``); returns its path."""
    study_dir = Path(study_dir).expanduser()
    if not study_dir.is_dir():
        raise UserError(f"{study_dir}: no such study folder")
    if not (study_dir / TRIALS_FILE).is_file():
        raise UserError(f"{study_dir}: no {TRIALS_FILE} (not a labelmix study folder, or no trial has finished yet)")
    try:
        table = read_table(study_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"{study_dir / TRIALS_FILE}: not a readable trial table ({e})") from None
    objectives = table_objectives(table)
    out = study_dir / REPORT_FILE if out is None else Path(out).expanduser()
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    curves = learning_curves(study_dir, frontier_axes(objectives)[1][0])
    out.write_text(report_html(table, curves, study_name(study_dir)), encoding="utf-8")
    return out


def log_report(study_dir: Path, path: Path, tracking_uri: Optional[str] = None) -> Optional[str]:
    """Log ``path`` as the artifact ``report.html`` of the study's parent run, named in the study's
    ``mlflow_runs.json``; returns the run id, or None when the study has no such record."""
    from labelmix.mlflow_server import mask_password
    from labelmix.platform.browse import open_store
    from labelmix.platform.mlflow_runs import use_credentials

    record = Path(study_dir) / RUNS_FILE
    if not record.is_file():
        return None
    try:
        saved = json.loads(record.read_text())
        parent, uri = saved["parent"], tracking_uri or saved.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{record}: not a readable MLflow record ({e})") from None
    if not parent or not uri:
        raise UserError(f"{record}: names no study run or no tracking URI; give --tracking-uri, or --no-mlflow")
    uri = use_credentials(uri)
    if "***" in uri:  # mlflow_runs.json keeps a database URI with its password masked
        raise UserError(f"{record}: the tracking URI {uri} has its password masked; give --tracking-uri with the full URI")
    from mlflow.exceptions import MlflowException

    client = open_store(uri)
    try:
        client.get_run(parent)
    except MlflowException:
        raise UserError(f"study run {parent} (from {record}) not found at {mask_password(uri)}") from None
    with tempfile.TemporaryDirectory() as tmp:
        named = Path(path)
        if named.name != REPORT_FILE:  # the artifact takes the file's name
            named = Path(shutil.copy(path, Path(tmp) / REPORT_FILE))
        client.log_artifact(parent, str(named))
    return parent


def cmd_report(args) -> int:
    path = write_report(Path(args.study), Path(args.out) if args.out else None)
    print(f"wrote {path}")
    if args.no_mlflow:
        return 0
    run = log_report(Path(args.study), path, args.tracking_uri)
    if run is None:
        print(f"{args.study}: no {RUNS_FILE} (the study was not tracked in MLflow); the report was not logged")
    else:
        print(f"logged {REPORT_FILE} to MLflow run {run}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="one HTML page summarising a study folder: frontier, trials, curves, effects")
    p.add_argument("study", help="the study folder (holds trials.parquet)")
    p.add_argument("--out", default=None, help=f"file to write (default STUDY/{REPORT_FILE})")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the page to the study's MLflow run")
    p.add_argument("--tracking-uri", default=None, help=f"MLflow tracking URI (default: the one in STUDY/{RUNS_FILE})")
    p.set_defaults(func=cmd_report)


_SORT_SCRIPT = """<script>
function sortTable(th) {  // numbers numerically, text alphabetically, empty cells last; a second click reverses
  var i = th.cellIndex, body = th.closest("table").tBodies[0], rows = Array.prototype.slice.call(body.rows);
  var up = th.getAttribute("data-dir") !== "up";
  th.parentNode.querySelectorAll("th").forEach(function (h) { h.removeAttribute("data-dir"); });
  th.setAttribute("data-dir", up ? "up" : "down");
  rows.sort(function (a, b) {
    var p = a.cells[i].getAttribute("data-v"), q = b.cells[i].getAttribute("data-v");
    if (p === "" || q === "") return (p === "") - (q === "");
    var m = parseFloat(p), n = parseFloat(q), c = isNaN(m) || isNaN(n) ? p.localeCompare(q) : m - n;
    return up ? c : -c;
  });
  rows.forEach(function (r) { body.appendChild(r); });
}
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () { sortTable(th); });
});
</script>"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}: study report</title>
<style>
body {{ font-family: sans-serif; margin: 16px; color: #222; }}
{style}
table {{ border-collapse: collapse; font-size: 12px; margin: 8px 16px 16px 0; }}
th, td {{ border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }}
th {{ background: #f4f4f4; }} table.sortable th {{ cursor: pointer; }}
th[data-dir=up]::after {{ content: " \\25B2"; }} th[data-dir=down]::after {{ content: " \\25BC"; }}
tr.front td {{ background: #fde8e8; }} table.effect {{ display: inline-table; vertical-align: top; }}
caption {{ font-weight: bold; text-align: left; }} div.bar {{ height: 9px; background: #7aa6d6; }}
polyline.curve {{ fill: none; stroke: #999; stroke-width: 1; stroke-opacity: 0.7; }}
polyline.curve.front {{ stroke: #d62728; stroke-width: 2; stroke-opacity: 1; }}
polyline.curve.reference {{ stroke: #1f77b4; stroke-width: 2; stroke-dasharray: 5 3; stroke-opacity: 1; }}
polyline.curve:hover {{ stroke-width: 3; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{summary}</p>
<h2 id="frontier">Frontier</h2>
{frontier}
<p>Red: the frontier of the searched trials. {reference_note}Hover a point for its trial, mix and objectives.</p>
<h2 id="trials">Trials</h2>
<p>Click a column header to sort; frontier trials are shaded.</p>
{table}
<h2 id="curves">Learning curves</h2>
{curves}
<p>{curves_note} Hover a line for its trial.</p>
<h2 id="effects">Effect of each axis</h2>
{mix}
<div>{settings}</div>
{tip}
{sort}
</body></html>
"""
