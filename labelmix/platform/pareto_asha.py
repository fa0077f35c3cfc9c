"""ParetoASHA: asynchronous successive halving on several objectives at once.

ASHA (Li et al. 2020) stops a trial at a rung unless its metric is in the top 1/reduction_factor of
the trials recorded there. On mIoU alone that stops cheap-label trials first, which are the part of
the cost/mIoU frontier users care about most. Multi-objective ASHA (Schmucker et al. 2021, "MO-ASHA";
Syne Tune's MOASHA) keeps the promotion rule and replaces the scalar sort by non-dominated sorting:
the trials recorded at a rung are ordered by non-dominated rank and, within a rank, by how much
each adds to its front, larger first; a trial continues iff it is within the top
ceil(n / reduction_factor) of the n trials recorded there (itself included).

What a point adds to its front is, by default, NSGA-II crowding distance (MO-ASHA's rule); with
``front_order="hypervolume"`` (two objectives) its exclusive hypervolume (SMS-EMOA), then crowding
distance among equals. Crowding distance gives both ends of a front infinite worth, so the cheapest
mix, on the front whatever its mIoU, is always promoted; hypervolume does not, but on the tabular
benchmark (docs/RESULTS.md) it found the frontier no faster, so it is an option, not the default.

Brackets (Hyperband's hedge against stopping too early, as in Ray's ASHAScheduler and Syne Tune):
with ``brackets=b`` the trials are dealt in turn to b brackets; bracket s has the rungs at
grace_period * reduction_factor**(s + k), so its trials run reduction_factor**s times longer before
their first comparison, and a trial is compared only with the trials of its own bracket. Curves that
cross (a setting that starts slowly and ends best) survive in the later brackets. Ray deals trials
to brackets at random; here the k-th trial added goes to bracket k mod b, so a study is repeatable.
"""

from __future__ import annotations

import math
import numbers
import pickle
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from ray.tune.result import AUTO_RESULT_KEYS, DEBUG_METRICS, DONE, RESULT_DUPLICATE
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from labelmix.errors import UserError
from labelmix.platform.frontier import crowding_distance, hypervolume_contribution, nondominated_ranks
from labelmix.platform.sections import rung_milestones
from labelmix.platform.space import is_reference

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

__all__ = ["ParetoASHA", "promotes"]

# Keys Tune fills in itself. A result with nothing else (a trial that returned without reporting)
# carries no objective to judge; Tune's own strict metric check exempts such results too.
_AUTO_KEYS = frozenset(AUTO_RESULT_KEYS) | frozenset(DEBUG_METRICS) | {DONE, RESULT_DUPLICATE}


def promotes(
    records: Sequence[tuple[str, np.ndarray]],
    trial_id: str,
    senses: Sequence[str],
    reduction_factor: float,
    front_order: str = "crowding",
) -> bool:
    """Whether ``trial_id`` continues, given every record at its rung (its own included).

    records: (trial id, objective vector) pairs, one per trial recorded at the rung; senses: 'min'
    or 'max' per vector entry; front_order: "hypervolume" or "crowding" (see the module's text).
    Ties in the order go to ``trial_id``: it continues
    when fewer than ceil(n / reduction_factor) records are strictly ahead of it, as ASHA lets a
    trial equal to the cutoff continue.
    """
    ids = [record_id for record_id, _ in records]
    if trial_id not in ids:
        raise ValueError(f"trial {trial_id!r} is not among the rung records {ids}")
    values = np.array([np.asarray(vector, dtype=float) for _, vector in records])  # n x M
    ranks = nondominated_ranks(values, senses)
    crowding = crowding_distance(values, senses)
    me = ids.index(trial_id)
    same = ranks == ranks[me]
    if front_order == "hypervolume" and values.shape[1] == 2:
        worth = hypervolume_contribution(values, senses)
        better = (worth > worth[me]) | ((worth == worth[me]) & (crowding > crowding[me]))
    elif front_order in ("hypervolume", "crowding"):
        better = crowding > crowding[me]
    else:
        raise ValueError(f"front_order must be 'hypervolume' or 'crowding', got {front_order!r}")
    ahead = (ranks < ranks[me]) | (same & better)
    # round: n / rf in floating point may land a hair above an integer (6 / 1.2 = 5.000000000000001)
    keep = math.ceil(round(len(ids) / reduction_factor, 9))
    return int(ahead.sum()) < keep


def _number(
    value: Any, name: str, *, minimum: float, strict: bool = False, bound: str = ""
) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise UserError(f"ParetoASHA: {name} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        limit = f"{bound} ({minimum:g})" if bound else f"{minimum:g}"
        raise UserError(f"ParetoASHA: {name} must be {relation} {limit}, got {value!r}")
    return float(value)


class ParetoASHA(FIFOScheduler):
    """Multi-objective ASHA for Ray Tune.

    Args:
        objectives: metric name -> 'min' or 'max', e.g. ``{"val/miou": "max", "cost/hours": "min"}``.
            Every reported result must carry all of them.
        time_attr: the result key that measures progress (monotonic), as in ASHA.
        max_t: trials stop once ``result[time_attr] >= max_t``.
        grace_period: the first rung; no trial stops before it.
        reduction_factor: rungs sit at grace_period * reduction_factor**k (below max_t) and about
            1 / reduction_factor of the trials recorded at a rung continue past it.
        brackets: how many brackets the trials are dealt to (see the module's text); bracket s
            skips the first s rungs. At most one more than the number of rungs (the last bracket
            then has no rung: its trials run to max_t).

    The scheduler ignores ``tune.TuneConfig(metric=..., mode=...)``: those are single-metric and
    belong to the searcher and the result grid; the objectives here are its own.
    """

    def __init__(
        self,
        objectives: Mapping[str, str],
        time_attr: str = "training_iteration",
        max_t: int = 100,
        grace_period: int = 1,
        reduction_factor: float = 3,
        front_order: str = "crowding",
        brackets: int = 1,
    ):
        if not isinstance(objectives, Mapping) or not objectives:
            raise UserError(
                "ParetoASHA: objectives must be a non-empty mapping of metric name to 'min' or "
                f"'max', e.g. {{'val/miou': 'max', 'cost/hours': 'min'}}; got {objectives!r}"
            )
        for name, sense in objectives.items():
            if not isinstance(name, str) or not name:
                raise UserError(f"ParetoASHA: objectives keys must be metric names, got {name!r}")
            if sense not in ("min", "max"):
                raise UserError(
                    f"ParetoASHA: objectives[{name!r}] must be 'min' or 'max', got {sense!r}"
                )
        if front_order not in ("hypervolume", "crowding"):
            raise UserError(f"ParetoASHA: front_order must be 'hypervolume' or 'crowding', got {front_order!r}")
        if not isinstance(time_attr, str) or not time_attr:
            raise UserError(f"ParetoASHA: time_attr must be a result key, got {time_attr!r}")
        grace_period = _number(grace_period, "grace_period", minimum=1)
        max_t = _number(max_t, "max_t", minimum=grace_period, bound="grace_period")
        reduction_factor = _number(reduction_factor, "reduction_factor", minimum=1, strict=True)

        super().__init__()
        self._names = tuple(objectives)
        self._senses = tuple(objectives[name] for name in self._names)
        self._time_attr = time_attr
        self._max_t = max_t
        self._grace_period = grace_period
        self._reduction_factor = reduction_factor
        self._front_order = front_order
        self._milestones = milestones = rung_milestones(grace_period, max_t, reduction_factor)
        if isinstance(brackets, bool) or not isinstance(brackets, numbers.Integral) or not 1 <= brackets <= len(milestones) + 1:
            raise UserError(
                f"ParetoASHA: brackets must be a whole number from 1 to {len(milestones) + 1} (one more than "
                f"the rungs [{', '.join(f'{m:g}' for m in milestones)}] below max_t), got {brackets!r}"
            )
        self._brackets = int(brackets)
        # per bracket, one dict per rung: trial id -> objective vector (in self._names order), in
        # recording order; bracket s leaves its first s rungs empty
        self._records: list[list[dict[str, np.ndarray]]] = [[{} for _ in milestones] for _ in range(self._brackets)]
        self._next_rung: dict[str, int] = {}  # trial id -> index of the first rung it has not met
        self._bracket: dict[str, int] = {}  # trial id -> its bracket, for every trial ever added
        self._num_stopped = 0

    # --- what the scheduler knows -------------------------------------------------------------

    @property
    def objectives(self) -> dict[str, str]:
        return dict(zip(self._names, self._senses))

    @property
    def milestones(self) -> tuple[float, ...]:
        return self._milestones

    @property
    def brackets(self) -> int:
        return self._brackets

    def bracket_of(self, trial_id: str) -> int:
        return self._bracket[trial_id]

    def rung_records(self, rung: int, bracket: int = 0) -> list[tuple[str, np.ndarray]]:
        """The (trial id, objective vector) pairs recorded at rung index ``rung`` of ``bracket``, in order."""
        return list(self._records[bracket][rung].items())

    def decide(self, rung_records: Sequence[tuple[str, np.ndarray]], trial_id: str) -> bool:
        """``promotes`` with this scheduler's senses and reduction factor."""
        return promotes(rung_records, trial_id, self._senses, self._reduction_factor, self._front_order)

    # --- Tune's TrialScheduler interface --------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        # Accept and ignore: TuneConfig's single metric/mode is not what this scheduler ranks on,
        # and returning False would make Tune refuse the run.
        return True

    def on_trial_add(self, tune_controller: "TuneController", trial: "Trial"):
        bracket = len(self._bracket) % self._brackets  # dealt in turn
        self._bracket[trial.trial_id] = bracket
        self._next_rung[trial.trial_id] = bracket  # bracket s has no record below rung s

    def on_trial_result(
        self, tune_controller: "TuneController", trial: "Trial", result: dict
    ) -> str:
        if not self._has_reported_metrics(result) or is_reference(trial.config):
            return TrialScheduler.CONTINUE  # the study's reference trial trains to the end
        progress = self._progress(trial, result)
        vector = self._objective_vector(trial, result)
        if progress >= self._max_t:
            decision = TrialScheduler.STOP
        else:
            rung = self._record(trial.trial_id, progress, vector)
            bracket = self._bracket.get(trial.trial_id, 0)
            if rung is None or self.decide(self.rung_records(rung, bracket), trial.trial_id):
                decision = TrialScheduler.CONTINUE
            else:
                decision = TrialScheduler.STOP
        if decision == TrialScheduler.STOP:
            self._num_stopped += 1
        return decision

    def on_trial_complete(self, tune_controller: "TuneController", trial: "Trial", result: dict):
        # A trial ended by a stopper skips on_trial_result for its last result: record that result
        # so later trials are compared with it (as ASHA does). Never raise here: the trial is done.
        if result and self._time_attr in result and all(name in result for name in self._names):
            try:
                progress = self._progress(trial, result)
                vector = self._objective_vector(trial, result)
            except UserError:
                pass
            else:
                if progress < self._max_t:
                    self._record(trial.trial_id, progress, vector)
        self._next_rung.pop(trial.trial_id, None)

    def on_trial_error(self, tune_controller: "TuneController", trial: "Trial"):
        self._next_rung.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller: "TuneController", trial: "Trial"):
        self._next_rung.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        goals = ", ".join(f"{sense} {name}" for name, sense in zip(self._names, self._senses))
        lines = [f"Using ParetoASHA ({goals}): num_stopped={self._num_stopped}"]
        for bracket, rungs in enumerate(self._records):
            prefix = f"Bracket {bracket}, rung" if self._brackets > 1 else "Rung"
            for milestone, records in list(zip(self._milestones, rungs))[bracket:]:
                front = 0
                if records:
                    front = int((nondominated_ranks(np.array(list(records.values())), self._senses) == 0).sum())
                lines.append(f"{prefix} {milestone:g}: {len(records)} recorded, {front} on the front")
        return "\n".join(lines)

    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as file:
            state = pickle.load(file)
        if "_brackets" not in state:  # saved before brackets: one bracket, its rungs as they were
            state = {**state, "_brackets": 1, "_records": [state["_records"]], "_bracket": {}}
        self.__dict__.update(state)

    # --- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _has_reported_metrics(result: dict) -> bool:
        return any(
            key not in _AUTO_KEYS and key != "config" and not key.startswith("config/")
            for key in result
        )

    @staticmethod
    def _present(result: dict) -> list[str]:
        return sorted(key for key in result if key != "config" and not key.startswith("config/"))

    def _progress(self, trial: "Trial", result: dict) -> float:
        if self._time_attr not in result:
            raise UserError(
                f"ParetoASHA: trial {trial.trial_id} reported no {self._time_attr!r} (time_attr); "
                f"keys present: {self._present(result)}"
            )
        return float(result[self._time_attr])

    def _objective_vector(self, trial: "Trial", result: dict) -> np.ndarray:
        values = []
        for name in self._names:
            if name not in result:
                raise UserError(
                    f"ParetoASHA: trial {trial.trial_id} reported no objective {name!r}; "
                    f"objectives: {list(self._names)}; keys present: {self._present(result)}"
                )
            try:
                values.append(float(result[name]))
            except (TypeError, ValueError):
                raise UserError(
                    f"ParetoASHA: objective {name!r} of trial {trial.trial_id} must be a number, "
                    f"got {result[name]!r}"
                ) from None
        return np.array(values)

    def _record(self, trial_id: str, progress: float, vector: np.ndarray) -> int | None:
        """Record the vector at the highest rung this result newly reached; return its index.

        A result that jumps past several rungs at once (a coarse time_attr) is recorded only at the
        highest, as ASHA does, and the rungs it skipped are never filled in later with a
        better-trained value.
        """
        bracket = self._bracket.get(trial_id, 0)
        first = self._next_rung.get(trial_id, bracket)
        reached = [i for i in range(first, len(self._milestones)) if progress >= self._milestones[i]]
        if not reached:
            return None
        rung = reached[-1]
        self._records[bracket][rung][trial_id] = vector
        self._next_rung[trial_id] = rung + 1
        return rung
