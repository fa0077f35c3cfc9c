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
The charts of parts 3 and 4 are report_charts.py. The CLI imports this module to build its parser,
so it imports only the standard library at the top (and trial_table and report_charts, which do
too); pandas and the plots load when a report is built.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from labelmix.errors import UserError
from labelmix.platform.trial_folders import RESULT_FILE, result_lines, trial_folders
from labelmix.platform.report_charts import cell_text, curves_svg, mix_effect_svg, quality
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
    read_table,
    reference_rows,
    table_objectives,
    with_pareto,
)

if TYPE_CHECKING:
    import pandas as pd

REPORT_FILE = "report.html"
WITHIN = TOLERANCE  # the band around the reference: "within 0.05 of the full-mask quality"
CATEGORIES = 8  # a numeric setting with at most this many values is shown as a mean per value


# --- the study's data ------------------------------------------------------------------------------


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
    """Trial id -> (epoch, metric) points from each trial folder's result.json (unreadable lines skipped)."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for trial_id, folder in trial_folders(study_dir).items():
        if not (folder / RESULT_FILE).is_file():
            continue
        points = []
        for result in result_lines(folder):
            try:
                point = (float(result.get("epoch", result.get("training_iteration"))), float(result[metric]))
            except (ValueError, TypeError, KeyError):
                continue
            if all(math.isfinite(v) for v in point):
                points.append(point)
        curves[trial_id] = sorted(points)
    return curves


# --- the page's parts -----------------------------------------------------------------------------


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
        keys = pd.cut(numeric, CATEGORIES).astype(str) if many else table[column].map(lambda v: cell_text(v) or "(unset)")
        stats = pd.DataFrame({"key": keys.to_numpy(), "y": score}).dropna().groupby("key")["y"].agg(["count", "mean", "std"])
        if stats.empty:
            continue
        best = float(np.nanmax(np.abs(stats["mean"]))) or 1.0
        rows = "".join(
            f'<tr><td>{html.escape(str(key))}</td><td>{int(s["count"])}</td><td>{s["mean"]:.3f}</td>'
            f'<td>{cell_text(s["std"])}</td><td><div class="bar" style="width:{200 * abs(s["mean"]) / best:.0f}px"></div></td></tr>'
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
            text = cell_text(row[c])
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
    untracked = f"{args.study}: no {RUNS_FILE} (the study was not tracked in MLflow); the report was not logged"
    print(untracked if run is None else f"logged {REPORT_FILE} to MLflow run {run}")
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
