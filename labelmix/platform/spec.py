"""The study spec (YAML) as a validated, frozen ``StudySpec``, and loading it.

A spec names the dataset, the cost model, the objectives, the search space over trial-config
fields, the algorithm, the scheduler, the budget, the per-trial resources and where results go.
``labelmix check`` / ``submit`` validate it completely before anything starts: every problem is
one UserError whose message begins with the field path (``space.ema_decay.loguniform: ...``).
Beyond types and ranges, what a trial would fail on is refused here too: encoder names unknown
to timm's registry, ``ds_depth`` beyond an encoder's levels, a ``dataset.path`` that is no
store (its metadata and three small columns are read, never the images), NaN and infinity
anywhere, budgets beyond MAX_TRIALS / MAX_EPOCHS / MAX_CONCURRENCY. ``check_storage`` (called
by check and submit) refuses a study folder that cannot be created, without creating it.

The parts live beside this module: ``sections`` (the section models), ``axes`` (the search space
parsed into ``Axis`` records, ``StudySpec.axes``, that ``labelmix.platform.space`` turns into
Tune/Optuna distributions), ``assembly`` (a trial's plain config), ``trial_checks`` (what a trial
would fail on) and ``storage_checks`` (the dataset store and the study folder). Their public names are
importable from here too. No Ray import here: checking a spec stays fast.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Optional

from pydantic import BaseModel, Field, PrivateAttr, field_validator, model_validator

from labelmix.errors import UserError, load_yaml, validated
from labelmix.platform.assembly import assemble_config, reference_config
from labelmix.platform.axes import DISTRIBUTIONS, Axis, check_field, grid_points, parse_axis, parse_case, parse_cases, parse_mix
from labelmix.platform.sections import (ALGORITHMS, OBJECTIVE_METRICS, SCHEDULERS, BudgetConfig, FailureConfig, Objective,
                                        ResourcesConfig, SchedulerConfig, SearchConfig, SmokeConfig, StorageConfig,
                                        Strict, TrackingConfig, rung_milestones)
from labelmix.platform.storage import scheme_of
from labelmix.platform.storage_checks import check_storage, check_store
from labelmix.platform.trial_checks import check_network, check_trial_configs, refuse_non_finite
from labelmix.trainables.config import DataConfig, TrainConfig, load_config
from labelmix.trainables.data.annotations import CostModel
from labelmix.trainables.data.synth import SynthSettings

__all__ = [
    "ALGORITHMS",
    "Axis",
    "DISTRIBUTIONS",
    "OBJECTIVE_METRICS",
    "Objective",
    "SCHEDULERS",
    "StudySpec",
    "assemble_config",
    "check_storage",
    "grid_points",
    "load_spec",
    "parse_spec",
    "reference_config",
    "smoke_spec",
    "spec_hash",
]


def _set(model: BaseModel, name: str, value: Any) -> None:
    """Fill a default on a frozen model while its own validator runs (never afterwards)."""
    object.__setattr__(model, name, value)


class StudySpec(Strict):
    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    description: str = ""
    dataset: DataConfig = DataConfig(synthetic=SynthSettings())
    cost: CostModel = CostModel()
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
        refuse_non_finite(self.model_dump(by_alias=True), "")
        self._check_objectives()
        self._check_search_settings()
        for key in self.fixed:
            check_field(key, "fixed")
        self._axes = self._parse_space()
        self._check_grid()
        self._check_concurrency()
        self._check_dataset()
        self._check_epochs()
        check_trial_configs(self)
        check_network(self)
        if self.reference is not None:
            self._reference = parse_case(self.reference, "reference", "reference")
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
                axes.append(parse_cases(raw, "space.cases", taken))
                continue
            check_field(key, "space")
            if key in self.fixed:
                raise UserError(f"space.{key}: also set in fixed; a field is either fixed or searched")
            if key == "mix":
                axes.extend(parse_mix(raw, "space.mix"))
            else:
                axes.append(parse_axis(key, raw, f"space.{key}"))
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
        if path is None or scheme_of(path):
            return
        local = Path(path).expanduser()
        if not local.exists():
            raise UserError(f"dataset.path: file not found: {path}")
        check_store(local, path)
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
        default_order = type(scheduler).model_fields["front_order"].default  # the effective spec.yaml lists it
        if scheduler.type != "pareto_asha" and scheduler.front_order != default_order:
            raise UserError(f"scheduler.front_order: only for type pareto_asha (type is {scheduler.type})")
        if scheduler.type != "none" and scheduler.grace_period > scheduler.max_epochs:
            raise UserError(
                f"scheduler.grace_period: {scheduler.grace_period} is more than max_epochs {scheduler.max_epochs}"
            )
        if scheduler.type == "none" and scheduler.brackets != 1:
            raise UserError("scheduler.brackets: only for type asha or pareto_asha (type is none)")
        if scheduler.type != "none" and scheduler.brackets > 1:
            rungs = len(rung_milestones(scheduler.grace_period, scheduler.max_epochs, scheduler.reduction_factor))
            if scheduler.brackets > rungs + 1:
                raise UserError(
                    f"scheduler.brackets: {scheduler.brackets} is more than one plus the {rungs} rung(s) below "
                    f"max_epochs {scheduler.max_epochs} (grace_period {scheduler.grace_period}, reduction_factor "
                    f"{scheduler.reduction_factor:g}); at most {rungs + 1}"
                )
        device = self.fixed.get("device")
        if device == "cuda" and self.resources.gpus <= 0:
            raise UserError("fixed.device: cuda needs resources.gpus > 0 (a fraction such as 0.25 is allowed)")


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
    if spec.scheduler.type != "none":  # fewer epochs, fewer rungs: at most one bracket more than rungs
        rungs = rung_milestones(scheduler["grace_period"], epochs, scheduler["reduction_factor"])
        scheduler["brackets"] = min(scheduler["brackets"], len(rungs) + 1)
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
