"""Build, run and resume a study: spec -> Tuner (OptunaSearch, scheduler, resources) -> results.

The study folder ``<storage>/<name>`` holds the spec (``spec.yaml``), Tune's experiment state,
``trials.parquet`` (one row per trial, rewritten as trials finish) and the frontier.

Storage is a local folder or a URI (``s3://``, ``gs://``, ``file://``): the study folder, its local
mirror for a URI, and which paths every node sees are ``labelmix.platform.storage``'s.

Dataset: a store on storage every node sees (a URI is downloaded once per node, a network mount is
read in place) reaches the trials as is; on a cluster (``--address``) a store on this machine's
disk is put into Ray's object store once per study and written to a per-node cache by the first
trial on each node (``labelmix.platform.trainable.node_local_store``). A Ray started in this
process is this machine alone: its trials read the file where it is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import ray
from ray import tune

from labelmix.errors import UserError
from labelmix.platform.cluster import attach, cluster_shape
from labelmix.platform.progress import Progress
from labelmix.platform.results import ResultsTable
from labelmix.platform.trial_table import FRONTIER_FILE, TRIALS_FILE, frontier_of, read_table
from labelmix.platform.searcher import BACKUP_FILE, StudyGenerator, make_searcher, put_back_saved_searcher
from labelmix.platform.space import tune_param_space
from labelmix.platform.spec import StudySpec, load_spec
# StudyFolder: Tune's tuner.pkl of a study started before storage.py names it labelmix.platform.study.StudyFolder.
from labelmix.platform.storage import SPEC_FILE, StudyFolder, is_shared_path, scheme_of, store_fingerprint, study_folder
from labelmix.platform.storage_checks import check_before_start, check_shared_storage
from labelmix.platform.tracking import study_tracking
from labelmix.platform.trainable import DatasetSource, run_trial
from labelmix.trainables.data.synth_store import synthetic_store

log = logging.getLogger(__name__)

STORE_FILE = "data.parquet"


@dataclass(frozen=True)
class StudyResult:
    study_dir: Path  # the local folder (for remote storage: the mirror)
    table: Any  # pyarrow.Table of all trials
    frontier: Any  # pyarrow.Table of the Pareto-optimal trials
    location: str = ""  # where the study lives: the local folder or its URI

    def __post_init__(self):
        if not self.location:
            object.__setattr__(self, "location", str(self.study_dir))


class SyncedResultsTable(ResultsTable):
    """The trial table, copied to remote storage after every write (a no-op for local folders)."""

    def __init__(self, folder: StudyFolder, spec: Any, **kwargs) -> None:
        self.folder = folder
        super().__init__(folder.local, spec, **kwargs)

    def write(self) -> None:
        super().write()
        try:
            self.folder.upload(TRIALS_FILE, FRONTIER_FILE)
        except OSError as exc:  # a network hiccup must not end the study; the next write retries
            log.warning("could not copy the trial table to %s: %s", self.folder.uri, exc)


def make_scheduler(spec: StudySpec):
    from ray.tune.schedulers import FIFOScheduler

    from labelmix.platform.pareto_asha import ParetoASHA
    from labelmix.platform.reference import KeepReferenceASHA

    sch = spec.scheduler
    if sch.type == "none":
        return FIFOScheduler()
    if sch.type == "asha":
        objective = spec.objectives[0]
        return KeepReferenceASHA(
            time_attr="training_iteration", metric=objective.metric, mode=objective.mode,
            max_t=sch.max_epochs, grace_period=sch.grace_period, reduction_factor=sch.reduction_factor,
            brackets=sch.brackets,
        )
    return ParetoASHA(
        {o.metric: o.mode for o in spec.objectives}, time_attr="training_iteration",
        max_t=sch.max_epochs, grace_period=sch.grace_period, reduction_factor=sch.reduction_factor,
        front_order=sch.front_order, brackets=sch.brackets,
    )


def with_study_store(spec: StudySpec, directory: Path) -> StudySpec:
    """A synthetic dataset is generated once per study into the study folder; trials read that file."""
    if spec.dataset.synthetic is None:
        return spec
    store = synthetic_store(spec.dataset.synthetic, directory)
    dataset = spec.dataset.model_copy(update={"path": str(store), "synthetic": None})
    return spec.model_copy(update={"dataset": dataset})


def dataset_source(spec: StudySpec, ship_local: bool = True) -> Optional[DatasetSource]:
    """How trials get the store: None (they read the path), a URI, or the file's bytes in the object store.

    ``ship_local``: whether a store on this machine's disk must travel to other nodes (not for a
    Ray started in this process, which is this one machine).
    """
    path = spec.dataset.path
    if path is None:
        return None
    if scheme_of(path):
        return DatasetSource(fingerprint=store_fingerprint(path), uri=path)
    if not ship_local or is_shared_path(path):
        return None
    # Put once per study; a trial fetches the bytes only when its node's cache lacks the store.
    data = Path(path).read_bytes()
    return DatasetSource(fingerprint=store_fingerprint(path), ref=ray.put(data), size=len(data))


def build_tuner(spec: StudySpec, folder: StudyFolder | Path, callbacks: list, restore: bool = False,
                ship_dataset: bool = True) -> tune.Tuner:
    folder = folder if isinstance(folder, StudyFolder) else StudyFolder(Path(folder))
    cpus, gpus = spec.resources.cpus, spec.resources.gpus
    spec = with_study_store(spec, folder.local)
    dataset = dataset_source(spec, ship_local=ship_dataset)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec, cpus_per_trial=cpus, dataset=dataset),
        {"cpu": cpus, "gpu": gpus},
    )
    if restore:
        put_back = put_back_saved_searcher(folder)
        if put_back:
            log.warning("%s: Tune's saved searcher state was missing or unreadable; restored %s from %s",
                        folder.location, ", ".join(put_back), BACKUP_FILE)
        return tune.Tuner.restore(folder.location, trainable=trainable, resume_errored=True)
    num_samples = spec.total_trials
    return tune.Tuner(
        trainable,
        param_space=tune_param_space(spec),
        tune_config=tune.TuneConfig(
            search_alg=StudyGenerator(make_searcher(spec), spec.search.concurrency, folder),
            scheduler=make_scheduler(spec),
            num_samples=num_samples,
            reuse_actors=True,  # measured here: 40 one-second trials, 81 s without, 24 s with
        ),
        run_config=tune.RunConfig(
            name=folder.name,
            storage_path=folder.storage_path,
            failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=callbacks,
            verbose=0,
        ),
    )


def start_ray(address: Optional[str], spec: StudySpec) -> None:
    """Attach to the cluster at ``address`` (auto, HOST:PORT), or start a local Ray in this process."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Checkpoints every epoch make Tune warn about snapshot frequency on every trial; it is expected.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if address:
        attach(address)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)


def dataset_tags(spec: StudySpec) -> dict[str, str]:
    data = spec.dataset
    if data.path is not None and Path(data.path).is_file():
        return {"labelmix.dataset_fingerprint": store_fingerprint(data.path)}
    return {"labelmix.dataset": json.dumps(data.model_dump(mode="json"), sort_keys=True)}


def run_study(spec: StudySpec, source_text: str, address: Optional[str] = None, callbacks: list | None = None,
              restore: bool = False, tracking_uri: Optional[str] = None, tracking: bool = True,
              stream=None) -> StudyResult:
    """Run (or, ``restore``, continue) a study; ``stream``: where the progress bar goes (stdout)."""
    folder = study_folder(spec)
    if not restore and folder.has(SPEC_FILE):
        raise UserError(
            f"{folder.location}: a study named {spec.name!r} already exists there; `labelmix resume "
            f"{folder.location}` continues it, or change `name` / `storage.path`"
        )
    check_before_start(spec)
    start_ray(address, spec)
    if address:  # a local Ray is one node; an attached cluster may spread trials over many
        check_shared_storage(spec.storage.path, cluster_shape(spec.resources.cpus, spec.resources.gpus))
    callbacks = list(callbacks or [])
    if not restore and folder.remote:  # a mirror left by an earlier study of this name must not lend it its rows
        shutil.rmtree(folder.local, ignore_errors=True)
    folder.local.mkdir(parents=True, exist_ok=True)
    results = SyncedResultsTable(folder, spec)
    if not restore:
        callbacks.append(Progress(spec.name, spec.total_trials, spec.search.concurrency, results.frame, stream))
        if tracking:
            # Checked before any trial starts: an unreachable server fails the submit at once. On
            # restore Tune brings back the tracking callback it pickled, which reattaches its runs.
            # The study run records the spec's objectives; its frontier is the results table's.
            callbacks.append(study_tracking(spec, source_text, folder.local, tracking_uri, dataset_tags(spec),
                                            table_of=results.frame))
        (folder.local / SPEC_FILE).write_text(source_text)
        folder.upload(SPEC_FILE)
    # On restore Tune brings back the callbacks it pickled with the experiment, in one pickle (the
    # tracking callback's table_of is still the restored ResultsTable's frame; ResultsTable reloads
    # its rows from the study folder); the results are read back from that folder.
    tuner = build_tuner(spec, folder, [results, *callbacks], restore=restore, ship_dataset=bool(address))
    tuner.fit()
    table = read_table(folder.local)
    return StudyResult(folder.local, table, frontier_of(table), folder.location)


def resume_study(location: str | Path, address: Optional[str] = None, callbacks: list | None = None) -> StudyResult:
    folder = StudyFolder.at(location)
    if folder.remote:  # the remote folder is the truth; the mirror is rebuilt from it
        shutil.rmtree(folder.local, ignore_errors=True)
    folder.download(SPEC_FILE, TRIALS_FILE, FRONTIER_FILE)
    if not (folder.local / SPEC_FILE).is_file():
        raise UserError(f"{folder.location}: not a study folder (no {SPEC_FILE})")
    if not tune.Tuner.can_restore(folder.location):
        raise UserError(f"{folder.location}: Tune's experiment state is missing; the study never started its trials")
    spec, source = load_spec(str(folder.local / SPEC_FILE))
    spec = spec.model_copy(update={
        "name": folder.name,
        "storage": spec.storage.model_copy(update={"path": folder.storage_path}),
    })
    return run_study(spec, source, address, callbacks, restore=True)
