"""The thin adapter between Tune and fit(config, report): one trial of a study.

Tune hands the sampled values; the study spec (fixed settings, dataset, cost model, budget)
travels once through the object store with ``tune.with_parameters``, and so does the dataset
store when it sits on the driver's disk (:class:`DatasetSource`): the first trial on each node
writes it to a node-local cache, keyed by the store's fingerprint, and every trial reads that file.

Each report carries, besides fit's metrics, the Ray node the trial ran on (``node/id``) and, on
a GPU, the trial's peak GPU memory (``gpu/peak_memory_mb``). Trials use the device Ray gives them:
Ray sets CUDA_VISIBLE_DEVICES to the GPU a trial holds (several trials share one GPU with
fractional ``resources.gpus``) and fit's ``device: auto`` takes CUDA when a device is visible, the
CPU otherwise (logical GPUs declared on a machine without one).
"""

from __future__ import annotations

import fcntl
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import ray
import torch
from ray import tune

from labelmix.platform.space import trial_config
from labelmix.platform.trial_table import OVER_BUDGET
from labelmix.trainables.config import load_config
from labelmix.trainables.fit import build_run, train

NODE_ID = "node/id"
GPU_PEAK_MEMORY = "gpu/peak_memory_mb"
STORE_CACHE_ENV = "LABELMIX_STORE_CACHE"


@dataclass(frozen=True)
class DatasetSource:
    """Where a trial gets the dataset store when the spec's path may not exist on its node.

    ``ref``: an ObjectRef of the store file's bytes (put once per study by the driver); ``uri``: a
    pyarrow filesystem URI (s3://, gs://, file://). Either way the store is written once per node
    to ``<cache>/<fingerprint>.parquet``.
    """

    fingerprint: str
    ref: Any = None
    uri: Optional[str] = None
    size: int = 0


def store_cache_dir() -> Path:
    return Path(os.environ.get(STORE_CACHE_ENV) or Path(tempfile.gettempdir()) / "labelmix-stores")


def node_local_store(source: DatasetSource) -> Path:
    """The store as a file on this node: fetched by the first trial here, reused by the others.

    A file lock makes concurrent trials on one node wait for the first instead of each fetching;
    the store is written to a temporary name and renamed, so a reader never sees half a file.
    """
    cache = store_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{source.fingerprint}.parquet"
    if path.is_file():
        return path
    with open(cache / f"{source.fingerprint}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            if source.ref is not None:
                tmp.write_bytes(ray.get(source.ref))
            else:
                import pyarrow.fs as pafs

                fs, inner = pafs.FileSystem.from_uri(source.uri)
                with fs.open_input_stream(inner) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=8 << 20)
            os.replace(tmp, path)
    return path


def report_to_tune(metrics: Mapping[str, float], checkpoint_dir: str | None) -> None:
    checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    tune.report(dict(metrics), checkpoint=checkpoint)


def node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def make_reporter(on_gpu: bool):
    """fit's ``report``: its metrics plus the node and, on a GPU, the peak memory so far."""
    node = node_id()

    def report(metrics: Mapping[str, float], checkpoint_dir: str | None) -> None:
        extra: dict[str, Any] = {NODE_ID: node}
        if on_gpu:
            extra[GPU_PEAK_MEMORY] = torch.cuda.max_memory_allocated() / 2**20
        report_to_tune({**metrics, **extra}, checkpoint_dir)

    return report


def run_trial(sampled: Mapping[str, Any], spec: Any, cpus_per_trial: float = 1.0,
              dataset: Optional[DatasetSource] = None) -> None:
    """Tune's function trainable: config dict -> frozen TrainConfig -> fit, resumed from Tune's checkpoint."""
    values = trial_config(spec, sampled)
    values.setdefault("threads", max(1, int(cpus_per_trial)))
    if dataset is not None:
        values["dataset"] = {**values["dataset"], "path": str(node_local_store(dataset))}
    run = build_run(load_config(values))  # the store is read once; the mix's cost comes with the run
    cap = spec.budget.max_hours
    if cap is not None and run.cost_metrics["cost/hours"] > cap:
        # Not trained: NaN objectives make Optuna mark the trial failed-by-design, not a result.
        objectives = {o.metric: math.nan for o in spec.objectives if not o.metric.startswith("cost/")}
        tune.report({**run.cost_metrics, OVER_BUDGET: 1.0, "val/miou": math.nan, **objectives, "epoch": 0.0, NODE_ID: node_id()})
        return
    on_gpu = run.device.type == "cuda"
    if on_gpu:  # actors are reused across trials: the peak must be this trial's own
        torch.cuda.reset_peak_memory_stats()
    report = make_reporter(on_gpu)
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        train(run, report)
        return
    with checkpoint.as_directory() as directory:
        train(run, report, resume_from=directory)
