"""Driver-side MLflow tracking: one parent run per study, one child run per trial, the frontier at the end.

Everything runs in the Tune driver (a ``ray.tune.Callback``): workers never talk to the tracking
server, so a cluster needs no route from its nodes to MLflow.

- Parent run (``labelmix.role=study``): tags ``labelmix.study``, ``labelmix.spec_hash``,
  ``labelmix.code_version``, ``labelmix.objectives`` (the spec's objectives as JSON, which ``labelmix
  frontier`` and ``recommend`` follow) and whatever the caller adds (``labelmix.dataset_fingerprint``);
  the spec as the artifact ``spec.yaml``.
- Child run per trial (run name = trial id, tags ``mlflow.parentRunId``, ``labelmix.trial_id``,
  ``labelmix.study`` and ``case`` when the space has cases): the decoded trial config as params once
  (``mix.full``, ..., ``ds_type``: the trial table's ``config/<field>`` without the prefix), metrics
  per report with ``step`` = epoch (``val/miou``, ``cost/hours``, ``cost/reduction``, ...), status at
  the end (FINISHED, or FAILED with the error text in ``labelmix.error``).
- At the end (:func:`log_frontier`): ``frontier.json`` (a table), ``frontier.png`` and
  ``frontier.html`` on the parent, ``pareto=true|false`` tags on the children, and the last
  checkpoint folder of each frontier trial as the artifact ``model/`` of its child run. The frontier
  is the one of the study's trial table (``table_of``: in a study, ``ResultsTable.frame``); without
  one, a table built from Tune's trials, flagged on ``objectives``.

What a user clicks (MLflow 3.17's UI): the experiment carries the tag ``mlflow.experimentKind =
custom_model_development`` and two shared runs-table views per study (experiment tags
``mlflow.sharedViewState.labelmix-<study>-frontier`` / ``-trials``: the frontier, cheapest first, and
every trial, best first, each with the mix, cost and quality columns shown). The UI opens an
experiment on its GenAI overview unless the URL says ``workflowType=machine_learning``, so every URL
built here (:func:`frontier_runs_url`, :func:`parent_run_url`, :func:`artifact_url`,
:func:`study_links`) says it.

Resume never duplicates a run: the run ids are kept in ``<study>/mlflow_runs.json`` and, when that
file is missing or points elsewhere, found again by tag (``labelmix.study`` for the parent,
``mlflow.parentRunId`` + ``labelmix.trial_id`` for the children).

Overhead: Tune calls the hooks on its driver loop, so a hook must not wait for the server. Hooks
only append records to a queue; one background thread writes them, at most every ``flush_s``
seconds, as one ``log_batch`` per trial and flush. A hook costs microseconds; everything is written
before ``on_experiment_end`` returns.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import subprocess
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Optional
from urllib.parse import quote, urlsplit

import numpy as np
import pandas as pd
from ray.tune import Callback

from labelmix.errors import UserError
from labelmix.platform.trial_table import (
    COST,
    DEFAULT_OBJECTIVES,
    MIX_COLUMNS,
    RUNS_FILE,
    SCORE,
    TAG_ERROR,
    TAG_FRONTIER_SIZE,
    TAG_OBJECTIVES,
    TAG_PARENT,
    TAG_PARETO,
    TAG_ROLE,
    TAG_STUDY,
    TAG_TRIAL,
    as_objectives,
    flatten,
    frontier_axes,
    frontier_rows,
    objectives_json,
    run_url,
    with_pareto,
)

log = logging.getLogger(__name__)

METRIC_PREFIXES = ("val/", "test/", "cost/", "labels/", "train/", "time/", "epoch")
MAX_TAG = 8000  # MLflow's limit on a tag value (MAX_TAG_VAL_LENGTH)
MAX_PARAM = 6000  # MAX_PARAM_VAL_LENGTH
BATCH_METRICS = 1000  # MAX_METRICS_PER_BATCH
BATCH_PARAMS = 100  # MAX_PARAMS_TAGS_PER_BATCH
MAX_FAILURES = 3


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


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


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


# --- what a user clicks (MLflow 3.17's UI) --------------------------------------------------------

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


def experiment_url(uri: str, experiment_id: str) -> Optional[str]:
    """The experiment's runs table in the MLflow UI, on its model-training side (servers only), with
    the filter and order its user last left there (the UI keeps them per experiment)."""
    if urlsplit(uri).scheme.lower() not in ("http", "https"):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs?{ML_WORKFLOW}"


def frontier_runs_url(uri: str, experiment_id: str, study: Optional[str] = None,
                      objectives: Any = None) -> Optional[str]:
    """The frontier trials in the runs table (servers only). With ``study``: its shared ``frontier``
    view (columns included; the experiment tag is written by :class:`MlflowTracking`); without: the
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


def _runs_record(study_dir: Path) -> dict:
    try:
        record = json.loads((Path(study_dir) / RUNS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def study_links(study_dir: Path, server: Optional[str] = None) -> dict[str, str]:
    """What to open for a tracked study, from its ``mlflow_runs.json``: ``frontier`` (the frontier
    trials), ``trials`` (every trial, best first), ``study run`` (the parent run), ``frontier plot``
    (its ``frontier.html``) and, once ``labelmix report`` wrote ``report.html`` into the folder (it logs
    it to the parent run too), ``report``. Empty when the study was not tracked or its tracking URI is
    not a server (a SQLite file: :func:`browse_command` serves it; pass that server as ``server``)."""
    from labelmix.mlflow_server import split_credentials

    record = _runs_record(study_dir)
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
    uri = _runs_record(study_dir).get("uri") or ""
    if not uri.startswith("sqlite:///"):
        return None
    state = Path(study_dir).expanduser().resolve() / "mlflow-server"
    return f"labelmix server start --backend-store-uri {uri} --state-dir {state} --port {port}"


# --- the callback --------------------------------------------------------------------------------


class _Writer:
    """One background thread that applies queued records in order, at most every ``interval_s``."""

    def __init__(self, apply: Callable[[list], None], interval_s: float) -> None:
        self._apply = apply
        self.interval_s = interval_s
        self._queue: queue.Queue = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def put(self, record: tuple) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="labelmix-mlflow", daemon=True)
                self._thread.start()
        self._queue.put(record)

    def flush(self, timeout_s: Optional[float] = None) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._queue.put(("_flush", done))
        return done.wait(timeout_s)

    def _run(self) -> None:
        while True:
            records = [self._queue.get()]
            deadline = time.monotonic() + self.interval_s
            while records[-1][0] != "_flush":
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    records.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            flushes = [r[1] for r in records if r[0] == "_flush"]
            try:
                self._apply([r for r in records if r[0] != "_flush"])
            except Exception:  # never kill the thread: the study goes on, the log says what was lost
                log.exception("MLflow logging failed; some records were not written")
            for event in flushes:
                event.set()


class MlflowTracking(Callback):
    """Mirror a Tune study into MLflow from the driver (see the module docstring).

    ``config_of(trial)`` gives the trial's decoded config (a nested dict; default: ``trial.config``);
    ``tags`` go on the parent run, and so do the ``objectives`` ((metric, mode) pairs or a spec's
    ``objectives``; default val/miou max, cost/hours min). ``tags_of(trial)`` gives tags for its child
    run (``case``); ``settings`` are the param names the experiment's views show beside the mix
    fractions (the searched settings). ``table_of()`` gives the study's trial table with its
    ``pareto`` flags (in a study: the results table's ``frame``) for the frontier at the end; without
    it, the table is built from Tune's trials and flagged on the objectives. ``open()`` creates or
    finds the parent run and tags the experiment (:meth:`_tag_experiment`); it is called by ``setup``
    or the first hook when not called before (call it before Ray starts to fail early).
    """

    # Class defaults: a callback that Tune pickled before these attributes existed still restores.
    objectives = DEFAULT_OBJECTIVES
    table_of: Optional[Callable[[], pd.DataFrame]] = None
    tags_of: Optional[Callable[[Any], Mapping[str, str]]] = None
    settings: tuple[str, ...] = ()

    def __init__(self, uri: str, experiment: str, study_name: str, spec_text: str, tags: Mapping[str, str] | None,
                 study_dir: Path, config_of: Optional[Callable[[Any], Mapping[str, Any]]] = None,
                 flush_s: float = 2.0, objectives: Any = None,
                 table_of: Optional[Callable[[], pd.DataFrame]] = None,
                 tags_of: Optional[Callable[[Any], Mapping[str, str]]] = None, settings: tuple[str, ...] = ()) -> None:
        self.uri = uri
        self.experiment = experiment
        self.study_name = study_name
        self.spec_text = spec_text
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.study_dir = Path(study_dir)
        self.config_of = config_of
        self.flush_s = flush_s
        self.objectives = as_objectives(objectives)
        self.table_of = table_of
        self.tags_of = tags_of
        self.settings = tuple(settings)
        self.experiment_id: Optional[str] = None
        self.parent_id: Optional[str] = None
        self.child_ids: dict[str, str] = {}
        self.checkpoints: dict[str, Any] = {}  # trial id -> latest ray.tune.Checkpoint
        self.hook_seconds = 0.0  # time spent inside the hooks (on Tune's driver loop)
        self._client = None
        self._writer: Optional[_Writer] = None
        self._known_params: dict[str, set] = {}  # writer thread only
        self._started: set[str] = set()  # trials whose child run was queued in this session
        # per trial, the last step queued: a trial restarted from an earlier checkpoint than its last
        # report (its worker died between a result and that result's checkpoint) reports the steps in
        # between again; MLflow cannot replace a point, so a step is logged once
        self._logged_steps: dict[str, int] = {}
        self.failures = 0  # consecutive write failures; MAX_FAILURES of them disable logging
        self.disabled = False

    # Tune pickles its RunConfig, callbacks included, into tuner.pkl: keep the settings, drop the
    # thread and the client (rebuilt lazily after unpickling).
    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_client=None, _writer=None, checkpoints={}, _started=set())
        return state

    # ---- setup: experiment, parent run, existing children
    @property
    def shown_uri(self) -> str:
        """The URI as printed and recorded: a database password masked (``postgresql://u:***@h/db``)."""
        from labelmix.mlflow_server import mask_password

        return mask_password(self.uri)

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def run_url(self) -> Optional[str]:
        """The study run's page in the MLflow UI (servers only)."""
        return None if self.parent_id is None else parent_run_url(self.uri, self.experiment_id, self.parent_id)

    @property
    def frontier_url(self) -> Optional[str]:
        """The study's frontier trials in the MLflow UI's runs table (servers only)."""
        return None if self.experiment_id is None else frontier_runs_url(self.uri, self.experiment_id, self.study_name)

    def open(self) -> str:
        """Find or create the study's parent run (and its existing children); returns its id."""
        if self._writer is not None and self.parent_id is not None:
            return self.parent_id
        # MLflow 3 prints two "View run at" lines whenever a run on a server ends: hundreds of lines
        # in a study, all links to child runs. The study's own link is printed once instead.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        client = self.client
        self.experiment_id = experiment_id(client, self.experiment, self.uri)
        self._tag_experiment()
        saved = self._read_runs_file()
        parent = self._saved_parent(saved) or self._search_parent()
        if parent is None:
            self.parent_id = self._create_parent()
        else:
            self.parent_id = parent.info.run_id
            if parent.info.status != "RUNNING":
                client.update_run(self.parent_id, status="RUNNING")
            if parent.data.tags.get(TAG_OBJECTIVES) != objectives_json(self.objectives):  # a study from before the tag
                client.set_tag(self.parent_id, TAG_OBJECTIVES, objectives_json(self.objectives))
        children = dict(saved.get("children", {})) if saved.get("parent") == self.parent_id else {}
        children.update(self._search_children())
        self.child_ids.update(children)
        self._writer = _Writer(self._apply, self.flush_s)
        self._write_runs_file()
        return self.parent_id

    def _tag_experiment(self) -> None:
        """A model-training experiment (unless someone chose its kind), and the study's two runs-table
        views (rewritten when they differ: the columns follow the code). Only the links need them, so a
        server that refuses (a user without the experiment's edit permission) costs a warning."""
        from mlflow.exceptions import MlflowException

        try:
            tags = self.client.get_experiment(self.experiment_id).tags
            if TAG_EXPERIMENT_KIND not in tags:
                self.client.set_experiment_tag(self.experiment_id, TAG_EXPERIMENT_KIND, TRAINING_KIND)
            for view in VIEWS:
                state = json.dumps(runs_view(self.study_name, view, self.objectives, self.settings), sort_keys=True)
                key = SHARED_VIEW + view_key(self.study_name, view)
                if tags.get(key) != state:
                    self.client.set_experiment_tag(self.experiment_id, key, state)
        except MlflowException as exc:
            log.warning("MLflow (%s): could not tag experiment %s for the UI's runs views (%s); the study's "
                        "frontier and trials links will not open their views", self.shown_uri, self.experiment_id, exc)

    def _create_parent(self) -> str:
        from labelmix.platform.spec import spec_hash

        tags = {
            TAG_STUDY: self.study_name, TAG_ROLE: "study", "labelmix.spec_hash": spec_hash(self.spec_text),
            "labelmix.code_version": code_version(), TAG_OBJECTIVES: objectives_json(self.objectives), **self.tags,
        }
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.study_name)
        self.client.log_text(run.info.run_id, self.spec_text, "spec.yaml")
        return run.info.run_id

    def _saved_parent(self, saved: Mapping[str, Any]):
        """The parent run named in mlflow_runs.json, if it is on this server and still ours."""
        from mlflow.exceptions import MlflowException

        if saved.get("uri") != self.shown_uri or not saved.get("parent"):
            return None
        try:
            run = self.client.get_run(saved["parent"])
        except MlflowException:
            return None
        ok = (run.info.lifecycle_stage == "active" and run.info.experiment_id == self.experiment_id
              and run.data.tags.get(TAG_STUDY) == self.study_name)
        return run if ok else None

    def _search_parent(self):
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.`{TAG_STUDY}` = '{self.study_name}' and tags.`{TAG_ROLE}` = 'study'",
            order_by=["attributes.start_time ASC"], max_results=1,
        )
        return runs[0] if runs else None

    def _search_children(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for run in search_all(self.client, [self.experiment_id], f"tags.`{TAG_PARENT}` = '{self.parent_id}'",
                              order_by=["attributes.start_time ASC"]):
            trial_id = run.data.tags.get(TAG_TRIAL)
            if trial_id and trial_id not in found:  # the oldest one wins, should a duplicate ever exist
                found[trial_id] = run.info.run_id
                self._known_params[trial_id] = set(run.data.params)
        return found

    def _read_runs_file(self) -> dict:
        try:
            data = json.loads((self.study_dir / RUNS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_runs_file(self) -> None:
        record = {"uri": self.shown_uri, "experiment": self.experiment, "experiment_id": self.experiment_id,
                  "study": self.study_name, "parent": self.parent_id, "children": dict(self.child_ids)}
        self.study_dir.mkdir(parents=True, exist_ok=True)
        path = self.study_dir / RUNS_FILE
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)

    def _ensure_open(self) -> None:
        if self._writer is None:
            self.open()

    # ---- Tune hooks: record, queue, return
    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        self._ensure_open()

    def on_trial_start(self, iteration, trials, trial, **info):
        started = time.perf_counter()
        self._ensure_open()
        self._started.add(trial.trial_id)
        self._writer.put(("start", trial.trial_id, param_values(self._config(trial)), self._tags(trial)))
        self.hook_seconds += time.perf_counter() - started

    def on_trial_result(self, iteration, trials, trial, result, **info):
        started = time.perf_counter()
        self._ensure_open()
        if trial.trial_id not in self._started:
            self.on_trial_start(iteration, trials, trial)  # a result before any start in this session
        step = step_of(result)
        if step <= self._logged_steps.get(trial.trial_id, -1):
            self.hook_seconds += time.perf_counter() - started
            return
        self._logged_steps[trial.trial_id] = step
        values = metric_values(result)
        self._writer.put(("metrics", trial.trial_id, values, step, int(time.time() * 1000)))
        self.hook_seconds += time.perf_counter() - started

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self.checkpoints[trial.trial_id] = checkpoint

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial, "FINISHED", None)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = None
        try:
            if trial.error_file and Path(trial.error_file).is_file():
                error = Path(trial.error_file).read_text(errors="replace")
        except (AttributeError, OSError):
            pass
        self._end(trial, "FAILED", (error or "trial failed (no error file)")[-MAX_TAG:])

    def _end(self, trial, status: str, error: Optional[str]) -> None:
        started = time.perf_counter()
        self._ensure_open()
        self._writer.put(("end", trial.trial_id, status, error))
        self.hook_seconds += time.perf_counter() - started

    def _backfill(self, trials) -> None:
        """Runs for finished trials that have none: a driver killed after a trial ended but before
        the writer sent its run leaves a trial that the resumed study restores as finished, so no
        hook of this session sees it. Its run is written from its folder's result.json (else its last
        result)."""
        for trial in trials:
            if trial.status not in ("TERMINATED", "ERROR") or trial.trial_id in self.child_ids:
                continue
            results = _result_lines(getattr(trial, "local_path", None)) or [trial.last_result or {}]
            for result in results:
                self.on_trial_result(0, trials, trial, result)
            if trial.status == "ERROR":
                self.on_trial_error(0, trials, trial)
            else:
                self.on_trial_complete(0, trials, trial)

    def on_experiment_end(self, trials, **info):
        self._ensure_open()
        self._backfill(trials)
        self.flush()
        if self.disabled:
            return
        try:
            done = all(t.status in ("TERMINATED", "ERROR") for t in trials)
            table = self.table_of() if self.table_of is not None else self.table(trials)
            if done:  # a trial finished before a killed driver's last snapshot is in the table only
                self._drop_orphans({t.trial_id for t in trials} | set(table["trial_id"] if len(table) else ()))
            with tempfile.TemporaryDirectory(prefix="labelmix-models-") as tmp:
                checkpoints = self._frontier_checkpoints(table, {t.trial_id: t for t in trials}, Path(tmp))
                log_frontier(self.client, self.parent_id, table, dict(self.child_ids), checkpoints, title=self.study_name)
            self.client.set_terminated(self.parent_id, "FINISHED" if done else "KILLED")
        except Exception:  # the study itself succeeded; say what is missing in MLflow, do not fail it
            log.exception("could not log the frontier to MLflow run %s", self.parent_id)

    def _drop_orphans(self, trial_ids: set[str]) -> None:
        """Delete the child runs of trials the finished study has neither in Tune's trials nor in its
        trial table: a driver killed after an unfinished trial's run was created but before Tune's
        experiment snapshot recorded the trial leaves a run whose trial the resumed study never sees
        (it samples a new one). MLflow keeps deleted runs
        (restorable from the UI); the study then has one child run per trial of its table."""
        orphans = sorted(set(self.child_ids) - trial_ids)
        for trial_id in orphans:
            self.client.delete_run(self.child_ids.pop(trial_id))
            log.info("MLflow: deleted the run of trial %s, which the resumed study no longer has", trial_id)
        if orphans:
            self._write_runs_file()

    def _frontier_checkpoints(self, table: pd.DataFrame, trials: Mapping[str, Any], scratch: Path) -> dict[str, str]:
        """trial id -> local checkpoint folder, for frontier trials whose model MLflow lacks or that
        checkpointed in this session (a model logged in an earlier session is not uploaded again)."""
        folders = {}
        for trial_id in table.loc[table["pareto"], "trial_id"] if len(table) else []:
            run_id = self.child_ids.get(trial_id)
            if run_id is None:
                continue
            if trial_id not in self.checkpoints and self.client.list_artifacts(run_id, "model"):
                continue
            folder = self._checkpoint_folder(trial_id, trials.get(trial_id), scratch / trial_id)
            if folder:
                folders[trial_id] = folder
        return folders

    def flush(self, timeout_s: Optional[float] = None) -> bool:
        return self._writer.flush(timeout_s) if self._writer is not None else True

    # ---- the trial (for its params; for the frontier when there is no table_of)
    def _tags(self, trial) -> dict[str, str]:
        try:
            return {str(k): str(v)[:MAX_TAG] for k, v in (self.tags_of(trial) if self.tags_of else {}).items()}
        except Exception:  # the trial fails validation itself; its params say why
            return {}

    def _config(self, trial) -> dict[str, Any]:
        try:
            return dict(self.config_of(trial) if self.config_of else trial.config)
        except Exception as exc:  # the trial fails validation itself; its params say why
            return {"error": str(exc)[:MAX_PARAM]}

    def table(self, trials) -> pd.DataFrame:
        """The trial table of Tune's trials (status, config, last result; trials restored from an
        earlier session included), flagged on the objectives."""
        rows = [{"trial_id": t.trial_id, "status": t.status, **flatten(self._config(t), "config/"),
                 **metric_values(getattr(t, "last_result", None) or {})} for t in trials]
        return with_pareto(pd.DataFrame(rows), self.objectives)

    def _checkpoint_folder(self, trial_id: str, trial, scratch: Path) -> Optional[str]:
        """A local folder with the trial's last checkpoint (state.pt), copied down when remote."""
        checkpoint = self.checkpoints.get(trial_id)
        if checkpoint is None and trial is not None:
            try:
                checkpoint = trial.checkpoint
            except AttributeError:
                checkpoint = None
        if checkpoint is not None:
            try:
                import pyarrow.fs

                if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
                    return checkpoint.path if Path(checkpoint.path).is_dir() else None
                return checkpoint.to_directory(str(scratch))
            except Exception:
                log.exception("could not read the checkpoint of trial %s", trial_id)
                return None
        try:
            trial_path = Path(trial.path) if trial is not None and trial.path else None
        except AttributeError:  # a stub trial without storage
            trial_path = None
        if trial_path is None or not trial_path.is_dir():
            return None
        folders = sorted(trial_path.glob("checkpoint_*"))
        return str(folders[-1]) if folders else None

    # ---- the writer thread
    def _apply(self, records: list) -> None:
        """Write queued records in order; metrics of one trial are batched until its next other record."""
        from mlflow.entities import Metric

        pending: dict[str, list] = {}

        def write_metrics(trial_id: str) -> None:
            metrics = pending.pop(trial_id, [])
            run_id = self.child_ids.get(trial_id)
            if run_id is None or not metrics:
                return
            for chunk in _chunks(metrics, BATCH_METRICS):
                self.client.log_batch(run_id, metrics=chunk)

        if self.disabled:
            return
        for record in records:
            kind, trial_id = record[0], record[1]
            if self.disabled:
                return
            try:
                if kind == "metrics":
                    _, _, values, step, stamp = record
                    pending.setdefault(trial_id, []).extend(Metric(k, v, stamp, step) for k, v in values.items())
                    continue
                write_metrics(trial_id)
                if kind == "start":
                    self._start_child(trial_id, record[2], record[3])
                elif kind == "end":
                    self._end_child(trial_id, record[2], record[3])
                self.failures = 0
            except Exception:
                self._failed(f"{kind} of trial {trial_id}")
        for trial_id in list(pending):
            if self.disabled:
                return
            try:
                write_metrics(trial_id)
                self.failures = 0
            except Exception:
                self._failed(f"metrics of trial {trial_id}")

    def _failed(self, what: str) -> None:
        """A failed write is logged; after MAX_FAILURES in a row the server is taken to be gone and
        the rest is dropped (each request would otherwise wait out MLflow's retries)."""
        self.failures += 1
        log.exception("MLflow (%s): could not write %s", self.shown_uri, what)
        if self.failures >= MAX_FAILURES:
            self.disabled = True
            log.error("MLflow (%s): %d writes failed in a row; tracking is off for the rest of this study "
                      "(the study folder still has every trial: trials.parquet)", self.shown_uri, self.failures)

    def _start_child(self, trial_id: str, params: Mapping[str, str], tags: Mapping[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        client = self.client
        run_id = self.child_ids.get(trial_id)
        if run_id is None:
            tags = {**tags, TAG_PARENT: self.parent_id, TAG_TRIAL: trial_id, TAG_STUDY: self.study_name}
            run_id = client.create_run(self.experiment_id, tags=tags, run_name=trial_id).info.run_id
            self.child_ids[trial_id] = run_id
            self._known_params[trial_id] = set()
            self._write_runs_file()
        else:  # a resumed or retried trial: the same run again
            run = client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            self._known_params[trial_id] = set(run.data.params)
            error = run.data.tags.get(TAG_ERROR)
            if error:  # a run that finishes after a retry must not read as failed
                client.set_tag(run_id, "labelmix.previous_error", error)
                client.delete_tag(run_id, TAG_ERROR)
            changed = [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
            if changed:  # e.g. a run from before the tag
                client.log_batch(run_id, tags=changed)
        known = self._known_params[trial_id]
        new = [Param(k, v) for k, v in params.items() if k not in known]  # params are write-once
        for chunk in _chunks(new, BATCH_PARAMS):
            client.log_batch(run_id, params=chunk)
        known.update(p.key for p in new)

    def _end_child(self, trial_id: str, status: str, error: Optional[str]) -> None:
        run_id = self.child_ids.get(trial_id)
        if run_id is None:
            return
        if error:
            self.client.set_tag(run_id, TAG_ERROR, error)
        self.client.set_terminated(run_id, status)


def _result_lines(folder: Optional[str]) -> list[dict]:
    """A trial folder's result.json as dicts (one per report; a half-written last line is skipped)."""
    if not folder:
        return []
    try:
        lines = (Path(folder) / "result.json").read_text().splitlines()
    except OSError:
        return []
    results = []
    for line in lines:
        try:
            results.append(json.loads(line))
        except ValueError:
            continue
    return results


def study_tracking(spec: Any, source_text: str, directory: Path, cli_uri: Optional[str] = None,
                   tags: Optional[Mapping[str, str]] = None,
                   table_of: Optional[Callable[[], pd.DataFrame]] = None) -> MlflowTracking:
    """The tracking callback of a study, ready before Ray starts: URI resolved (``resolve_tracking_uri``)
    and checked (``check_reachable``), parent run found or created with the spec's objectives. Trial
    params are the decoded trial configs (``labelmix.platform.space.trial_config``); ``table_of``: the
    study's trial table for the frontier (``ResultsTable.frame``)."""
    uri = resolve_tracking_uri(cli_uri, spec, directory)
    check_reachable(uri)
    uri = use_credentials(uri)
    settings = tuple(a.name for a in spec.searched if a.name != "cases")
    tracking = MlflowTracking(uri, spec.tracking.experiment or spec.name, spec.name, source_text, tags, directory,
                              config_of=partial(decoded_config, spec), objectives=spec.objectives, table_of=table_of,
                              tags_of=partial(trial_tags, spec), settings=settings)
    tracking.open()
    print(f"[{spec.name}] MLflow: {tracking.run_url or tracking.shown_uri} (experiment {tracking.experiment!r})", flush=True)
    return tracking


def trial_tags(spec: Any, trial) -> dict[str, str]:
    """The child run's tags from the spec: ``case`` when the space has cases."""
    from labelmix.platform.space import case_name

    name = case_name(spec, trial.config)
    return {} if name is None else {TAG_CASE: name}


def decoded_config(spec: Any, trial) -> dict[str, Any]:
    """What the trial trains with: fixed settings, dataset, cost and the decoded sampled values."""
    from labelmix.platform.space import trial_config

    return trial_config(spec, trial.config)


def search_all(client, experiment_ids: list[str], filter_string: str, order_by: Optional[list[str]] = None) -> list:
    """Every run matching the filter (search_runs pages through 1000 at a time)."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, order_by=order_by, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs
