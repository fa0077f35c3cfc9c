"""The thin adapter between Tune and fit(config, report): one trial of a study.

Tune hands the sampled values; the study spec (fixed settings, dataset, cost model, budget)
travels once through the object store with ``tune.with_parameters``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from ray import tune

from labelmix.platform.space import trial_config
from labelmix.trainables.config import TrainConfig, load_config
from labelmix.trainables.data.store import load_store
from labelmix.trainables.fit import fit, plan_annotations, resolve_store

OVER_BUDGET = "status/over_budget"


def report_to_tune(metrics: Mapping[str, float], checkpoint_dir: str | None) -> None:
    checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    tune.report(dict(metrics), checkpoint=checkpoint)


def planned_cost(config: TrainConfig) -> dict[str, float]:
    """Cost metrics of the trial's mix, computed before any training (for the budget cap)."""
    return plan_annotations(config, load_store(resolve_store(config)))[2].metrics()


def run_trial(sampled: Mapping[str, Any], spec: Any, cpus_per_trial: float = 1.0) -> None:
    """Tune's function trainable: config dict -> frozen TrainConfig -> fit, resumed from Tune's checkpoint."""
    values = trial_config(spec, sampled)
    values.setdefault("threads", max(1, int(cpus_per_trial)))
    config = load_config(values)
    cap = spec.budget.max_hours
    if cap is not None:
        cost = planned_cost(config)
        if cost["cost/hours"] > cap:
            # Not trained: NaN objectives make Optuna mark the trial failed-by-design, not a result.
            tune.report({**cost, OVER_BUDGET: 1.0, "val/miou": math.nan, "epoch": 0.0})
            return
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        fit(config, report_to_tune)
        return
    with checkpoint.as_directory() as directory:
        fit(config, report_to_tune, resume_from=directory)
