"""The study spec's sections as validated, frozen models: objectives, search, scheduler, budget,
resources, failure, storage, tracking and smoke.

Each section checks its own fields (types, ranges, the limits below); what depends on several
sections is checked by ``StudySpec`` (labelmix.platform.spec).
"""

from __future__ import annotations

from typing import Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ALGORITHMS",
    "OBJECTIVE_METRICS",
    "SCHEDULERS",
    "BudgetConfig",
    "FailureConfig",
    "Objective",
    "ResourcesConfig",
    "SchedulerConfig",
    "SearchConfig",
    "SmokeConfig",
    "StorageConfig",
    "Strict",
    "TrackingConfig",
    "rung_milestones",
]

# Metric -> the direction that is better, used when an objective gives no mode.
OBJECTIVE_METRICS: dict[str, str] = {
    "val/miou": "max",
    "cost/hours": "min",
    "val/miou_bg": "max",
    "val/mdice": "max",
    "val/miou_calibrated": "max",  # foreground mIoU with the background offset chosen on val (metrics.calibrated_scores)
    "cost/reduction": "max",
}
# Allowed values: each Literal is the one list, the tuple is read from it.
Algorithm = Literal["tpe", "nsga2", "random", "grid"]
SchedulerType = Literal["none", "asha", "pareto_asha"]
FrontOrder = Literal["hypervolume", "crowding"]
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
SCHEDULERS: tuple[str, ...] = get_args(SchedulerType)
# Budgets beyond these are typos (1e30 trials), not studies: refused with the limit in the message.
MAX_TRIALS = 100_000
MAX_EPOCHS = 10_000
MAX_CONCURRENCY = 4096
MAX_CPUS_PER_TRIAL = 1024
MAX_GPUS_PER_TRIAL = 64


# The base of every spec model: unknown keys, changes after validation, NaN and infinity are refused.
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Objective(Strict):
    metric: Literal[tuple(OBJECTIVE_METRICS)]  # the keys above, in their order
    mode: Optional[Literal["max", "min"]] = None  # None: the metric's natural direction

    @model_validator(mode="after")
    def _default_mode(self):
        if self.mode is None:
            object.__setattr__(self, "mode", OBJECTIVE_METRICS[self.metric])
        return self


def _at_most(limit: int):
    """A before-validator: numbers above limit are refused with the limit (an int field given 1e30
    would otherwise fail as "exceeded maximum size", without saying what is allowed)."""

    def check(cls, v):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > limit:
            raise ValueError(f"must be at most {limit}")
        return v

    return classmethod(check)


class SearchConfig(Strict):
    algorithm: Algorithm = "tpe"
    trials: Optional[int] = Field(None, ge=1, le=MAX_TRIALS)  # required, except for grid (default: the grid size)
    concurrency: int = Field(1, ge=1, le=MAX_CONCURRENCY)  # and at most trials
    seed: int = 0
    population_size: Optional[int] = Field(None, ge=2, le=MAX_TRIALS)  # nsga2 only; None: the study runner decides
    startup_trials: Optional[int] = Field(None, ge=0, le=MAX_TRIALS)  # tpe only: random trials before TPE models

    _trial_counts = field_validator("trials", "population_size", "startup_trials", mode="before")(_at_most(MAX_TRIALS))
    _concurrency = field_validator("concurrency", mode="before")(_at_most(MAX_CONCURRENCY))


def rung_milestones(grace_period: float, max_t: float, reduction_factor: float) -> tuple[float, ...]:
    """ASHA's rungs: grace_period * reduction_factor**k for every k that stays below max_t."""
    milestones, milestone = [], grace_period
    while milestone < max_t:
        milestones.append(milestone)
        milestone *= reduction_factor
    return tuple(milestones)


class SchedulerConfig(Strict):
    type: SchedulerType = "none"
    max_epochs: Optional[int] = Field(None, ge=1, le=MAX_EPOCHS)  # filled from fixed.epochs (they must agree)
    grace_period: int = Field(1, ge=1, le=MAX_EPOCHS)

    _epochs = field_validator("max_epochs", "grace_period", mode="before")(_at_most(MAX_EPOCHS))
    reduction_factor: float = Field(2.0, gt=1)
    # pareto_asha only: how trials of one non-dominated rank are ordered (pareto_asha.py; "hypervolume"
    # measured no better on the tabular benchmark, docs/RESULTS.md)
    front_order: FrontOrder = "crowding"
    # asha and pareto_asha: Hyperband's brackets; bracket s makes its first comparison at
    # grace_period * reduction_factor**s, so slow starters survive there (pareto_asha.py)
    brackets: int = Field(1, ge=1)


class BudgetConfig(Strict):
    max_hours: Optional[float] = Field(None, gt=0)  # cap on a trial's annotation hours; None: no cap


class ResourcesConfig(Strict):
    cpus: float = Field(1.0, ge=0, le=MAX_CPUS_PER_TRIAL)
    gpus: float = Field(0.0, ge=0, le=MAX_GPUS_PER_TRIAL)


class FailureConfig(Strict):
    max_failures: int = Field(1, ge=-1)  # retries per trial; -1: retry forever (Tune's convention)


class StorageConfig(Strict):
    path: str = Field("studies", min_length=1)  # local folder or s3://... gs://...


class TrackingConfig(Strict):
    uri: Optional[str] = None
    experiment: Optional[str] = None  # filled with the study name


class SmokeConfig(Strict):
    trials: int = Field(2, ge=1, le=MAX_TRIALS)
    epochs: int = Field(1, ge=1, le=MAX_EPOCHS)

    _trials = field_validator("trials", mode="before")(_at_most(MAX_TRIALS))
    _epochs = field_validator("epochs", mode="before")(_at_most(MAX_EPOCHS))
    volumes: int = Field(4, ge=1)
    slices: int = Field(4, ge=1)
    size: int = Field(64, ge=32)
