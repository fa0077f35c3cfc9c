"""Read a study back from MLflow: the frontier, and the best trial for an annotation budget.

``labelmix frontier`` and ``labelmix recommend`` work from the tracking server alone (no study folder,
no Ray): the study is the parent run (``labelmix.role=study``) of an experiment, the trials its child
runs. The study's objectives are the parent's ``labelmix.objectives`` tag (val/miou max, cost/hours
min for a study logged before the tag); the trial table, its frontier and the recommendation are
those of ``labelmix.platform.trial_table`` for them: only FINISHED trials count, the recommendation is
the best quality within the budget.

The CLI imports this module to build its parser, so the module itself imports only the standard
library (and trial_table, which does too); MLflow, pandas and mlflow_runs (which imports no Ray) load
when a command runs.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from labelmix.errors import UserError
from labelmix.platform.trial_table import (
    COST,
    RUNS_FILE,
    TAG_OBJECTIVES,
    TAG_PARENT,
    TAG_ROLE,
    TAG_STUDY,
    TAG_TRIAL,
    as_objectives,
    counted_hours,
    format_frontier,
    frontier_axes,
    frontier_rows,
    recommend_index,
    run_url,
    table_objectives,
    with_pareto,
)

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("table", "csv", "json", "parquet")


# --- finding the study ----------------------------------------------------------------------------


def open_store(uri: str):
    """An MlflowClient for ``uri``, after checking that there is something to read there."""
    from mlflow import MlflowClient

    from labelmix.platform.mlflow_runs import check_reachable

    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:" and not Path(path).is_file():
            raise UserError(f"tracking store {uri}: no MLflow database at {path}")
    else:
        check_reachable(uri, hint="check --tracking-uri (or MLFLOW_TRACKING_URI); `labelmix server status` tells "
                                  "whether a local server runs")
    return MlflowClient(tracking_uri=uri)


def find_experiment(client, name: str, uri: str):
    experiment = client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments(max_results=50))
        there = f"; experiments there: {', '.join(names)}" if names else "; it has no experiments"
        raise UserError(f"experiment {name!r} not found at {uri}{there}")
    return experiment


def find_study_run(client, experiment, study: Optional[str] = None):
    """The study's parent run: the one named ``study``, else the latest study of the experiment."""
    condition = f"tags.`{TAG_ROLE}` = 'study'"
    if study:
        condition += f" and tags.`{TAG_STUDY}` = '{study}'"
    from labelmix.platform.mlflow_runs import search_all

    runs = client.search_runs([experiment.experiment_id], condition, order_by=["attributes.start_time DESC"],
                              max_results=1)
    if runs:
        return runs[0]
    if not study:
        raise UserError(f"experiment {experiment.name!r} has no labelmix study (no run tagged {TAG_ROLE}=study)")
    studies = sorted({r.data.tags.get(TAG_STUDY, "?") for r in search_all(client, [experiment.experiment_id], f"tags.`{TAG_ROLE}` = 'study'")})
    raise UserError(f"no study {study!r} in experiment {experiment.name!r}; studies there: {', '.join(studies) or 'none'}")


def parse_param(text: str) -> Any:
    """MLflow keeps params as strings: '0.06' -> 0.06, '3' -> 3, 'True' -> True, 'None' -> None."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def study_objectives(parent) -> tuple[tuple[str, str], ...]:
    """The objectives recorded on the study's parent run (the default for a study without the tag)."""
    return as_objectives(parent.data.tags.get(TAG_OBJECTIVES))


def trials_table(client, experiment_id: str, parent_id: str, objectives=None) -> pd.DataFrame:
    """One row per child run: trial_id, run_id, status (MLflow's), last metrics, config/<param>; the
    ``pareto`` column flagged on ``objectives`` (default val/miou max, cost/hours min)."""
    import pandas as pd

    from labelmix.platform.mlflow_runs import search_all

    rows = []
    for run in search_all(client, [experiment_id], f"tags.`{TAG_PARENT}` = '{parent_id}'",
                          order_by=["attributes.start_time ASC"]):
        row = {"trial_id": run.data.tags.get(TAG_TRIAL, run.info.run_name), "run_id": run.info.run_id,
               "status": run.info.status}
        row.update(run.data.metrics)
        row.update({f"config/{k}": parse_param(v) for k, v in run.data.params.items()})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else ["trial_id", "run_id", "status"])
    metrics = sorted(c for c in frame.columns if c not in ("trial_id", "run_id", "status") and not c.startswith("config/"))
    (x, _), (y, _) = frontier_axes(objectives)
    first = [c for c in dict.fromkeys((x, y, COST)) if c in metrics]
    config = sorted(c for c in frame.columns if c.startswith("config/"))
    frame = frame[["trial_id", "run_id", "status", *first, *[m for m in metrics if m not in first], *config]]
    return with_pareto(frame, objectives)


def recommend_trial(table: pd.DataFrame, budget_hours: float) -> Optional[pd.Series]:
    """The best FINISHED trial, on the table's quality objective, whose cost/hours fits the budget."""
    index = recommend_index(table, budget_hours)
    return None if index is None else table.iloc[index]


# --- the commands ---------------------------------------------------------------------------------


def _locate(args):
    """(client, uri, experiment, parent run) from --tracking-uri / --experiment / --study / --study-dir."""
    saved: dict = {}
    if getattr(args, "study_dir", None):
        path = Path(args.study_dir).expanduser() / RUNS_FILE
        try:
            saved = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{args.study_dir}: no {RUNS_FILE}; was the study tracked in MLflow?") from None
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: not readable ({e})") from None
    uri = args.tracking_uri or saved.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise UserError("no tracking store: give --tracking-uri URI (or set MLFLOW_TRACKING_URI), or --study-dir "
                        "STUDY_FOLDER for a study that logged into its own folder")
    name = args.experiment or saved.get("experiment")
    if not name:
        raise UserError("--experiment NAME: which MLflow experiment holds the study (or --study-dir)")
    client = open_store(uri)
    experiment = find_experiment(client, name, uri)
    parent = find_study_run(client, experiment, args.study or saved.get("study"))
    return client, uri, experiment, parent


def cmd_frontier(args) -> int:
    if args.format == "parquet" and not args.out:
        raise UserError("--format parquet writes a binary file: give --out FILE")
    client, uri, experiment, parent = _locate(args)
    study = parent.data.tags.get(TAG_STUDY, parent.info.run_name)
    table = trials_table(client, experiment.experiment_id, parent.info.run_id, study_objectives(parent))
    front = frontier_rows(table)
    if args.log:
        from labelmix.platform.mlflow_runs import log_frontier

        log_frontier(client, parent.info.run_id, table, dict(zip(table["trial_id"], table["run_id"])), title=study)
    out = Path(args.out) if args.out else None
    if args.format == "table":
        finished = int((table["status"] == "FINISHED").sum())
        (x, _), (y, _) = frontier_axes(table_objectives(table))
        text = (f"study {study} (experiment {experiment.name}, run {parent.info.run_id}): {finished} of {len(table)} "
                f"trials finished, {len(front)} on the frontier of {y} vs {x}\n{format_frontier(front)}\n")
    elif args.format == "csv":
        text = front.drop(columns="pareto").to_csv(index=False)
    elif args.format == "json":
        text = json.dumps(_records(front.drop(columns="pareto")), indent=1) + "\n"
    else:
        front.drop(columns="pareto").to_parquet(out, index=False)
        text = None
    if text is not None:
        if out:
            out.write_text(text)
        else:
            sys.stdout.write(text)
    if out:
        print(f"wrote the frontier ({len(front)} trials) to {out}")
    if args.log:
        print(f"logged frontier.json, frontier.png, frontier.html and pareto tags to run {parent.info.run_id}")
    return 0


def cmd_recommend(args) -> int:
    budget = args.budget_hours
    if not math.isfinite(budget) or budget < 0:
        raise UserError(f"--budget-hours: must be a number >= 0, got {budget}")
    client, uri, experiment, parent = _locate(args)
    study = parent.data.tags.get(TAG_STUDY, parent.info.run_name)
    table = trials_table(client, experiment.experiment_id, parent.info.run_id, study_objectives(parent))
    best = recommend_trial(table, budget)
    if best is None:
        import numpy as np

        (x, _), (y, _) = frontier_axes(table_objectives(table))
        hours = counted_hours(table)
        if not np.isfinite(hours).any():
            needed = " and ".join(dict.fromkeys((x, y, COST)))
            print(f"study {study}: no finished trial with {needed} yet; nothing to recommend", file=sys.stderr)
        else:
            cheapest = table.iloc[int(np.nanargmin(hours))]
            print(f"study {study}: no finished trial fits {budget:g} annotation hours; the cheapest one "
                  f"({cheapest['trial_id']}) needs {float(cheapest[COST]):.2f} h", file=sys.stderr)
        return 1
    print(format_recommendation(best, budget, study, table_objectives(table)))
    url = run_url(uri, experiment.experiment_id, best["run_id"])
    print(f"  MLflow run      {url or best['run_id']}")
    return 0


def format_recommendation(row: pd.Series, budget: float, study: str, objectives=None) -> str:
    """The recommended trial: its quality objective, hours, the other objective, test mIoU, config."""
    import pandas as pd

    from labelmix.platform.plots import mix_label

    (x, _), (y, _) = frontier_axes(objectives)
    lines = [
        f"study {study}: best finished trial within {budget:g} annotation hours: {row['trial_id']}",
        f"  mix             {mix_label(row)}  (full masks, boxes, global labels, unlabeled)",
        f"  {y:<15} {float(row[y]):.4f}",
        f"  {COST:<15} {float(row[COST]):.2f}",
    ]
    for extra in dict.fromkeys((x, "val/miou", "test/miou", "cost/reduction")):
        if extra in (y, COST):
            continue
        if extra in row and pd.notna(row[extra]):
            lines.append(f"  {extra:<15} {float(row[extra]):.4f}")
    config = [(k.removeprefix("config/"), v) for k, v in row.items() if k.startswith("config/") and _present(v)]
    if config:
        lines.append("  config:")
        width = max(len(k) for k, _ in config)
        lines += [f"    {k:<{width}} = {v}" for k, v in config]
    return "\n".join(lines)


def _present(value) -> bool:
    return not (value is None or (isinstance(value, float) and math.isnan(value)))


def _records(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready rows: NaN -> null, numpy scalars -> Python numbers."""
    return json.loads(frame.to_json(orient="records"))


def _locating_args(p) -> None:
    p.add_argument("--experiment", default=None, help="MLflow experiment of the study (default: from --study-dir)")
    p.add_argument("--study", default=None, help="study name within the experiment (default: its latest study)")
    p.add_argument("--study-dir", default=None, help=f"a study folder: tracking URI, experiment and study from its {RUNS_FILE}")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")


def register(sub) -> None:
    p = sub.add_parser("frontier", help="the cost-vs-mIoU frontier of a study, read back from MLflow")
    _locating_args(p)
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    p.add_argument("--out", default=None, help="write to this file instead of stdout (required for parquet)")
    p.add_argument("--log", action="store_true", help="also log frontier.json/png/html and pareto tags to the study run")
    p.set_defaults(func=cmd_frontier)

    p = sub.add_parser("recommend", help="the best finished trial within an annotation budget, read back from MLflow")
    _locating_args(p)
    p.add_argument("--budget-hours", type=float, required=True, help="annotation hours available")
    p.set_defaults(func=cmd_recommend)
