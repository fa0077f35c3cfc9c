"""The spec's search space as Tune/Optuna distributions, and the trial config of a sampled point.

Names are flat strings: a TrainConfig field (``ds_type``) or a mix weight (``mix.full``); the
dot is not Tune's nesting delimiter (``/``), so OptunaSearch keeps the names as they are and hands
them back in the trial's config. Fixed settings are not in the param space: ``trial_config``
merges them in, so every trial's config is the whole, validated TrainConfig input.

Optuna's categorical distributions take only scalars, so a choice (or grid) of mix dicts or lists
is sampled as index strings "0", "1", ... and decoded by ``trial_config``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from ray import tune

from labelmix.errors import UserError
from labelmix.platform.assembly import assemble_config, reference_config
from labelmix.platform.axes import Axis, grid_points
from labelmix.platform.spec import StudySpec
from labelmix.trainables.config import TrainConfig
from labelmix.trainables.data.annotations import AnnotationMix

__all__ = ["REFERENCE", "case_name", "distinct_points", "grid_size", "is_reference", "mix_of", "optuna_grid", "options",
           "reference_point", "trial_config", "tune_param_space"]

# The key that marks the study's reference trial in its sampled values (labelmix.platform.reference
# suggests it); the other values of that point are placeholders that trial_config ignores.
REFERENCE = "reference"


def options(axis: Axis) -> list:
    """The categorical options as sampled: the values, or index strings for non-scalar values."""
    if axis.encoded:
        return [str(i) for i in range(len(axis.values))]
    return list(axis.values)


def tune_param_space(spec: StudySpec, grid_search: bool = False) -> dict[str, Any]:
    """Flat name -> Tune sample domain, for every searched axis.

    Grid axes become ``tune.choice`` over the grid values by default: that is what OptunaSearch
    converts to the categorical distributions an ``optuna.samplers.GridSampler(optuna_grid(spec))``
    walks (OptunaSearch refuses ``grid_search``). ``grid_search=True`` gives ``tune.grid_search``
    instead, for Tune's own variant generator (no searcher).
    """
    space: dict[str, Any] = {}
    for axis in spec.searched:
        low, high = axis.values[0], axis.values[-1]
        if axis.kind == "choice":
            space[axis.name] = tune.choice(options(axis))
        elif axis.kind == "grid":
            space[axis.name] = tune.grid_search(options(axis)) if grid_search else tune.choice(options(axis))
        elif axis.kind == "uniform":
            space[axis.name] = tune.uniform(low, high)
        elif axis.kind == "loguniform":
            space[axis.name] = tune.loguniform(low, high)
        elif axis.kind == "int":
            space[axis.name] = tune.randint(low, high + 1)  # randint excludes its upper bound
        else:  # pragma: no cover - axes.py only makes the kinds above
            raise AssertionError(f"unknown distribution kind {axis.kind!r}")
    return space


def optuna_grid(spec: StudySpec) -> dict[str, list]:
    """Name -> grid values (index strings for non-scalars), for ``optuna.samplers.GridSampler``."""
    if spec.search.algorithm != "grid":
        raise UserError(f"search.algorithm: {spec.search.algorithm} is not grid; there is no grid to walk")
    return {axis.name: options(axis) for axis in spec.searched}


def grid_size(spec: StudySpec) -> int:
    """Points of the grid: the product of the grid lists' lengths."""
    optuna_grid(spec)  # the same check: only a grid spec has a grid
    return grid_points(spec.axes)


def distinct_points(spec: StudySpec) -> int | None:
    """How many distinct configurations the search space holds: the product of the options of its
    choice, grid and int axes; None when an axis is continuous (uniform, loguniform)."""
    sizes = []
    for axis in spec.searched:
        if axis.kind in ("choice", "grid"):
            sizes.append(len(axis.values))
        elif axis.kind == "int":
            sizes.append(int(axis.values[-1]) - int(axis.values[0]) + 1)
        else:
            return None
    return math.prod(sizes)


def _decode(axis: Axis, value: Any) -> Any:
    if not axis.encoded:
        return value
    try:
        index = int(value)
        if not 0 <= index < len(axis.values) or isinstance(value, bool):
            raise ValueError
    except (TypeError, ValueError):
        raise UserError(
            f"trial config: {axis.path}: expected an option index 0..{len(axis.values) - 1}, got {value!r}"
        ) from None
    return axis.values[index]


def trial_config(spec: StudySpec, sampled: Mapping[str, Any]) -> dict[str, Any]:
    """The plain dict for ``load_config``: fixed settings, dataset, cost and the decoded sampled values.

    Mix weights are normalised to fractions (``mix.seed`` defaults to ``search.seed``); weights
    that sum to 0 raise UserError. Keys of ``sampled`` that the space does not search raise too:
    they would otherwise be dropped silently.
    """
    if is_reference(sampled):
        return reference_config(spec)
    searched = {axis.name: axis for axis in spec.searched}
    unknown = sorted(set(sampled) - set(searched))
    if unknown:
        raise UserError(f"trial config: {unknown} are not searched by the spec; searched: {sorted(searched)}")
    values = {name: _decode(axis, sampled[name]) for name, axis in searched.items() if name in sampled}
    return assemble_config(spec, values)


def is_reference(sampled: Mapping[str, Any]) -> bool:
    """Whether a trial's sampled values are those of the study's reference trial."""
    return bool(sampled.get(REFERENCE))


def reference_point(spec: StudySpec) -> dict[str, Any]:
    """The reference trial's sampled values: the marker, and for every searched axis a valid
    placeholder (its lowest option or bound), so that Tune has no value left to resolve."""
    return {REFERENCE: True, **{axis.name: options(axis)[0] if axis.categorical else axis.lowest()
                                for axis in spec.searched}}


def case_name(spec: StudySpec, sampled: Mapping[str, Any]) -> str | None:
    """The name of the ``space.cases`` case a trial samples, or the reference's name (None when
    the space has no cases)."""
    if is_reference(sampled):
        return spec.reference_case["name"]
    axis = next((a for a in spec.searched if a.name == "cases"), None)
    if axis is None or "cases" not in sampled:
        return None
    return _decode(axis, sampled["cases"])["name"]


def mix_of(config: Mapping[str, Any] | TrainConfig) -> AnnotationMix:
    """The annotation mix of a trial config (a ``trial_config`` dict or a TrainConfig)."""
    if isinstance(config, TrainConfig):
        return config.mix
    return AnnotationMix(**(config.get("mix") or {}))
