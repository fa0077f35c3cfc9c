"""The study spec (YAML) as validated, frozen models.

A spec names the dataset, the cost model, the objectives, the search space over trial-config
fields, the algorithm, the scheduler, the budget, the per-trial resources and where results go.
``labelmix check`` / ``submit`` validate it completely before anything starts: every problem is
one UserError whose message begins with the field path (``space.ema_decay.loguniform: ...``).
Beyond types and ranges, what a trial would fail on is refused here too: encoder names unknown
to timm's registry, ``ds_depth`` beyond an encoder's levels, a ``dataset.path`` that is no
store (its metadata and three small columns are read, never the images), NaN and infinity
anywhere, budgets beyond MAX_TRIALS / MAX_EPOCHS / MAX_CONCURRENCY. ``check_storage`` (called
by check and submit) refuses a study folder that cannot be created, without creating it.

The search space is kept as written (``StudySpec.space``, so a dumped spec reloads unchanged) and
parsed into ``Axis`` records (``StudySpec.axes``) that ``labelmix.platform.space`` turns into
Tune/Optuna distributions. No Ray import here: checking a spec stays fast.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Optional
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from labelmix.errors import UserError, load_yaml, validated
from labelmix.trainables.config import CostConfig, DataConfig, SyntheticData, TrainConfig, load_config
from labelmix.trainables.data.annotations import ANNOTATION_TYPES, AnnotationMix

__all__ = [
    "ALGORITHMS",
    "Axis",
    "DISTRIBUTIONS",
    "OBJECTIVE_METRICS",
    "SCHEDULERS",
    "StudySpec",
    "assemble_config",
    "check_storage",
    "grid_points",
    "load_spec",
    "parse_spec",
    "smoke_spec",
    "spec_hash",
]

# Metric -> the direction that is better, used when an objective gives no mode.
OBJECTIVE_METRICS: dict[str, str] = {
    "val/miou": "max",
    "cost/hours": "min",
    "val/miou_bg": "max",
    "val/mdice": "max",
    "cost/reduction": "max",
}
ALGORITHMS = ("tpe", "nsga2", "random", "grid")
SCHEDULERS = ("none", "asha", "pareto_asha")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int", "grid")
# Budgets beyond these are typos (1e30 trials), not studies: refused with the limit in the message.
MAX_TRIALS = 100_000
MAX_EPOCHS = 10_000
MAX_CONCURRENCY = 4096
MAX_CPUS_PER_TRIAL = 1024
MAX_GPUS_PER_TRIAL = 64
# Virtual filesystems: a study folder there cannot be created, whatever the permissions say.
VIRTUAL_ROOTS = ("/proc", "/sys", "/dev")
# TrainConfig fields that the spec sets in its own top-level sections, the same for every trial.
SECTION_FIELDS = ("dataset", "cost")
MIX_KEYS = (*ANNOTATION_TYPES, "seed")

_DISTRIBUTION_HELP = (
    "{choice: [..]}, {uniform: [low, high]}, {loguniform: [low, high]}, {int: [low, high]}, "
    "{grid: [..]}, or a plain value (fixed)"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --- distributions -------------------------------------------------------------------------------


def _ordered(bounds: tuple, log: bool = False) -> tuple:
    low, high = bounds
    if log and low <= 0:
        raise ValueError("low must be > 0 on a log scale")
    if low > high:
        raise ValueError(f"low {low} > high {high}")
    return bounds


class ChoiceDist(_Strict):
    choice: list[Any] = Field(min_length=1)


class GridDist(_Strict):
    grid: list[Any] = Field(min_length=1)


class UniformDist(_Strict):
    uniform: tuple[float, float]

    @field_validator("uniform")
    @classmethod
    def _bounds(cls, v):
        return _ordered(v)


class LogUniformDist(_Strict):
    loguniform: tuple[float, float]

    @field_validator("loguniform")
    @classmethod
    def _bounds(cls, v):
        return _ordered(v, log=True)


class IntDist(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    int_: tuple[int, int] = Field(alias="int")  # inclusive at both ends

    @field_validator("int_")
    @classmethod
    def _bounds(cls, v):
        return _ordered(v)


_DISTRIBUTION_MODELS = {
    "choice": ChoiceDist,
    "grid": GridDist,
    "uniform": UniformDist,
    "loguniform": LogUniformDist,
    "int": IntDist,
}


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


@dataclass(frozen=True)
class Axis:
    """One entry of the search space, parsed.

    ``name`` is a TrainConfig field (``ds_type``), a mix weight (``mix.full``, ``mix.seed``), or
    ``mix`` for a choice/grid of complete mixes. ``kind`` is ``fixed`` or a distribution:
    choice/grid keep their options in ``values``; uniform/loguniform/int keep ``(low, high)``
    (int inclusive); fixed keeps ``(value,)``.
    """

    name: str
    kind: str
    values: tuple

    @property
    def searched(self) -> bool:
        return self.kind != "fixed"

    @property
    def path(self) -> str:
        return f"space.{self.name}"

    @property
    def categorical(self) -> bool:
        return self.kind in ("choice", "grid")

    @property
    def encoded(self) -> bool:
        """Options that are not scalars (mix dicts, lists) travel as index strings "0", "1", ...

        Optuna's categorical distributions accept only None, bool, int, float and str.
        """
        return self.categorical and not all(_is_scalar(v) for v in self.values)

    def lowest(self) -> Any:
        """The first option, or the lower bound: the representative value checked at load time."""
        return self.values[0]

    def highest(self) -> Any:
        return self.values[-1]

    def candidates(self) -> tuple:
        """Values that validation tries: every option, or both bounds."""
        return self.values


def grid_points(axes: tuple[Axis, ...]) -> int:
    """Number of points of the grid spanned by the searched axes (1 when nothing is searched)."""
    return math.prod(len(a.values) for a in axes if a.searched)


def _parse_axis(name: str, raw: Any, path: str) -> Axis:
    if not isinstance(raw, Mapping):
        return Axis(name, "fixed", (raw,))
    keys = list(raw)
    if len(keys) == 1 and keys[0] in DISTRIBUTIONS:
        kind = keys[0]
        dist = validated(_DISTRIBUTION_MODELS[kind], dict(raw), prefix=path)
        values = getattr(dist, "int_" if kind == "int" else kind)
        if kind in ("uniform", "loguniform"):
            values = tuple(float(v) for v in values)
        return Axis(name, kind, tuple(values))
    unknown = [k for k in keys if k not in DISTRIBUTIONS]
    if len(keys) == 1:
        raise UserError(f"{path}.{unknown[0]}: unknown key; allowed here: {', '.join(DISTRIBUTIONS)}")
    raise UserError(f"{path}: give exactly one distribution, {_DISTRIBUTION_HELP}; got keys {keys}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_mix(raw: Any, path: str) -> list[Axis]:
    """``space.mix``: per-type weights, or a choice/grid of complete mixes."""
    if not isinstance(raw, Mapping):
        raise UserError(
            f"{path}: a mix is per-type weights {{full: .., box: .., global: .., none: ..}} or "
            f"{{choice: [mixes]}} / {{grid: [mixes]}} of complete mixes; got {raw!r}"
        )
    keys = list(raw)
    if keys and set(keys) <= {"choice", "grid"}:
        if len(keys) != 1:
            raise UserError(f"{path}: give one of choice or grid, not both")
        kind = keys[0]
        dist = validated(_DISTRIBUTION_MODELS[kind], dict(raw), prefix=path)
        options = []
        for i, mix in enumerate(getattr(dist, kind)):
            where = f"{path}.{kind}.{i}"
            if not isinstance(mix, Mapping):
                raise UserError(f"{where}: a complete mix is a mapping such as {{full: 0.06, none: 0.94}}, got {mix!r}")
            try:
                options.append(AnnotationMix.from_mapping(mix).as_dict())
            except UserError as exc:  # "mix.full: ..." / "mix: ..." -> "<where>.full: ..." / "<where>: ..."
                raise UserError(f"{where}{str(exc).removeprefix('mix')}") from None
            except (TypeError, ValueError):
                raise UserError(f"{where}: mix fractions must be numbers, got {dict(mix)!r}") from None
        return [Axis("mix", kind, tuple(options))]

    for key in keys:
        if key not in MIX_KEYS:
            raise UserError(
                f"{path}.{key}: unknown key; allowed here: {', '.join(MIX_KEYS)} "
                "(or one choice/grid of complete mixes)"
            )
    axes = []
    for kind in ANNOTATION_TYPES:
        if kind not in raw:
            axes.append(Axis(f"mix.{kind}", "fixed", (0.0,)))
            continue
        where = f"{path}.{kind}"
        axis = _parse_axis(f"mix.{kind}", raw[kind], where)
        if axis.searched:
            where = f"{where}.{axis.kind}"
        for value in axis.candidates():
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise UserError(f"{where}: mix weights must be numbers in [0, 1], got {value!r}")
        axes.append(axis)
    if "seed" in raw:
        axis = _parse_axis("mix.seed", raw["seed"], f"{path}.seed")
        if axis.kind in ("uniform", "loguniform") or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in axis.candidates()
        ):
            raise UserError(f"{path}.seed: the mix seed is an integer (or a choice/int range of integers)")
        axes.append(axis)
    if not any(max(a.candidates()) > 0 for a in axes if a.name != "mix.seed"):
        raise UserError(f"{path}: every weight is 0; at least one annotation type needs a positive weight")
    return axes


def _parse_case(case: Any, where: str, default_name: str, taken: set[str] = frozenset()) -> dict[str, Any]:
    """One named set of trial config fields, such as ``{name: 5% alone, mix: {full: 0.05, none:
    0.95}, pseudo_weight: 0}`` (a case of ``space.cases``, or the study's ``reference``): its ``mix``
    is a complete mix; ``name`` (default ``default_name``) labels its trials in the trial table;
    fields in ``taken`` (set in fixed or space) are refused."""
    if not isinstance(case, Mapping) or not case:
        raise UserError(f"{where}: a case is a non-empty mapping of trial config fields, got {case!r}")
    name = case.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{where}.name: a case name is a non-empty string, got {name!r}")
    fields = {k: v for k, v in case.items() if k != "name"}
    for key in fields:
        _check_field(key, where)
        if key in taken:
            raise UserError(f"{where}.{key}: also set in fixed or space; a field is set in one place")
    if "mix" in fields:
        mix = fields["mix"]
        if not isinstance(mix, Mapping):
            raise UserError(f"{where}.mix: a complete mix is a mapping such as {{full: 0.06, none: 0.94}}, got {mix!r}")
        try:
            fields["mix"] = AnnotationMix.from_mapping(mix).as_dict()
        except UserError as exc:
            raise UserError(f"{where}.{exc}") from None
        except (TypeError, ValueError):
            raise UserError(f"{where}.mix: mix fractions must be numbers, got {dict(mix)!r}") from None
    return {"name": name, **fields}


def _parse_cases(raw: Any, path: str, taken: set[str]) -> Axis:
    """``space.cases``: a grid (or choice) of cases (:func:`_parse_case`), names unique."""
    if not isinstance(raw, Mapping) or len(raw) != 1 or next(iter(raw)) not in ("grid", "choice"):
        raise UserError(f"{path}: give {{grid: [cases]}} or {{choice: [cases]}}, each case a mapping of trial config fields")
    kind = next(iter(raw))
    dist = validated(_DISTRIBUTION_MODELS[kind], dict(raw), prefix=path)
    cases, names = [], set()
    for i, case in enumerate(getattr(dist, kind)):
        where = f"{path}.{kind}.{i}"
        case = _parse_case(case, where, f"case {i}", taken)
        if case["name"] in names:
            raise UserError(f"{where}.name: {case['name']!r} names two cases; case names are unique")
        names.add(case["name"])
        cases.append(case)
    return Axis("cases", kind, tuple(cases))


def _check_field(key: Any, section: str) -> None:
    """A key of ``space`` or ``fixed`` must be a TrainConfig field that trials may vary."""
    fields = TrainConfig.model_fields
    if key in SECTION_FIELDS:
        raise UserError(f"{section}.{key}: set by the spec's top-level `{key}:` section, the same for every trial")
    if key not in fields:
        close = difflib.get_close_matches(str(key), list(fields), n=3)
        hint = f"did you mean {' or '.join(close)}?" if close else f"trial config fields: {', '.join(fields)}"
        raise UserError(f"{section}.{key}: not a trial config field; {hint}")


# --- sections ------------------------------------------------------------------------------------


class Objective(_Strict):
    metric: Literal["val/miou", "cost/hours", "val/miou_bg", "val/mdice", "cost/reduction"]
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


class SearchConfig(_Strict):
    algorithm: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    trials: Optional[int] = Field(None, ge=1, le=MAX_TRIALS)  # required, except for grid (default: the grid size)
    concurrency: int = Field(1, ge=1, le=MAX_CONCURRENCY)  # and at most trials
    seed: int = 0
    population_size: Optional[int] = Field(None, ge=2, le=MAX_TRIALS)  # nsga2 only; None: the study runner decides
    startup_trials: Optional[int] = Field(None, ge=0, le=MAX_TRIALS)  # tpe only: random trials before TPE models

    _trial_counts = field_validator("trials", "population_size", "startup_trials", mode="before")(_at_most(MAX_TRIALS))
    _concurrency = field_validator("concurrency", mode="before")(_at_most(MAX_CONCURRENCY))


class SchedulerConfig(_Strict):
    type: Literal["none", "asha", "pareto_asha"] = "none"
    max_epochs: Optional[int] = Field(None, ge=1, le=MAX_EPOCHS)  # filled from fixed.epochs (they must agree)
    grace_period: int = Field(1, ge=1, le=MAX_EPOCHS)

    _epochs = field_validator("max_epochs", "grace_period", mode="before")(_at_most(MAX_EPOCHS))
    reduction_factor: float = Field(2.0, gt=1)


class BudgetConfig(_Strict):
    max_hours: Optional[float] = Field(None, gt=0)  # cap on a trial's annotation hours; None: no cap


class ResourcesConfig(_Strict):
    cpus: float = Field(1.0, ge=0, le=MAX_CPUS_PER_TRIAL)
    gpus: float = Field(0.0, ge=0, le=MAX_GPUS_PER_TRIAL)


class FailureConfig(_Strict):
    max_failures: int = Field(1, ge=-1)  # retries per trial; -1: retry forever (Tune's convention)


class StorageConfig(_Strict):
    path: str = Field("studies", min_length=1)  # local folder or s3://... gs://...


class TrackingConfig(_Strict):
    uri: Optional[str] = None
    experiment: Optional[str] = None  # filled with the study name


class SmokeConfig(_Strict):
    trials: int = Field(2, ge=1, le=MAX_TRIALS)
    epochs: int = Field(1, ge=1, le=MAX_EPOCHS)

    _trials = field_validator("trials", mode="before")(_at_most(MAX_TRIALS))
    _epochs = field_validator("epochs", mode="before")(_at_most(MAX_EPOCHS))
    volumes: int = Field(4, ge=1)
    slices: int = Field(4, ge=1)
    size: int = Field(64, ge=32)


def _set(model: BaseModel, name: str, value: Any) -> None:
    """Fill a default on a frozen model while its own validator runs (never afterwards)."""
    object.__setattr__(model, name, value)


class StudySpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    description: str = ""
    dataset: DataConfig = DataConfig(synthetic=SyntheticData())
    cost: CostConfig = CostConfig()
    objectives: tuple[Objective, ...]  # 1 or 2
    space: dict[str, Any]
    fixed: dict[str, Any] = {}
    search: SearchConfig
    scheduler: SchedulerConfig = SchedulerConfig()
    budget: BudgetConfig = BudgetConfig()
    resources: ResourcesConfig = ResourcesConfig()
    failure: FailureConfig = FailureConfig()
    storage: StorageConfig = StorageConfig()
    tracking: TrackingConfig = TrackingConfig()
    smoke: SmokeConfig = SmokeConfig()
    # One trial run beside the searched ones, for comparison: a named set of trial config fields
    # over the fixed ones, such as {name: all masks, mix: {full: 1}}. It is not searched, not on the
    # frontier and never stopped early; the frontier is read against it (trial_table.recommend_near).
    reference: Optional[dict[str, Any]] = None

    _axes: tuple[Axis, ...] = PrivateAttr(default=())
    _reference: Optional[dict[str, Any]] = PrivateAttr(default=None)

    @field_validator("objectives")
    @classmethod
    def _one_or_two(cls, v):
        # Not Field(min_length=..): pydantic then adds a second, misleading length error to an item error.
        if not 1 <= len(v) <= 2:
            raise ValueError(f"give 1 or 2 objectives, got {len(v)}")
        return v

    @property
    def axes(self) -> tuple[Axis, ...]:
        return self._axes

    @property
    def searched(self) -> tuple[Axis, ...]:
        return tuple(a for a in self._axes if a.searched)

    @property
    def reference_case(self) -> Optional[dict[str, Any]]:
        """The parsed ``reference`` (its ``name`` and fields), or None."""
        return self._reference

    @property
    def total_trials(self) -> int:
        """Trials the study runs: the searched ones and the reference."""
        return self.search.trials + (self._reference is not None)

    @model_validator(mode="after")
    def _check(self):
        _refuse_non_finite(self.model_dump(by_alias=True), "")
        self._check_objectives()
        self._check_search_settings()
        for key in self.fixed:
            _check_field(key, "fixed")
        self._axes = self._parse_space()
        self._check_grid()
        self._check_concurrency()
        self._check_dataset()
        self._check_epochs()
        self._check_trial_configs()
        self._check_network()
        if self.reference is not None:
            self._reference = _parse_case(self.reference, "reference", "reference")
            load_config(reference_config(self), prefix="reference")
        if self.tracking.experiment is None:
            _set(self, "tracking", self.tracking.model_copy(update={"experiment": self.name}))
        return self

    def _check_objectives(self) -> None:
        seen = set()
        for i, objective in enumerate(self.objectives):
            if objective.metric in seen:
                raise UserError(f"objectives.{i}.metric: {objective.metric} is listed twice")
            seen.add(objective.metric)
        if len(self.objectives) > 1 and self.scheduler.type == "asha":
            raise UserError(
                f"scheduler.type: asha optimises one metric; with {len(self.objectives)} objectives use "
                "pareto_asha or none"
            )

    def _check_search_settings(self) -> None:
        search = self.search
        if search.population_size is not None and search.algorithm != "nsga2":
            raise UserError(f"search.population_size: only for algorithm nsga2 (algorithm is {search.algorithm})")
        if search.startup_trials is not None and search.algorithm != "tpe":
            raise UserError(f"search.startup_trials: only for algorithm tpe (algorithm is {search.algorithm})")
        if search.trials is None and search.algorithm != "grid":
            raise UserError(f"search.trials: required for algorithm {search.algorithm} (how many trials to run)")

    def _parse_space(self) -> tuple[Axis, ...]:
        axes: list[Axis] = []
        for key, raw in self.space.items():
            if key == "cases":
                taken = {k.split(".")[0] for k in [*self.space, *self.fixed] if k != "cases"}
                axes.append(_parse_cases(raw, "space.cases", taken))
                continue
            _check_field(key, "space")
            if key in self.fixed:
                raise UserError(f"space.{key}: also set in fixed; a field is either fixed or searched")
            if key == "mix":
                axes.extend(_parse_mix(raw, "space.mix"))
            else:
                axes.append(_parse_axis(key, raw, f"space.{key}"))
        if not any(a.searched for a in axes):
            raise UserError(
                "space: nothing is searched; give at least one field a distribution: {choice: [..]}, "
                "{uniform: [low, high]}, {loguniform: [low, high]}, {int: [low, high]} or {grid: [..]}"
            )
        return tuple(axes)

    def _check_grid(self) -> None:
        algorithm = self.search.algorithm
        for axis in self.searched:
            if algorithm == "grid" and axis.kind != "grid":
                raise UserError(
                    f"{axis.path}: search.algorithm grid needs every searched field as {{grid: [..]}} "
                    f"(or a plain value), got {axis.kind}"
                )
            if algorithm != "grid" and axis.kind == "grid":
                raise UserError(
                    f"{axis.path}.grid: a grid list needs search.algorithm: grid (algorithm is {algorithm}); "
                    "use {choice: [..]} to sample"
                )
        if algorithm == "grid":
            points = grid_points(self._axes)
            if self.search.trials is None:  # a derived count: concurrency is capped by it, not refused
                update = {"trials": points, "concurrency": min(self.search.concurrency, points)}
                _set(self, "search", self.search.model_copy(update=update))
            elif self.search.trials > points:
                raise UserError(f"search.trials: {self.search.trials} is more than the grid's {points} points")

    def _check_concurrency(self) -> None:
        search = self.search
        if search.concurrency > search.trials:
            raise UserError(
                f"search.concurrency: {search.concurrency} is more than search.trials {search.trials}; at most "
                f"{search.trials} trials can run at once"
            )

    def _check_dataset(self) -> None:
        path = self.dataset.path
        if path is None or "://" in path:
            return
        local = Path(path).expanduser()
        if not local.exists():
            raise UserError(f"dataset.path: file not found: {path}")
        _check_store(local, path)
        # Absolute, because trials run in other working directories (Tune's trial folders).
        _set(self, "dataset", self.dataset.model_copy(update={"path": str(local.resolve())}))

    def _check_epochs(self) -> None:
        scheduler = self.scheduler
        if "epochs" in self.space and scheduler.type != "none":
            raise UserError(
                f"space.epochs: cannot be searched with scheduler {scheduler.type} (its max_epochs is one "
                "number); fix it in fixed.epochs or use scheduler.type: none"
            )
        fixed_epochs = self.fixed.get("epochs")
        if fixed_epochs is not None:
            validated(TrainConfig, {"epochs": fixed_epochs}, prefix="fixed")
        if fixed_epochs is not None and scheduler.max_epochs is not None and fixed_epochs != scheduler.max_epochs:
            raise UserError(
                f"scheduler.max_epochs: {scheduler.max_epochs} differs from fixed.epochs {fixed_epochs}; every "
                "trial trains fixed.epochs epochs, so give one of them or the same number"
            )
        if fixed_epochs is None and scheduler.max_epochs is not None and "epochs" not in self.space:
            _set(self, "fixed", {**self.fixed, "epochs": scheduler.max_epochs})
        elif scheduler.max_epochs is None and "epochs" not in self.space:
            epochs = fixed_epochs if fixed_epochs is not None else TrainConfig.model_fields["epochs"].default
            _set(self, "scheduler", scheduler.model_copy(update={"max_epochs": epochs}))
        scheduler = self.scheduler
        if scheduler.type != "none" and scheduler.grace_period > scheduler.max_epochs:
            raise UserError(
                f"scheduler.grace_period: {scheduler.grace_period} is more than max_epochs {scheduler.max_epochs}"
            )
        device = self.fixed.get("device")
        if device == "cuda" and self.resources.gpus <= 0:
            raise UserError("fixed.device: cuda needs resources.gpus > 0 (a fraction such as 0.25 is allowed)")

    def _check_trial_configs(self) -> None:
        """Fixed values, every option (or both bounds) of each searched field, and one whole trial.

        Bad values fail here, at check time, not in the first trial on the cluster.
        """
        base = _base_config(self)
        _load_trial(base, "fixed", self.fixed)
        for axis in self._axes:
            if axis.name.startswith("mix"):
                continue  # checked by _parse_mix and by the representative trial below
            if axis.name == "cases":
                others = {a.name: a.lowest() for a in self.searched if a.name != "cases"}
                for i, case in enumerate(axis.candidates()):
                    _load_trial(assemble_config(self, {**others, "cases": case}), f"space.cases.{axis.kind}.{i}",
                                [k for k in case if k != "name"])
                continue
            for value in axis.candidates():
                _load_trial({**base, axis.name: value}, "space", [axis.name])
            if axis.kind in ("uniform", "loguniform") and axis.values[0] < axis.values[1]:
                low, high = axis.values
                inside = low + 0.37 * (high - low)  # a non-integral value inside the range
                try:
                    load_config({**base, axis.name: inside})
                except UserError:
                    takes = _type_name(TrainConfig.model_fields[axis.name].annotation)
                    raise UserError(
                        f"{axis.path}.{axis.kind}: samples fractional numbers but {axis.name} takes {takes}; "
                        "use {int: [low, high]} or {choice: [..]}"
                    ) from None
        sampled = {a.name: a.lowest() for a in self.searched}
        weights = [a for a in self._axes if a.name in {f"mix.{t}" for t in ANNOTATION_TYPES}]
        if weights and sum(sampled.get(a.name, a.lowest()) for a in weights) <= 0:
            # The lowest weights are all 0: represent the mix by the highest ones instead.
            sampled.update({a.name: a.highest() for a in weights if a.searched})
        load_config(assemble_config(self, sampled), prefix="fixed")

    def _check_network(self) -> None:
        """Encoders against timm's registry; ds_depth and ds_level_weights against each encoder's levels.

        Every combination a trial can get is checked: per case of ``space.cases`` (its own values
        first), else every option of the searched fields. Nothing named: nothing to check (no timm import).
        """
        names = ("encoder", "ds_depth", "ds_level_weights")
        cases = next((a for a in self._axes if a.name == "cases"), None)
        in_cases = cases is not None and any(k in case for case in cases.values for k in names)
        if not in_cases and not any(n in self.fixed or n in self.space for n in names):
            return
        scenarios = [{n: self._options(n) for n in names}]
        if cases is not None:
            where = f"space.cases.{cases.kind}"
            scenarios = [{n: [(case[n], f"{where}.{i}.{n}")] if n in case else scenarios[0][n] for n in names}
                         for i, case in enumerate(cases.values)]
        for scenario in scenarios:
            for encoder, encoder_path in scenario["encoder"]:
                levels = _encoder_levels(encoder, encoder_path)
                for depth, depth_path in scenario["ds_depth"]:
                    if depth != "max" and depth > levels:
                        raise UserError(
                            f"{depth_path}: {depth} is more than the {levels} decoder levels of encoder {encoder!r} "
                            f"(allowed 0..{levels} or max)"
                        )
                    for weights, weights_path in scenario["ds_level_weights"]:
                        supervised = levels if depth == "max" else depth
                        if weights is not None and len(weights) != supervised:
                            raise UserError(
                                f"{weights_path}: {len(weights)} weights for {supervised} supervised levels "
                                f"(encoder {encoder!r}, ds_depth {depth}); give one weight per level, coarsest first"
                            )

    def _options(self, name: str) -> list[tuple[Any, str]]:
        """(value, field path) of every value a trial can get for ``name`` outside space.cases."""
        if name in self.fixed:
            return [(self.fixed[name], f"fixed.{name}")]
        axis = next((a for a in self._axes if a.name == name), None)
        if axis is None:
            return [(TrainConfig.model_fields[name].default, f"{name} (default)")]
        if axis.kind == "fixed":
            return [(axis.values[0], axis.path)]
        if axis.kind == "int":
            return [(v, f"{axis.path}.int") for v in axis.values]  # the bounds: what the levels limit
        return [(v, f"{axis.path}.{axis.kind}.{i}") for i, v in enumerate(axis.values)]


def _refuse_non_finite(value: Any, path: str) -> None:
    """NaN and infinity are no setting of any field (a YAML .inf, .nan), wherever they are."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{path or '(top level)'}: must be a finite number, got {value!r}")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _refuse_non_finite(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _refuse_non_finite(item, f"{path}.{i}")


def _load_trial(config: Mapping[str, Any], prefix: str, fields) -> TrainConfig:
    """load_config, then the limits of the given fields: finite numbers (a string "inf" parses to
    one), and at most MAX_EPOCHS epochs."""
    trial = load_config(config, prefix=prefix)
    for name in fields:
        if name in SECTION_FIELDS or name not in TrainConfig.model_fields:
            continue
        value = getattr(trial, name)
        _refuse_non_finite(value.model_dump(by_alias=True) if isinstance(value, BaseModel) else value, f"{prefix}.{name}")
    if "epochs" in fields and trial.epochs > MAX_EPOCHS:
        raise UserError(f"{prefix}.epochs: {trial.epochs} is more than the limit of {MAX_EPOCHS} epochs")
    return trial


@functools.lru_cache(maxsize=64)
def _levels_of(encoder: str) -> int:
    from labelmix.trainables.model import num_levels

    return num_levels(encoder)


def _encoder_levels(encoder: Any, path: str) -> int:
    """The decoder levels of an encoder name; an unknown name is refused with close names.

    Names are looked up in timm's registry (never imported or evaluated)."""
    if encoder == "unet":
        return _levels_of(encoder)
    import timm

    if not isinstance(encoder, str) or not timm.is_model(encoder):
        close = difflib.get_close_matches(str(encoder), ["unet", *timm.list_models()], n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise UserError(f"{path}: unknown encoder {encoder!r}; use unet or a timm model name (timm.list_models()){hint}")
    try:
        return _levels_of(encoder)
    except UserError as exc:
        raise UserError(f"{path}: {str(exc).removeprefix('encoder: ')}") from None
    except Exception as exc:  # the user's choice of model, built by timm: any failure is theirs to fix
        raise UserError(f"{path}: timm model {encoder!r} cannot be built with features_only=True "
                        f"({type(exc).__name__}: {exc})") from None


def _check_store(local: Path, path: str) -> None:
    """A dataset store: its metadata and three small columns, never the images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labelmix.trainables.data.store import FORMAT_VERSION, read_metadata

    if local.is_dir():
        raise UserError(f"dataset.path: {path} is a folder; give a dataset store file made by `labelmix data ...`")
    try:
        meta = read_metadata(local)
    except UserError as exc:
        raise UserError(f"dataset.path: {exc}") from None
    except ValueError:  # json
        raise UserError(f"dataset.path: {path}: its labelmix metadata is not valid JSON; recreate the store") from None
    if not isinstance(meta, Mapping) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, Mapping) else None
        raise UserError(f"dataset.path: {path}: store format {version} is not the supported {FORMAT_VERSION}")
    classes = meta.get("class_names")
    if not isinstance(classes, list) or len(classes) < 2:
        raise UserError(f"dataset.path: {path}: the store names classes {classes!r}; it needs background and at "
                        "least one class")
    try:
        table = pq.read_table(local, columns=["split", "height", "width"])
    except (pa.ArrowException, OSError, KeyError) as exc:
        raise UserError(f"dataset.path: {path}: not a dataset store ({exc})") from None
    splits = table.column("split").to_pylist()
    if "train" not in splits:
        raise UserError(f"dataset.path: {path}: the store has no training images (split train); re-import it "
                        "with a train fraction above 0 (--split)")
    sizes = set(zip(table.column("height").to_pylist(), table.column("width").to_pylist()))
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:4])
        raise UserError(f"dataset.path: {path}: images of {len(sizes)} sizes ({shown}, height x width); trials "
                        "batch one size, so re-import with --size H W")


def check_storage(path: str, where: str = "storage.path") -> None:
    """A local study folder must be one this user can create and write here; nothing is created
    to find out. Object-store URIs (s3://, gs://) are checked by the study when it writes."""
    if "://" in path:
        if urlsplit(path).scheme.lower() != "file":
            return
        path_part = urlsplit(path).path
    else:
        path_part = path
    full = Path(os.path.abspath(Path(path_part).expanduser()))
    real = Path(os.path.realpath(full))
    for root in map(Path, VIRTUAL_ROOTS):
        if real == root or root in real.parents:
            raise UserError(f"{where}: {path} is under {root}, a virtual filesystem; give a folder on a disk, "
                            "such as studies or ~/studies")
    existing = full
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        what = f"{path} is" if existing == full else f"{path} cannot be created: {existing} is"
        raise UserError(f"{where}: {what} a file, not a folder")
    read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    if read_only or not os.access(existing, os.W_OK | os.X_OK):
        verb = "written" if existing == full else "created"
        why = "on a read-only filesystem" if read_only else "not writable by this user"
        raise UserError(f"{where}: {path} cannot be {verb}: {existing} is {why}")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _mix_seed(spec: StudySpec, values: Mapping[str, Any]) -> int:
    """The mix seed a trial gets unless the spec sets one: its ``seed`` when the space searches
    ``seed`` (a seed is then one paired replicate: weights, batch order and which images get which
    label, the same images for every mix of that seed), else ``search.seed``."""
    return values["seed"] if "seed" in values else spec.search.seed


def _base_config(spec: StudySpec, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The trial config of the fixed settings alone (searched fields keep TrainConfig's defaults)."""
    mix_seed = _mix_seed(spec, values or {})
    config = copy.deepcopy(dict(spec.fixed))
    config["dataset"] = spec.dataset.model_dump(exclude_none=True)
    config["cost"] = spec.cost.model_dump()
    mix = config.get("mix")
    if isinstance(mix, Mapping):
        # Missing types are 0 here as in space.mix (MixConfig alone would default full to 1).
        config["mix"] = {**{t: 0.0 for t in ANNOTATION_TYPES}, "seed": mix_seed, **mix}
    elif mix is None:
        config["mix"] = {"full": 1.0, "seed": mix_seed}
    return config


def assemble_config(spec: StudySpec, values: Mapping[str, Any]) -> dict[str, Any]:
    """The plain trial-config dict: fixed settings + values of the searched axes (already decoded).

    Mix weights are normalised to fractions, so any non-negative weights with a positive sum
    reach every point of the simplex; weights that sum to 0 are not a mix and raise UserError.
    """
    config = _base_config(spec, values)
    mix_values: dict[str, Any] = {}
    for axis in spec.axes:
        if axis.searched and axis.name not in values:
            raise UserError(f"trial config: no value for the searched field {axis.path}")
        value = copy.deepcopy(values[axis.name]) if axis.searched else axis.values[0]
        if axis.name == "cases":
            value.pop("name")  # the case's label (the trial table's `case` column), not a config field
            if "mix" in value:
                mix_values["mix"] = value.pop("mix")
            config.update(value)
        elif axis.name == "mix" or axis.name.startswith("mix."):
            mix_values[axis.name] = value
        else:
            config[axis.name] = value
    seed = mix_values.pop("mix.seed", _mix_seed(spec, values))
    if "mix" in mix_values:
        config["mix"] = {**mix_values["mix"], "seed": seed}
    elif mix_values:
        weights = {t: mix_values[f"mix.{t}"] for t in ANNOTATION_TYPES}
        shown = ", ".join(f"{t}={w!r}" for t, w in weights.items())
        if not all(_is_number(w) and w >= 0 for w in weights.values()):
            raise UserError(f"mix: weights must be finite numbers >= 0, got {shown}")
        total = sum(weights.values())
        if total <= 0:
            raise UserError(f"mix: the weights {shown} sum to 0; at least one annotation type needs a positive weight")
        config["mix"] = {**{t: w / total for t, w in weights.items()}, "seed": seed}
    return config


def reference_config(spec: StudySpec) -> dict[str, Any]:
    """The reference trial's plain config: the fixed settings, then the reference's fields (searched
    fields it does not set keep TrainConfig's defaults; its mix seed is the fixed one's)."""
    fields = copy.deepcopy(spec.reference_case)
    if fields is None:
        raise ValueError(f"study {spec.name!r} has no reference")
    fields.pop("name")
    config = _base_config(spec)
    mix = fields.pop("mix", None)
    config.update(fields)
    if mix is not None:
        config["mix"] = {**mix, "seed": config["mix"]["seed"]}
    return config


# --- loading -------------------------------------------------------------------------------------


def parse_spec(data: Any, source: str = "") -> StudySpec:
    """A StudySpec from plain data (parsed YAML); ``source`` (a file name) starts any error message."""
    if not isinstance(data, Mapping):
        kind = "an empty document" if data is None else type(data).__name__
        where = f"{source}: " if source else ""
        raise UserError(f"{where}a study spec is a YAML mapping (name:, space:, ...), got {kind}")
    try:
        return validated(StudySpec, dict(data))
    except UserError as exc:
        if source:
            raise UserError(f"{source}: {exc}") from None
        raise


def load_spec(path_or_name: str) -> tuple[StudySpec, str]:
    """(spec, source text) from a YAML file, or from a built-in spec name (``labelmix spaces``)."""
    from labelmix.search_spaces import builtin_specs

    path = Path(path_or_name).expanduser()
    builtins = builtin_specs()
    if not path.is_file():
        if path_or_name in builtins:
            path = builtins[path_or_name]
        elif path.exists():
            raise UserError(f"{path_or_name}: not a file")
        else:
            raise UserError(
                f"{path_or_name}: file not found, and not a built-in spec (built-ins: {', '.join(builtins)})"
            )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path_or_name}: cannot read: {exc}") from None
    return parse_spec(load_yaml(text, path_or_name), source=path_or_name), text


def smoke_spec(spec: StudySpec) -> StudySpec:
    """The same study shrunk per ``spec.smoke``: few trials, few epochs, a tiny dataset.

    The name is kept (the CLI gives smoke studies their own folder name).
    """
    smoke = spec.smoke
    data = spec.model_dump(mode="json", by_alias=True)
    trials = min(smoke.trials, spec.search.trials)
    if spec.search.algorithm == "grid" and "epochs" in data["space"]:
        epochs_axis = next(a for a in spec.axes if a.name == "epochs")
        trials = min(trials, grid_points(spec.axes) // len(epochs_axis.values))  # epochs shrinks to one value
    data["search"].update(trials=trials, concurrency=min(spec.search.concurrency, trials))
    epochs = smoke.epochs
    if "epochs" in data["space"]:
        kind = "grid" if spec.search.algorithm == "grid" else "choice"
        data["space"]["epochs"] = {kind: [epochs]}
    else:
        data["fixed"]["epochs"] = epochs
    scheduler = data["scheduler"]
    scheduler.update(max_epochs=epochs if "epochs" not in data["space"] else None,
                     grace_period=min(scheduler["grace_period"], epochs))
    if spec.dataset.synthetic is not None:
        data["dataset"]["synthetic"].update(
            volumes=smoke.volumes, slices=smoke.slices, height=smoke.size, width=smoke.size
        )
    else:
        images = smoke.volumes * smoke.slices
        for key in ("max_train_images", "max_eval_images"):
            current = data["dataset"].get(key)
            data["dataset"][key] = images if current is None else min(current, images)
    return parse_spec(data)


def spec_hash(source_text: str) -> str:
    """Short, stable hash of a spec's source text (line endings normalised)."""
    text = source_text.replace("\r\n", "\n")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
