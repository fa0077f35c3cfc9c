"""scripts/same_trials.py: two trial tables compared trial by trial, whatever their row order."""

import importlib.util
from pathlib import Path

import pandas as pd

_spec = importlib.util.spec_from_file_location("same_trials", Path(__file__).parents[1] / "scripts" / "same_trials.py")
same_trials = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(same_trials)


def _table(miou, order=(0, 1)):
    rows = pd.DataFrame({"trial_id": ["a", "b"], "config/mix.full": [0.1, 0.5], "val/miou": miou,
                         "ended_at": [1.0, 2.0], "status": ["TERMINATED"] * 2})
    return rows.iloc[list(order)]


def test_tables_equal_up_to_row_order_and_ids_are_the_same():
    other = _table([0.2, 0.4], order=(1, 0)).assign(trial_id=["x", "y"], ended_at=[5.0, 6.0])
    assert same_trials.differing(_table([0.2, 0.4]), other) == []


def test_a_changed_metric_or_a_missing_trial_is_named():
    assert same_trials.differing(_table([0.2, 0.4]), _table([0.2, 0.41])) == ["val/miou"]
    assert same_trials.differing(_table([0.2, 0.4]), _table([0.2, 0.4]).iloc[:1]) == ["(number of trials)"]
