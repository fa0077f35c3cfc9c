"""What a user clicks in MLflow's UI (3.17) for a study, Ray-free: the runs-table views and the links.

The experiment carries the tag ``mlflow.experimentKind = custom_model_development`` and two shared
runs-table views per study (experiment tags ``mlflow.sharedViewState.labelmix-<study>-frontier`` /
``-trials``: the frontier, cheapest first, and every trial, best first, each with the mix, cost and
quality columns shown; written by :func:`tag_experiment`). The UI opens an experiment on its GenAI
overview unless the URL says ``workflowType=machine_learning``, so every URL built here
(:func:`frontier_runs_url`, :func:`parent_run_url`, :func:`artifact_url`, :func:`study_links`) says it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote, urlsplit

from labelmix.platform.mlflow_runs import read_runs_record
from labelmix.platform.trial_table import COST, MIX_COLUMNS, SCORE, TAG_PARETO, TAG_STUDY, TAG_TRIAL, frontier_axes, run_url

TAG_EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
SHARED_VIEW = "mlflow.sharedViewState."  # + key: a runs-table view, opened by ?viewStateShareKey=key
# The UI's own switch between its GenAI side (the default: an experiment opens on a traces overview)
# and its model-training side (runs, models); the experiment kind tag alone does not switch it.
ML_WORKFLOW = "workflowType=machine_learning"
TAG_CASE = "case"  # on a child run: the space.cases case of the trial, as in the trial table
VIEWS = ("frontier", "trials")


def view_key(study: str, view: str) -> str:
    """The share key of a study's runs-table view (``frontier`` or ``trials``)."""
    if view not in VIEWS:
        raise ValueError(f"view: one of {VIEWS}, got {view!r}")
    return f"labelmix-{study}-{view}"


def runs_view(study: str, view: str, objectives: Any = None, settings: tuple[str, ...] = ()) -> dict[str, Any]:
    """The state of a runs-table view as MLflow's UI shares it (the JSON of a ``mlflow.sharedViewState.``
    experiment tag): ``frontier``: the study's frontier trials, cheapest first; ``trials``: all its
    trials, best first. Both show the mix fractions and ``settings`` (params), the cost and quality
    metrics, and the ``case`` and ``pareto`` tags as columns."""
    view_key(study, view)  # a known view
    (x, x_mode), (y, y_mode) = frontier_axes(objectives)
    study_filter = f'tags.`{TAG_STUDY}` = "{study}"'
    if view == "frontier":
        search, order, ascending = f'{study_filter} and tags.{TAG_PARETO} = "true"', x, x_mode == "min"
    else:
        search, order, ascending = f'{study_filter} and tags.`{TAG_TRIAL}` != ""', y, y_mode == "min"
    params = [c.removeprefix("config/") for c in MIX_COLUMNS] + list(settings)
    metrics = list(dict.fromkeys([x, y, COST, "cost/reduction", SCORE]))
    columns = ([f"params.`{p}`" for p in dict.fromkeys(params)] + [f"metrics.`{m}`" for m in metrics]
               + [f"tags.`{t}`" for t in (TAG_CASE, TAG_PARETO)])
    return {"searchFilter": search, "orderByKey": f"metrics.`{order}`", "orderByAsc": ascending,
            "selectedColumns": columns}


def tag_experiment(client, experiment_id: str, study: str, objectives: Any = None, settings: tuple[str, ...] = ()) -> None:
    """A model-training experiment (unless someone chose its kind), and the study's two runs-table
    views (rewritten when they differ: the columns follow the code). MLflow's errors pass through."""
    tags = client.get_experiment(experiment_id).tags
    if TAG_EXPERIMENT_KIND not in tags:
        client.set_experiment_tag(experiment_id, TAG_EXPERIMENT_KIND, TRAINING_KIND)
    for view in VIEWS:
        state = json.dumps(runs_view(study, view, objectives, settings), sort_keys=True)
        key = SHARED_VIEW + view_key(study, view)
        if tags.get(key) != state:
            client.set_experiment_tag(experiment_id, key, state)


def experiment_url(uri: str, experiment_id: str) -> Optional[str]:
    """The experiment's runs table in the MLflow UI, on its model-training side (servers only), with
    the filter and order its user last left there (the UI keeps them per experiment)."""
    if urlsplit(uri).scheme.lower() not in ("http", "https"):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs?{ML_WORKFLOW}"


def frontier_runs_url(uri: str, experiment_id: str, study: Optional[str] = None,
                      objectives: Any = None) -> Optional[str]:
    """The frontier trials in the runs table (servers only). With ``study``: its shared ``frontier``
    view (columns included; the experiment tag is written by :func:`tag_experiment`); without: the
    filter ``tags.pareto = "true"`` in the URL, sorted cheapest first."""
    base = experiment_url(uri, experiment_id)
    if base is None:
        return None
    if study is not None:
        return f"{base}&viewStateShareKey={quote(view_key(study, 'frontier'), safe='')}"
    (x, x_mode), _ = frontier_axes(objectives)
    search, order = quote(f'tags.{TAG_PARETO} = "true"', safe=""), quote(f"metrics.`{x}`", safe="")
    return f"{base}&searchFilter={search}&orderByKey={order}&orderByAsc={str(x_mode == 'min').lower()}"


def trials_runs_url(uri: str, experiment_id: str, study: str) -> Optional[str]:
    """All trials of the study in the runs table, best first (its shared ``trials`` view; servers only)."""
    base = experiment_url(uri, experiment_id)
    return None if base is None else f"{base}&viewStateShareKey={quote(view_key(study, 'trials'), safe='')}"


def parent_run_url(uri: str, experiment_id: str, run_id: str) -> Optional[str]:
    """A run's page (the study's parent run: its trials listed as child runs, its artifacts)."""
    page = run_url(uri, experiment_id, run_id)
    return None if page is None else f"{page}?{ML_WORKFLOW}"


def artifact_url(uri: str, experiment_id: str, run_id: str, path: str) -> Optional[str]:
    """The run page's artifact viewer on ``path`` (``frontier.html`` is drawn in the page; the server
    sends a raw artifact only as a download)."""
    page = run_url(uri, experiment_id, run_id)
    return None if page is None else f"{page}/artifacts/{quote(path)}?{ML_WORKFLOW}"


def study_links(study_dir: Path, server: Optional[str] = None) -> dict[str, str]:
    """What to open for a tracked study, from its ``mlflow_runs.json``: ``frontier`` (the frontier
    trials), ``trials`` (every trial, best first), ``study run`` (the parent run), ``frontier plot``
    (its ``frontier.html``) and, once ``labelmix report`` wrote ``report.html`` into the folder (it logs
    it to the parent run too), ``report``. Empty when the study was not tracked or its tracking URI is
    not a server (a SQLite file: :func:`browse_command` serves it; pass that server as ``server``)."""
    from labelmix.mlflow_server import split_credentials

    record = read_runs_record(study_dir)
    experiment, parent, study = record.get("experiment_id"), record.get("parent"), record.get("study")
    uri = server or record.get("uri")
    if not (uri and experiment and parent and study) or experiment_url(uri, experiment) is None:
        return {}
    uri = split_credentials(uri)[0]  # no user name (nor a masked password) in a link
    links = {
        "frontier": frontier_runs_url(uri, experiment, study),
        "trials": trials_runs_url(uri, experiment, study),
        "study run": parent_run_url(uri, experiment, parent),
        "frontier plot": artifact_url(uri, experiment, parent, "frontier.html"),
    }
    if (Path(study_dir) / "report.html").is_file():
        links["report"] = artifact_url(uri, experiment, parent, "report.html")
    return links


def browse_command(study_dir: Path, port: int = 5000) -> Optional[str]:
    """For a study tracked into a SQLite file: the command that serves it in the MLflow UI (its
    links are then ``study_links(study_dir, server="http://127.0.0.1:<port>")``); None otherwise."""
    uri = read_runs_record(study_dir).get("uri") or ""
    if not uri.startswith("sqlite:///"):
        return None
    state = Path(study_dir).expanduser().resolve() / "mlflow-server"
    return f"labelmix server start --backend-store-uri {uri} --state-dir {state} --port {port}"
