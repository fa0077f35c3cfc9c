"""Driver-side MLflow tracking of a Tune study: one parent run per study, one child run per trial, the frontier at the end.

Everything runs in the Tune driver (a ``ray.tune.Callback``): workers never talk to the tracking
server, so a cluster needs no route from its nodes to MLflow. This module is the Tune adapter; the
Ray-free parts are mlflow_runs.py (where to log, finding the runs, what to log), mlflow_links.py (the
UI's views and links) and tracking_writer.py (the background writer the hooks queue records for).

- Parent run (``labelmix.role=study``): tags ``labelmix.study``, ``labelmix.spec_hash``,
  ``labelmix.code_version``, ``labelmix.objectives`` (the spec's objectives as JSON, which ``labelmix
  frontier`` and ``recommend`` follow) and whatever the caller adds (``labelmix.dataset_fingerprint``);
  the spec as the artifact ``spec.yaml``.
- Child run per trial (run name = trial id, tags ``mlflow.parentRunId``, ``labelmix.trial_id``,
  ``labelmix.study`` and ``case`` when the space has cases): the decoded trial config as params once
  (``mix.full``, ..., ``ds_type``: the trial table's ``config/<field>`` without the prefix), metrics
  per report with ``step`` = epoch (``val/miou``, ``cost/hours``, ``cost/reduction``, ...), status at
  the end (FINISHED, or FAILED with the error text in ``labelmix.error``).
- At the end (``log_frontier``): ``frontier.json`` (a table), ``frontier.png`` and
  ``frontier.html`` on the parent, ``pareto=true|false`` tags on the children, and the last
  checkpoint folder of each frontier trial as the artifact ``model/`` of its child run. The frontier
  is the one of the study's trial table (``table_of``: in a study, ``ResultsTable.frame``); without
  one, a table built from Tune's trials, flagged on ``objectives``.

Resume never duplicates a run: the run ids are kept in ``<study>/mlflow_runs.json`` and, when that
file is missing or points elsewhere, found again by tag (``labelmix.study`` for the parent,
``mlflow.parentRunId`` + ``labelmix.trial_id`` for the children).

Tune pickles this callback into a study's experiment state (tuner.pkl) and restores it on resume:
``MlflowTracking``, ``decoded_config`` and ``trial_tags`` (its ``config_of`` / ``tags_of``) stay
importable here under these names.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import pandas as pd
from ray.tune import Callback

from labelmix.platform.mlflow_links import TAG_CASE, frontier_runs_url, parent_run_url, tag_experiment
from labelmix.platform.mlflow_runs import (
    MAX_PARAM,
    MAX_TAG,
    check_reachable,
    create_parent,
    experiment_id,
    find_children,
    find_parent,
    log_frontier,
    metric_values,
    param_values,
    read_runs_record,
    resolve_tracking_uri,
    step_of,
    use_credentials,
    write_runs_record,
)
from labelmix.platform.trial_folders import result_lines
from labelmix.platform.tracking_writer import ChildRunWriter, EndChild, Metrics, StartChild, WriterThread
from labelmix.platform.trial_table import DEFAULT_OBJECTIVES, TAG_OBJECTIVES, as_objectives, flatten, objectives_json, with_pareto

log = logging.getLogger(__name__)


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
    _child_runs: Optional[ChildRunWriter] = None

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
        self._writer: Optional[WriterThread] = None
        self._child_runs: Optional[ChildRunWriter] = None  # what the writer thread writes with
        self._known_params: dict[str, set] = {}  # trial id -> its run's param keys (writer thread, once open)
        self._started: set[str] = set()  # trials whose child run was queued in this session
        # per trial, the last step queued: a trial restarted from an earlier checkpoint than its last
        # report (its worker died between a result and that result's checkpoint) reports the steps in
        # between again; MLflow cannot replace a point, so a step is logged once
        self._logged_steps: dict[str, int] = {}

    # Tune pickles its RunConfig, callbacks included, into tuner.pkl: keep the settings, drop the
    # thread and the client (rebuilt lazily after unpickling).
    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_client=None, _writer=None, _child_runs=None, checkpoints={}, _started=set())
        return state

    def __setstate__(self, state):
        # A callback pickled before ChildRunWriter kept the write failures has ``failures`` and
        # ``disabled`` here (0 and False: Tune pickles it before any hook ran); the writer starts afresh.
        self.__dict__.update({k: v for k, v in state.items() if k not in ("failures", "disabled")})

    @property
    def disabled(self) -> bool:
        """True once the writer gave up on the server (tracking_writer.MAX_FAILURES failed writes in a row)."""
        return self._child_runs is not None and self._child_runs.disabled

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
        saved = read_runs_record(self.study_dir)
        parent = find_parent(client, self.experiment_id, self.study_name, saved, self.shown_uri)
        if parent is None:
            self.parent_id = create_parent(client, self.experiment_id, self.study_name, self.spec_text,
                                           self.objectives, self.tags)
        else:
            self.parent_id = parent.info.run_id
            if parent.info.status != "RUNNING":
                client.update_run(self.parent_id, status="RUNNING")
            if parent.data.tags.get(TAG_OBJECTIVES) != objectives_json(self.objectives):  # a study from before the tag
                client.set_tag(self.parent_id, TAG_OBJECTIVES, objectives_json(self.objectives))
        children = dict(saved.get("children", {})) if saved.get("parent") == self.parent_id else {}
        for trial_id, run in find_children(client, self.experiment_id, self.parent_id).items():
            children[trial_id] = run.info.run_id
            self._known_params[trial_id] = set(run.data.params)
        self.child_ids.update(children)
        self._child_runs = ChildRunWriter(client, self.experiment_id, self.parent_id, self.study_name, self.child_ids,
                                          self._known_params, self._write_runs_file, self.shown_uri)
        self._writer = WriterThread(self._child_runs.apply, self.flush_s)
        self._write_runs_file()
        return self.parent_id

    def _tag_experiment(self) -> None:
        """``tag_experiment`` (the experiment's kind, the study's runs-table views). Only the links need
        them, so a server that refuses (a user without the experiment's edit permission) costs a warning."""
        from mlflow.exceptions import MlflowException

        try:
            tag_experiment(self.client, self.experiment_id, self.study_name, self.objectives, self.settings)
        except MlflowException as exc:
            log.warning("MLflow (%s): could not tag experiment %s for the UI's runs views (%s); the study's "
                        "frontier and trials links will not open their views", self.shown_uri, self.experiment_id, exc)

    def _write_runs_file(self) -> None:
        write_runs_record(self.study_dir, {
            "uri": self.shown_uri, "experiment": self.experiment, "experiment_id": self.experiment_id,
            "study": self.study_name, "parent": self.parent_id, "children": dict(self.child_ids)})

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
        self._writer.put(StartChild(trial.trial_id, param_values(self._config(trial)), self._tags(trial)))
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
        self._writer.put(Metrics(trial.trial_id, values, step, int(time.time() * 1000)))
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
        self._writer.put(EndChild(trial.trial_id, status, error))
        self.hook_seconds += time.perf_counter() - started

    def _backfill(self, trials) -> None:
        """Runs for finished trials that have none: a driver killed after a trial ended but before
        the writer sent its run leaves a trial that the resumed study restores as finished, so no
        hook of this session sees it. Its run is written from its folder's result.json (else its last
        result)."""
        for trial in trials:
            if trial.status not in ("TERMINATED", "ERROR") or trial.trial_id in self.child_ids:
                continue
            results = result_lines(getattr(trial, "local_path", None)) or [trial.last_result or {}]
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
