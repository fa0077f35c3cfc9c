"""A study's MLflow runs, Ray-free: where to log, finding the runs again, what to log.

The tracking callback (tracking.py), ``labelmix frontier`` / ``recommend`` (browse.py) and ``labelmix
report`` use these, so the commands that read a study back never import Ray. Only the standard library,
numpy and pandas load with this module; MLflow loads when a function needs it.

- Where: the tracking URI (:func:`resolve_tracking_uri`; its credentials moved to MLflow's variables by
  :func:`use_credentials`), a server checked before Ray starts (:func:`check_reachable`), the
  experiment (:func:`experiment_id`; a SQLite store keeps its artifacts beside it).
- Finding the runs: the study's ``mlflow_runs.json`` (:func:`read_runs_record`), else by tag: the
  parent run (``labelmix.study`` + ``labelmix.role=study``, :func:`find_parent`), its children
  (``mlflow.parentRunId`` + ``labelmix.trial_id``, :func:`find_children`).
- What: a result's metrics by their DESIGN.md names (:func:`metric_values`, step = epoch), a config's
  params (:func:`param_values`), and the frontier at the end (:func:`log_frontier`).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from labelmix.errors import UserError
from labelmix.platform.storage import write_atomically
from labelmix.platform.trial_table import (
    RUNS_FILE,
    TAG_FRONTIER_SIZE,
    TAG_OBJECTIVES,
    TAG_PARENT,
    TAG_PARETO,
    TAG_ROLE,
    TAG_STUDY,
    TAG_TRIAL,
    flatten,
    frontier_rows,
    objectives_json,
    with_pareto,
)

METRIC_PREFIXES = ("val/", "test/", "cost/", "labels/", "train/", "time/", "epoch")
MAX_TAG = 8000  # MLflow's limit on a tag value (MAX_TAG_VAL_LENGTH)
MAX_PARAM = 6000  # MAX_PARAM_VAL_LENGTH
BATCH_METRICS = 1000  # MAX_METRICS_PER_BATCH
BATCH_PARAMS = 100  # MAX_PARAMS_TAGS_PER_BATCH


# --- where to log ---------------------------------------------------------------------------------


def resolve_tracking_uri(cli_uri: str | None, spec: Any, study_dir: Path) -> str:
    """--tracking-uri, else the spec's tracking.uri, else $MLFLOW_TRACKING_URI, else a SQLite store
    in the study folder (artifacts next to it, under ``mlartifacts``)."""
    for uri in (cli_uri, getattr(getattr(spec, "tracking", None), "uri", None), os.environ.get("MLFLOW_TRACKING_URI")):
        if uri:
            return uri
    return f"sqlite:///{Path(study_dir).expanduser().resolve() / 'mlflow.db'}"


UNREACHABLE_HINT = ("start one with `labelmix server start`, or leave --tracking-uri (and the spec's tracking.uri, "
                    "MLFLOW_TRACKING_URI) unset to log into the study folder")


def check_reachable(uri: str, timeout_s: float = 5.0, hint: str = UNREACHABLE_HINT) -> None:
    """For http(s) URIs: ``GET <uri>/health`` must answer 200, else a UserError (call before Ray starts).

    Credentials in the URI (``http://user:secret@host/``), else MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD, go in a basic-auth header; the message shows the URI redacted."""
    from labelmix.mlflow_server import mask_password, split_credentials
    from labelmix.mlflow_server.server import probe_health

    if urlsplit(uri).scheme.lower() not in ("http", "https"):
        return
    clean, user, password = split_credentials(uri)
    reason = probe_health(clean, timeout_s, user or os.environ.get("MLFLOW_TRACKING_USERNAME"),
                          password or os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    if reason is None:
        return
    shown = mask_password(uri)
    raise UserError(f"tracking server {shown} is not reachable ({mask_password(reason)}); {hint}")


def use_credentials(uri: str, environ: Optional[dict] = None) -> str:
    """The URI without its user info; a user and password found in it go to MLflow's
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (in ``environ``, default os.environ),
    so no password is kept in a run record, a pickled callback or a printed line."""
    from labelmix.mlflow_server import split_credentials

    environ = os.environ if environ is None else environ
    clean, user, password = split_credentials(uri)
    if user:
        environ["MLFLOW_TRACKING_USERNAME"] = user
    if password:
        environ["MLFLOW_TRACKING_PASSWORD"] = password
    return clean


def code_version() -> str:
    """``labelmix.__version__``, plus the git commit (``+g<sha>``, ``.dirty`` with local changes) when
    the package runs from a checkout."""
    import labelmix

    version = labelmix.__version__
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty=.dirty", "--abbrev=12", "--exclude", "*"],
            cwd=Path(labelmix.__file__).parent, capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return version
    sha = out.stdout.strip()
    return f"{version}+g{sha}" if out.returncode == 0 and sha else version


def artifact_location(uri: str) -> str | None:
    """A SQLite store keeps artifacts next to its database (MLflow's default would be ./mlruns of
    whatever folder the driver started in)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if str(db) not in ("", ":memory:"):
            return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def experiment_id(client, name: str, uri: str) -> str:
    """The id of experiment ``name``, created when missing; a deleted one is restored."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(uri))
    except MlflowException:  # another driver created it in between
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


# --- finding the runs -----------------------------------------------------------------------------


def read_runs_record(study_dir: Path) -> dict:
    """The study folder's ``mlflow_runs.json`` (uri, experiment, experiment_id, study, parent,
    children: trial id -> run id); empty when it is missing or unreadable."""
    try:
        record = json.loads((Path(study_dir) / RUNS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_runs_record(study_dir: Path, record: Mapping[str, Any]) -> None:
    """Replace ``mlflow_runs.json`` at once (a reader never sees half a file)."""
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(study_dir / RUNS_FILE, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


def find_parent(client, experiment: str, study: str, saved: Mapping[str, Any], shown_uri: str):
    """The study's parent run: the one named in ``saved`` (its runs record) if it is on this server
    (``shown_uri``), active, in ``experiment`` and still the study's; else the oldest run tagged as the
    study's; None when there is none."""
    from mlflow.exceptions import MlflowException

    if saved.get("uri") == shown_uri and saved.get("parent"):
        try:
            run = client.get_run(saved["parent"])
        except MlflowException:
            run = None
        if (run is not None and run.info.lifecycle_stage == "active" and run.info.experiment_id == experiment
                and run.data.tags.get(TAG_STUDY) == study):
            return run
    runs = client.search_runs([experiment], f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_ROLE}` = 'study'",
                              order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0] if runs else None


def create_parent(client, experiment: str, study: str, spec_text: str, objectives: Any,
                  tags: Mapping[str, str]) -> str:
    """A new parent run for the study (tags: study, role, spec hash, code version, objectives and
    ``tags``; the spec as ``spec.yaml``); returns its id."""
    from labelmix.platform.spec import spec_hash

    tags = {
        TAG_STUDY: study, TAG_ROLE: "study", "labelmix.spec_hash": spec_hash(spec_text),
        "labelmix.code_version": code_version(), TAG_OBJECTIVES: objectives_json(objectives), **tags,
    }
    run = client.create_run(experiment, tags=tags, run_name=study)
    client.log_text(run.info.run_id, spec_text, "spec.yaml")
    return run.info.run_id


def find_children(client, experiment: str, parent_id: str) -> dict[str, Any]:
    """Trial id -> child run of ``parent_id`` (the oldest one, should a duplicate ever exist)."""
    found: dict[str, Any] = {}
    for run in search_all(client, [experiment], f"tags.`{TAG_PARENT}` = '{parent_id}'",
                          order_by=["attributes.start_time ASC"]):
        trial_id = run.data.tags.get(TAG_TRIAL)
        if trial_id and trial_id not in found:
            found[trial_id] = run
    return found


def search_all(client, experiment_ids: list[str], filter_string: str, order_by: Optional[list[str]] = None) -> list:
    """Every run matching the filter (search_runs pages through 1000 at a time)."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, order_by=order_by, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


# --- what to log ----------------------------------------------------------------------------------


def metric_values(result: Mapping[str, Any]) -> dict[str, float]:
    """The reported numbers worth keeping: numeric, finite or NaN, with a known prefix."""
    out = {}
    for key, value in result.items():
        if not key.startswith(METRIC_PREFIXES) or isinstance(value, (bool, np.bool_)):
            continue
        if isinstance(value, (int, float, np.integer, np.floating)):
            value = float(value)
            if math.isfinite(value) or math.isnan(value):
                out[key] = value
    return out


def step_of(result: Mapping[str, Any]) -> int:
    epoch = result.get("epoch")
    if isinstance(epoch, (int, float, np.integer, np.floating)) and math.isfinite(float(epoch)):
        return int(epoch)
    return int(result.get("training_iteration") or 0)


def param_values(config: Mapping[str, Any]) -> dict[str, str]:
    return {key: str(value)[:MAX_PARAM] for key, value in flatten(config).items()}


def log_frontier(client, parent_run_id: str, table: pd.DataFrame, child_ids: Mapping[str, str],
                 checkpoints: Optional[Mapping[str, str]] = None, title: Optional[str] = None) -> pd.DataFrame:
    """Log the frontier of ``table`` (a trial table, see ``labelmix.platform.trial_table``, flagged
    with its ``pareto`` column; flagged on its own objectives when it has none) to the study's parent
    run; returns the frontier rows, cheapest first.

    - ``frontier.json`` (``client.log_table``), ``frontier.png`` and ``frontier.html`` on the parent;
    - tag ``pareto`` = ``true`` / ``false`` on the child runs in ``child_ids`` (trial id -> run id)
      whose trial is in the table;
    - for frontier trials with a folder in ``checkpoints`` (trial id -> local folder), that folder as
      the artifact ``model/`` of the child run.
    """
    from labelmix.platform import plots

    table = table if "pareto" in table else with_pareto(table)
    frontier = frontier_rows(table)
    with tempfile.TemporaryDirectory(prefix="labelmix-frontier-") as tmp:
        _log_table(client, parent_run_id, _json_safe(frontier), "frontier.json", Path(tmp))
        plots.frontier_png(table, Path(tmp) / "frontier.png", title=title)
        plots.frontier_html(table, Path(tmp) / "frontier.html", title=title)
        client.log_artifact(parent_run_id, str(Path(tmp) / "frontier.png"))
        client.log_artifact(parent_run_id, str(Path(tmp) / "frontier.html"))
    on_front = set(frontier["trial_id"]) if "trial_id" in frontier else set()
    in_table = set(table["trial_id"]) if "trial_id" in table else set()
    for trial_id, run_id in child_ids.items():
        if trial_id in in_table:  # a run the table does not know keeps its tag
            client.set_tag(run_id, TAG_PARETO, "true" if trial_id in on_front else "false")
    client.set_tag(parent_run_id, TAG_FRONTIER_SIZE, str(len(frontier)))
    for trial_id in on_front:
        folder = (checkpoints or {}).get(trial_id)
        if trial_id in child_ids and folder and Path(folder).is_dir():
            client.log_artifacts(child_ids[trial_id], str(folder), "model")
    return frontier


def _log_table(client, run_id: str, frame: pd.DataFrame, name: str, tmp: Path) -> None:
    """``client.log_table``, replacing the table when it exists (log_table would append the rows:
    a resumed study would list its frontier twice). The replacement is written in log_table's own
    format (pandas ``orient="split"``), so the MLflow UI and ``load_table`` read both alike."""
    if name not in {a.path for a in client.list_artifacts(run_id)}:
        client.log_table(run_id, frame, name)
        return
    path = tmp / name
    frame.to_json(path, orient="split", index=False, date_format="iso")
    client.log_artifact(run_id, str(path))


def _json_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns log_table can serialise: numpy scalars and objects as plain values."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].map(lambda v: v if v is None or isinstance(v, (str, int, float, bool)) else str(v))
    return frame
