"""The study's reference trial in Tune: suggested once, first, and never stopped early.

:class:`ReferenceFirst` wraps the study's searcher (OptunaSearch): its first suggestion is the
reference point (``space.reference_point``); the wrapped searcher never hears of that trial, so
Optuna learns from the searched trials alone. Which trial is the reference is part of the searcher
state Tune saves, so a resumed study does not run it twice. Schedulers leave the reference alone
(``ParetoASHA`` checks ``space.is_reference``; :class:`KeepReferenceASHA` does it for ASHA).
"""

from __future__ import annotations

from typing import Any, Optional

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.util import _set_search_properties_backwards_compatible

from labelmix.platform.space import is_reference


class ReferenceFirst(Searcher):
    def __init__(self, searcher: Searcher, point: dict[str, Any]) -> None:
        self.searcher = searcher
        self.point = dict(point)
        self.reference_trial: Optional[str] = None
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], config: dict, **spec) -> bool:
        return _set_search_properties_backwards_compatible(self.searcher.set_search_properties, metric, mode,
                                                           config, **spec)

    def suggest(self, trial_id: str) -> Optional[dict]:
        if self.reference_trial is None:
            self.reference_trial = trial_id
            return dict(self.point)
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id != self.reference_trial:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id != self.reference_trial:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)

    # Tune saves the innermost searcher with save(); the wrappers' get_state() goes beside it.
    def get_state(self) -> dict:
        return {"point": self.point, "reference_trial": self.reference_trial}

    def set_state(self, state: dict) -> None:
        self.point, self.reference_trial = state["point"], state["reference_trial"]

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


class KeepReferenceASHA(ASHAScheduler):
    """ASHA that lets the reference trial train to the end."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if is_reference(trial.config):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)
