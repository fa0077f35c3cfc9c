"""The study's reference trial: parsed once, suggested once and first, never stopped early, never on
the front; the recommendation and the summary read the frontier against it."""

import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from labelmix.errors import UserError
from labelmix.platform.space import REFERENCE, case_name, is_reference, reference_point, trial_config
from labelmix.platform.spec import parse_spec, reference_config
from labelmix.platform.trial_table import describe_reference, near_reference, recommend_near, with_pareto

SPEC = {
    "name": "ref",
    "dataset": {"synthetic": {"volumes": 5, "slices": 4, "height": 64, "width": 64, "seed": 3}},
    "objectives": [{"metric": "val/miou", "mode": "max"}, {"metric": "cost/hours", "mode": "min"}],
    "reference": {"name": "all masks", "mix": {"full": 1}, "ema_decay": 0.9},
    "space": {
        "mix": {"full": {"uniform": [0.1, 1.0]}, "box": {"uniform": [0, 1]}},
        "ds_type": {"choice": ["none", "multi_label"]},
    },
    "fixed": {"encoder": "test_resnet", "epochs": 2, "batch_size": 4, "steps_per_epoch": 2, "threads": 1, "box_shape_steps": 5},
    "search": {"algorithm": "tpe", "trials": 3, "concurrency": 1, "seed": 4},
    "scheduler": {"type": "none"},
}


def test_the_reference_config_is_the_fixed_settings_and_its_fields():
    spec = parse_spec(SPEC)
    assert spec.total_trials == 4 and spec.search.trials == 3
    assert spec.reference_case == {"name": "all masks", "mix": {"full": 1.0, "box": 0.0, "global": 0.0, "none": 0.0},
                                   "ema_decay": 0.9}
    config = reference_config(spec)
    assert config["mix"] == {"full": 1.0, "box": 0.0, "global": 0.0, "none": 0.0, "seed": 4}
    assert config["ema_decay"] == 0.9 and config["epochs"] == 2 and "ds_type" not in config  # its default
    point = reference_point(spec)
    assert point == {REFERENCE: True, "mix.full": 0.1, "mix.box": 0, "ds_type": "none"}
    assert is_reference(point) and not is_reference({"mix.full": 0.5})
    assert trial_config(spec, point) == config
    assert case_name(spec, point) == "all masks"


@pytest.mark.parametrize("reference, message", [
    ({"mix": {"full": -1}}, "reference.mix"),
    ({"nope": 1}, "reference.nope: not a trial config field"),
    ("all masks", "reference: Input should be a valid dictionary (got 'all masks')"),
    ({"name": ""}, "reference.name: a case name is a non-empty string"),
    ({"ema_decay": 2.0}, "ema_decay"),
])
def test_a_bad_reference_is_refused_with_its_path(reference, message):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_spec({**SPEC, "reference": reference})


class _Inner:
    """A searcher that records what it is told."""

    metric, mode = "val/miou", "max"

    def __init__(self):
        self.suggested, self.completed, self.results = [], [], []

    def suggest(self, trial_id):
        self.suggested.append(trial_id)
        return {"mix.full": 0.5}

    def on_trial_result(self, trial_id, result):
        self.results.append(trial_id)

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.completed.append(trial_id)


def test_reference_first_suggests_the_reference_once_and_hides_it_from_the_searcher():
    from labelmix.platform.reference import ReferenceFirst

    inner = _Inner()
    searcher = ReferenceFirst(inner, {REFERENCE: True, "mix.full": 0.1})
    assert searcher.suggest("a") == {REFERENCE: True, "mix.full": 0.1}
    assert searcher.suggest("b") == {"mix.full": 0.5}
    for trial in ("a", "b"):
        searcher.on_trial_result(trial, {"val/miou": 0.5})
        searcher.on_trial_complete(trial, {"val/miou": 0.5})
    assert inner.suggested == ["b"] and inner.results == ["b"] and inner.completed == ["b"]
    restored = ReferenceFirst(_Inner(), {})
    restored.set_state(searcher.get_state())  # a resumed study: the reference is not suggested again
    assert restored.suggest("c") == {"mix.full": 0.5}


def _table():
    return pd.DataFrame({
        "trial_id": ["ref", "a", "b", "c", "d"],
        "status": ["TERMINATED"] * 4 + ["ERROR"],
        "reference": [True, False, False, False, False],
        "case": ["all masks", None, None, None, None],
        "val/miou": [0.60, 0.56, 0.58, 0.30, 0.9],
        "cost/hours": [10.0, 2.0, 4.0, 0.5, 0.1],
        "config/mix.full": [1.0, 0.2, 0.4, 0.05, 0.01],
        "config/mix.box": [0.0, 0.8, 0.6, 0.95, 0.99],
    })


def test_the_reference_is_never_on_the_front_and_the_cheapest_near_it_is_recommended():
    table = with_pareto(_table())
    assert list(table["pareto"]) == [False, True, True, True, False]
    assert list(near_reference(table)) == [1, 2]  # 0.56 and 0.58 are within 0.05 of 0.60
    assert recommend_near(table) == 1  # the cheaper of the two
    assert describe_reference(table) == [
        "reference (all masks, trial ref): val/miou 0.600, cost/hours 10.000",
        "recommended: trial a (F20% B80% G0% N0%), val/miou 0.560, cost/hours 2.000: the cheapest trial at most "
        "0.05 below the reference",
    ]
    assert recommend_near(table, tolerance=0.01) == 2  # none within 0.01: the best one
    assert describe_reference(table, tolerance=0.01)[1].endswith("no trial is within 0.01 of the reference; the best one")
    without = with_pareto(_table().drop(columns=["reference", "case"]).iloc[1:])
    assert recommend_near(without) == 1  # position: trial b, the best searched
    assert describe_reference(without) == [
        "recommended: trial b (F40% B60% G0% N0%), val/miou 0.580, cost/hours 4.000: the best trial (the study has "
        "no reference)"]


@pytest.mark.slow
def test_a_study_runs_its_reference_once_to_the_end_and_resume_keeps_it(tmp_path):
    """Real Ray: the reference runs first and trains every epoch although ParetoASHA stops others;
    it is in the trial table, not on the front; resuming the finished study runs nothing again."""
    spec = {**SPEC, "search": {**SPEC["search"], "trials": 4},
            "fixed": {**SPEC["fixed"], "epochs": 3},
            "scheduler": {"type": "pareto_asha", "max_epochs": 3, "grace_period": 1, "reduction_factor": 4},
            "storage": {"path": str(tmp_path / "studies")}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = subprocess.run([sys.executable, "-m", "labelmix.cli", "submit", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = pd.read_parquet(tmp_path / "studies" / "ref" / "trials.parquet")
    assert len(table) == 5 and set(table["status"]) == {"TERMINATED"}
    (ref,) = table[table["reference"]].to_dict("records")
    assert ref["case"] == "all masks" and ref["config/mix.full"] == 1.0 and ref["epoch"] == 3
    assert ref["started_at"] == table["started_at"].min()  # suggested first
    assert not with_pareto(table).loc[table["reference"], "pareto"].any()
    assert "reference (all masks, trial " in proc.stdout and "recommended: trial " in proc.stdout
    assert "5/5 trials" in proc.stdout  # the progress bar counts the reference
    assert "View detailed results here" not in proc.stdout + proc.stderr  # Tune's own reporter is quiet
    assert "A new study created in memory" not in proc.stderr  # and Optuna's

    proc = subprocess.run([sys.executable, "-m", "labelmix.cli", "resume", str(tmp_path / "studies" / "ref")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    again = pd.read_parquet(tmp_path / "studies" / "ref" / "trials.parquet")
    assert len(again) == 5 and list(again["ended_at"]) == list(table["ended_at"])
