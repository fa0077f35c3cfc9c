"""The search space of a study spec, parsed into ``Axis`` records.

``space`` is kept in the spec as written (so a dumped spec reloads unchanged); ``parse_axis``,
``parse_mix`` and ``parse_cases`` turn each entry into axes, refusing with the field path
(``space.ema_decay.loguniform: ...``). ``labelmix.platform.space`` turns the axes into
Tune/Optuna distributions. No Ray import here.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Mapping

from pydantic import ConfigDict, Field, field_validator

from labelmix.errors import UserError, validated
from labelmix.platform.sections import Strict
from labelmix.trainables.config import TrainConfig
from labelmix.trainables.data.annotations import ANNOTATION_TYPES, AnnotationMix

__all__ = [
    "DISTRIBUTIONS",
    "MIX_KEYS",
    "SECTION_FIELDS",
    "Axis",
    "check_field",
    "grid_points",
    "is_number",
    "parse_axis",
    "parse_case",
    "parse_cases",
    "parse_mix",
]

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int", "grid")
# TrainConfig fields that the spec sets in its own top-level sections, the same for every trial.
SECTION_FIELDS = ("dataset", "cost")
MIX_KEYS = (*ANNOTATION_TYPES, "seed")

_DISTRIBUTION_HELP = (
    "{choice: [..]}, {uniform: [low, high]}, {loguniform: [low, high]}, {int: [low, high]}, "
    "{grid: [..]}, or a plain value (fixed)"
)


# --- distributions -------------------------------------------------------------------------------


def _ordered(bounds: tuple, log: bool = False) -> tuple:
    low, high = bounds
    if log and low <= 0:
        raise ValueError("low must be > 0 on a log scale")
    if low > high:
        raise ValueError(f"low {low} > high {high}")
    return bounds


class ChoiceDist(Strict):
    choice: list[Any] = Field(min_length=1)


class GridDist(Strict):
    grid: list[Any] = Field(min_length=1)


class UniformDist(Strict):
    uniform: tuple[float, float]

    @field_validator("uniform")
    @classmethod
    def _bounds(cls, v):
        return _ordered(v)


class LogUniformDist(Strict):
    loguniform: tuple[float, float]

    @field_validator("loguniform")
    @classmethod
    def _bounds(cls, v):
        return _ordered(v, log=True)


class IntDist(Strict):
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


def parse_axis(name: str, raw: Any, path: str) -> Axis:
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


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_mix(raw: Any, path: str) -> list[Axis]:
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
        mixes = getattr(dist, kind)
        options = [AnnotationMix.from_mapping(mix, f"{path}.{kind}.{i}").as_dict() for i, mix in enumerate(mixes)]
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
        axis = parse_axis(f"mix.{kind}", raw[kind], where)
        if axis.searched:
            where = f"{where}.{axis.kind}"
        for value in axis.candidates():
            if not is_number(value) or not 0.0 <= value <= 1.0:
                raise UserError(f"{where}: mix weights must be numbers in [0, 1], got {value!r}")
        axes.append(axis)
    if "seed" in raw:
        axis = parse_axis("mix.seed", raw["seed"], f"{path}.seed")
        if axis.kind in ("uniform", "loguniform") or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in axis.candidates()
        ):
            raise UserError(f"{path}.seed: the mix seed is an integer (or a choice/int range of integers)")
        axes.append(axis)
    if not any(max(a.candidates()) > 0 for a in axes if a.name != "mix.seed"):
        raise UserError(f"{path}: every weight is 0; at least one annotation type needs a positive weight")
    return axes


def parse_case(case: Any, where: str, default_name: str, taken: set[str] = frozenset()) -> dict[str, Any]:
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
        check_field(key, where)
        if key in taken:
            raise UserError(f"{where}.{key}: also set in fixed or space; a field is set in one place")
    if "mix" in fields:
        fields["mix"] = AnnotationMix.from_mapping(fields["mix"], f"{where}.mix").as_dict()
    return {"name": name, **fields}


def parse_cases(raw: Any, path: str, taken: set[str]) -> Axis:
    """``space.cases``: a grid (or choice) of cases (:func:`parse_case`), names unique."""
    if not isinstance(raw, Mapping) or len(raw) != 1 or next(iter(raw)) not in ("grid", "choice"):
        raise UserError(f"{path}: give {{grid: [cases]}} or {{choice: [cases]}}, each case a mapping of trial config fields")
    kind = next(iter(raw))
    dist = validated(_DISTRIBUTION_MODELS[kind], dict(raw), prefix=path)
    cases, names = [], set()
    for i, case in enumerate(getattr(dist, kind)):
        where = f"{path}.{kind}.{i}"
        case = parse_case(case, where, f"case {i}", taken)
        if case["name"] in names:
            raise UserError(f"{where}.name: {case['name']!r} names two cases; case names are unique")
        names.add(case["name"])
        cases.append(case)
    return Axis("cases", kind, tuple(cases))


def check_field(key: Any, section: str) -> None:
    """A key of ``space`` or ``fixed`` must be a TrainConfig field that trials may vary."""
    fields = TrainConfig.model_fields
    if key in SECTION_FIELDS:
        raise UserError(f"{section}.{key}: set by the spec's top-level `{key}:` section, the same for every trial")
    if key not in fields:
        close = difflib.get_close_matches(str(key), list(fields), n=3)
        hint = f"did you mean {' or '.join(close)}?" if close else f"trial config fields: {', '.join(fields)}"
        raise UserError(f"{section}.{key}: not a trial config field; {hint}")

