"""What a trial would fail on, refused when the spec is checked rather than in the first trial on
the cluster: every fixed value, every option (or both bounds) of each searched field and of each
case, loaded as a trial config; NaN and infinity anywhere; encoders against timm's registry and
``ds_depth`` / ``ds_level_weights`` against each encoder's decoder levels.
"""

from __future__ import annotations

import difflib
import functools
import math
from typing import TYPE_CHECKING, Any, Mapping

from labelmix.errors import UserError
from labelmix.platform.assembly import assemble_config, base_config
from labelmix.platform.axes import SECTION_FIELDS
from labelmix.platform.sections import MAX_EPOCHS
from labelmix.trainables.config import TrainConfig, class_weights_by_name, load_config
from labelmix.trainables.data.annotations import ANNOTATION_TYPES
from labelmix.trainables.data.synth import SYNTH_CLASSES

if TYPE_CHECKING:
    from labelmix.platform.spec import StudySpec

__all__ = ["check_network", "check_trial_configs", "refuse_non_finite"]


def check_trial_configs(spec: StudySpec) -> None:
    """Fixed values, every option (or both bounds) of each searched field, and one whole trial.

    Bad values fail here, at check time, not in the first trial on the cluster.
    """
    base = base_config(spec)
    _load_trial(base, "fixed", spec.fixed)
    for axis in spec.axes:
        if axis.name.startswith("mix"):
            continue  # checked by parse_mix and by the representative trial below
        if axis.name == "cases":
            others = {a.name: a.lowest() for a in spec.searched if a.name != "cases"}
            for i, case in enumerate(axis.candidates()):
                _load_trial(assemble_config(spec, {**others, "cases": case}), f"space.cases.{axis.kind}.{i}",
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
    sampled = {a.name: a.lowest() for a in spec.searched}
    weights = [a for a in spec.axes if a.name in {f"mix.{t}" for t in ANNOTATION_TYPES}]
    if weights and sum(sampled.get(a.name, a.lowest()) for a in weights) <= 0:
        # The lowest weights are all 0: represent the mix by the highest ones instead.
        sampled.update({a.name: a.highest() for a in weights if a.searched})
    load_config(assemble_config(spec, sampled), prefix="fixed")


def check_network(spec: StudySpec) -> None:
    """Encoders against timm's registry; ds_depth and ds_level_weights against each encoder's levels.

    Every combination a trial can get is checked: per case of ``space.cases`` (its own values
    first), else every option of the searched fields. Nothing named: nothing to check (no timm import).
    """
    names = ("encoder", "ds_depth", "ds_level_weights")
    cases = next((a for a in spec.axes if a.name == "cases"), None)
    in_cases = cases is not None and any(k in case for case in cases.values for k in names)
    if not in_cases and not any(n in spec.fixed or n in spec.space for n in names):
        return
    scenarios = [{n: _options(spec, n) for n in names}]
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


def _options(spec: StudySpec, name: str) -> list[tuple[Any, str]]:
    """(value, field path) of every value a trial can get for ``name`` outside space.cases."""
    if name in spec.fixed:
        return [(spec.fixed[name], f"fixed.{name}")]
    axis = next((a for a in spec.axes if a.name == name), None)
    if axis is None:
        return [(TrainConfig.model_fields[name].default, f"{name} (default)")]
    if axis.kind == "fixed":
        return [(axis.values[0], axis.path)]
    if axis.kind == "int":
        return [(v, f"{axis.path}.int") for v in axis.values]  # the bounds: what the levels limit
    return [(v, f"{axis.path}.{axis.kind}.{i}") for i, v in enumerate(axis.values)]


def refuse_non_finite(value: Any, path: str) -> None:
    """NaN and infinity are no setting of any field (a YAML .inf, .nan), wherever they are."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{path or '(top level)'}: must be a finite number, got {value!r}")
    if isinstance(value, Mapping):
        for key, item in value.items():
            refuse_non_finite(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            refuse_non_finite(item, f"{path}.{i}")


def _load_trial(config: Mapping[str, Any], prefix: str, fields) -> TrainConfig:
    """load_config, then the limits of the given fields: finite numbers (a string "inf" parses to
    one), and at most MAX_EPOCHS epochs."""
    trial = load_config(config, prefix=prefix)
    values = trial.model_dump(by_alias=True)
    for name in fields:
        if name in SECTION_FIELDS or name not in TrainConfig.model_fields:
            continue
        refuse_non_finite(values[name], f"{prefix}.{name}")
    if "epochs" in fields and trial.epochs > MAX_EPOCHS:
        raise UserError(f"{prefix}.epochs: {trial.epochs} is more than the limit of {MAX_EPOCHS} epochs")
    if trial.dataset.synthetic is not None:  # a store's class names are read when its trials start
        class_weights_by_name(trial.tightness_class_weights, SYNTH_CLASSES, f"{prefix}.tightness_class_weights")
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


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
