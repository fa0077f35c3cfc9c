"""A trial's plain config, assembled from a study spec: its fixed settings, its dataset and cost
sections, and the values sampled for its searched axes (or the reference's fields).

The result is the dict ``load_config`` validates; ``labelmix.platform.space.trial_config``
decodes Tune's sampled values into it, and ``StudySpec`` checks it at load time.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any, Mapping

from labelmix.errors import UserError
from labelmix.platform.axes import is_number
from labelmix.trainables.data.annotations import ANNOTATION_TYPES

if TYPE_CHECKING:
    from labelmix.platform.spec import StudySpec

__all__ = ["assemble_config", "base_config", "reference_config"]


def _mix_seed(spec: StudySpec, values: Mapping[str, Any]) -> int:
    """The mix seed a trial gets unless the spec sets one: its ``seed`` when the space searches
    ``seed`` (a seed is then one paired replicate: weights, batch order and which images get which
    label, the same images for every mix of that seed), else ``search.seed``."""
    return values["seed"] if "seed" in values else spec.search.seed


def base_config(spec: StudySpec, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The trial config of the fixed settings alone (searched fields keep TrainConfig's defaults)."""
    mix_seed = _mix_seed(spec, values or {})
    config = copy.deepcopy(dict(spec.fixed))
    config["dataset"] = spec.dataset.model_dump(exclude_none=True)
    config["cost"] = dataclasses.asdict(spec.cost)
    mix = config.get("mix")
    if isinstance(mix, Mapping):
        # Missing types are 0 here as in space.mix (AnnotationMix alone would default full to 1).
        config["mix"] = {**{t: 0.0 for t in ANNOTATION_TYPES}, "seed": mix_seed, **mix}
    elif mix is None:
        config["mix"] = {"full": 1.0, "seed": mix_seed}
    return config


def assemble_config(spec: StudySpec, values: Mapping[str, Any]) -> dict[str, Any]:
    """The plain trial-config dict: fixed settings + values of the searched axes (already decoded).

    Mix weights are normalised to fractions, so any non-negative weights with a positive sum
    reach every point of the simplex; weights that sum to 0 are not a mix and raise UserError.
    """
    config = base_config(spec, values)
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
        if not all(is_number(w) and w >= 0 for w in weights.values()):
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
    config = base_config(spec)
    mix = fields.pop("mix", None)
    config.update(fields)
    if mix is not None:
        config["mix"] = {**mix, "seed": config["mix"]["seed"]}
    return config
