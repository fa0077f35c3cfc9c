"""ResultsTable, the Tune callback that keeps the trial table: driven hook by hook with small stand-ins
for Tune's trials, in the order Tune calls the hooks, and read back from the files it writes."""

from __future__ import annotations

import io
import math
import pickle
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd
import pytest

from labelmix.platform.results import ResultsTable
from labelmix.platform.space import reference_point
from labelmix.platform.spec import parse_spec
from labelmix.platform.trial_table import FRONTIER_FILE, TRIALS_FILE

SPEC = {
    "name": "demo",
    "objectives": [{"metric": "val/miou", "mode": "max"}, {"metric": "cost/hours", "mode": "min"}],
    "reference": {"name": "all masks", "mix": {"full": 1}},
    "space": {"mix": {"full": {"uniform": [0.1, 1.0]}, "box": {"uniform": [0, 1]}}, "ema_decay": {"loguniform": [0.9, 0.999]}},
    "fixed": {"encoder": "test_resnet", "epochs": 2},
    "search": {"algorithm": "random", "trials": 3, "seed": 0},
}


@dataclass
class FakeTrial:
    """What the callback reads of a Tune trial: its id, its sampled config, its error file."""

    trial_id: str
    config: dict[str, Any] = field(default_factory=lambda: {"mix.full": 0.75, "mix.box": 0.25, "ema_decay": 0.99})
    error_file: Optional[str] = None


@pytest.fixture
def spec():
    return parse_spec(SPEC)


def result(epoch: int, miou: float, hours: float = 1.0, **extra) -> dict:
    """A report as fit sends it, with the keys Tune adds."""
    return {"epoch": float(epoch), "val/miou": miou, "cost/hours": hours, "train/loss": 0.5**epoch,
            "training_iteration": epoch, "time_total_s": 3.0 * epoch, "done": False, "config": {"x": 1},
            "node_ip": "10.0.0.7", **extra}


def run(table: ResultsTable, trial: FakeTrial, results: list[dict], end: str = "complete") -> None:
    """Tune's hook order for one trial: start, each result, then complete or error."""
    table.on_trial_start(0, [trial], trial)
    for item in results:
        table.on_trial_result(0, [trial], trial, item)
    getattr(table, f"on_trial_{end}")(0, [trial], trial)


def test_a_trial_row_from_start_to_finish(tmp_path, spec):
    table = ResultsTable(tmp_path, spec)
    trial = FakeTrial("a")
    before = time.time()
    table.on_trial_start(0, [trial], trial)
    row = table.rows["a"]
    assert row["status"] == "RUNNING" and before <= row["started_at"] <= time.time()
    # the decoded config: mix weights 0.75 + 0.25 normalised (already fractions), the mix seed from
    # search.seed, the fixed settings and the spec's defaults
    assert {k: row[k] for k in ("config/mix.full", "config/mix.box", "config/mix.global", "config/mix.none",
                                "config/mix.seed", "config/ema_decay", "config/encoder", "config/epochs")} == {
        "config/mix.full": 0.75, "config/mix.box": 0.25, "config/mix.global": 0.0, "config/mix.none": 0.0,
        "config/mix.seed": 0, "config/ema_decay": 0.99, "config/encoder": "test_resnet", "config/epochs": 2}
    assert row["reference"] is False and "case" not in row
    assert not (tmp_path / TRIALS_FILE).exists()  # nothing is written before a trial ends

    table.on_trial_result(0, [trial], trial, result(1, 0.30, **{"status/over_budget": False, "labels/full": 3}))
    table.on_trial_result(0, [trial], trial, result(2, 0.25, **{"val/name": "IRF", "gpu/peak_memory_mb": 12}))
    row = table.rows["a"]
    assert row["val/miou"] == 0.25 and row["best/val/miou"] == 0.30  # the last value and the best one
    assert row["epoch"] == 2.0 and row["train/loss"] == 0.25 and row["cost/hours"] == 1.0
    assert row["status/over_budget"] == 0.0 and row["labels/full"] == 3.0 and row["gpu/peak_memory_mb"] == 12.0
    assert isinstance(row["labels/full"], float) and row["val/name"] == "IRF"  # numbers as floats, text as it is
    assert row["node_ip"] == "10.0.0.7"
    for dropped in ("training_iteration", "time_total_s", "done", "config"):  # Tune's own keys are not kept
        assert dropped not in row

    table.on_trial_complete(0, [trial], trial)
    assert row["status"] == "TERMINATED" and row["started_at"] <= row["ended_at"] <= time.time()
    written = pd.read_parquet(tmp_path / TRIALS_FILE)  # written when the trial ended
    assert list(written["trial_id"]) == ["a"] and list(written["pareto"]) == [True]


def test_best_follows_the_quality_objective_and_skips_nan(tmp_path):
    spec = parse_spec({**SPEC, "objectives": [{"metric": "val/mdice", "mode": "max"}]})
    table = ResultsTable(tmp_path, spec)
    trial = FakeTrial("a")
    table.on_trial_start(0, [trial], trial)
    table.on_trial_result(0, [trial], trial, {"val/mdice": math.nan, "val/miou": 0.9})
    assert "best/val/mdice" not in table.rows["a"]  # no value yet: no best
    for dice in (0.4, 0.7, math.nan, 0.6):
        table.on_trial_result(0, [trial], trial, {"val/mdice": dice})
    row = table.rows["a"]
    assert row["best/val/mdice"] == 0.7 and row["val/mdice"] == 0.6  # NaN never replaces the best
    assert "best/val/miou" not in row  # the best is kept for the quality objective alone

    table = ResultsTable(tmp_path, parse_spec(SPEC))
    run(table, trial, [result(1, math.nan), result(2, 0.2), result(3, math.nan)])
    assert table.rows["a"]["best/val/miou"] == 0.2 and math.isnan(table.rows["a"]["val/miou"])


def test_the_reference_and_case_columns(tmp_path, spec):
    table = ResultsTable(tmp_path, spec)
    reference, searched = FakeTrial("r", config=reference_point(spec)), FakeTrial("a")
    run(table, reference, [result(1, 0.6, hours=4.0)])
    run(table, searched, [result(1, 0.5)])
    ref = table.rows["r"]
    assert ref["reference"] is True and ref["case"] == "all masks"
    assert ref["config/mix.full"] == 1.0 and ref["config/mix.box"] == 0.0
    assert "config/ema_decay" not in ref  # the reference is the fixed settings and its own fields, not the placeholders
    assert table.rows["a"]["reference"] is False

    cases = parse_spec({**SPEC, "reference": None, "space": {"cases": {"grid": [
        {"name": "5% alone", "mix": {"full": 0.05, "none": 0.95}}, {"name": "boxes", "mix": {"full": 0.05, "box": 0.95}}]}},
        "search": {"algorithm": "grid", "seed": 0}})
    (tmp_path / "cases").mkdir()
    table = ResultsTable(tmp_path / "cases", cases)
    run(table, FakeTrial("b", config={"cases": "1"}), [result(1, 0.4)])
    row = table.rows["b"]
    assert row["case"] == "boxes" and row["reference"] is False
    assert (row["config/mix.full"], row["config/mix.box"]) == (0.05, 0.95)


def test_the_frame_flags_the_front_without_the_reference_or_unfinished_trials(tmp_path, spec):
    table = ResultsTable(tmp_path, spec)
    run(table, FakeTrial("a"), [result(1, 0.50, hours=1.0)])
    run(table, FakeTrial("b"), [result(1, 0.40, hours=2.0)])  # dominated by a
    run(table, FakeTrial("c"), [result(1, 0.90, hours=0.5)], end="error")  # better than all, but failed
    run(table, FakeTrial("r", config=reference_point(spec)), [result(1, 0.95, hours=0.2)])  # compared with, not searched
    frame = table.frame()
    assert list(frame["trial_id"]) == ["a", "b", "c", "r"]
    assert list(frame["status"]) == ["TERMINATED", "TERMINATED", "ERROR", "TERMINATED"]
    assert list(frame["pareto"]) == [True, False, False, False]
    assert list(pd.read_parquet(tmp_path / FRONTIER_FILE)["trial_id"]) == ["a"]


def test_an_errored_trial_keeps_the_end_of_its_error_file(tmp_path, spec):
    error_file = tmp_path / "error.txt"
    error_file.write_text("x" * 500 + "y" * 2000)
    table = ResultsTable(tmp_path, spec)
    run(table, FakeTrial("a", error_file=str(error_file)), [result(1, 0.1)], end="error")
    assert table.rows["a"]["status"] == "ERROR" and table.rows["a"]["error"] == "y" * 2000  # the last 2000 characters
    run(table, FakeTrial("b", error_file=str(tmp_path / "missing.txt")), [], end="error")
    assert table.rows["b"]["status"] == "ERROR" and "error" not in table.rows["b"]


def test_a_config_that_fails_validation_is_recorded(tmp_path, spec):
    table = ResultsTable(tmp_path, spec)
    run(table, FakeTrial("a", config={"lr": 0.1}), [], end="error")
    row = table.rows["a"]
    assert row["status"] == "ERROR"
    assert row["config/error"] == "trial config: ['lr'] are not searched by the spec; searched: ['ema_decay', 'mix.box', 'mix.full']"


def test_a_finished_trials_row_never_changes(tmp_path, spec):
    """After a restore from a snapshot older than a trial's end, Tune restarts the trial from its last
    checkpoint: its new start, results and end leave the finished row as it was."""
    table = ResultsTable(tmp_path, spec)
    trial = FakeTrial("a")
    run(table, trial, [result(1, 0.3), result(2, 0.5)])
    finished = dict(table.rows["a"])
    run(table, trial, [result(0, 0.0, hours=9.0)])  # the restarted trial: nothing left to train
    run(table, trial, [], end="error")
    assert table.rows["a"] == finished

    # an errored trial is not finished: Tune reruns it on resume, and its row follows the rerun
    run(table, FakeTrial("b"), [result(1, 0.2)], end="error")
    table.on_trial_start(0, [FakeTrial("b")], FakeTrial("b"))
    assert table.rows["b"]["status"] == "RUNNING"
    table.on_trial_result(0, [FakeTrial("b")], FakeTrial("b"), result(2, 0.4))
    table.on_trial_complete(0, [FakeTrial("b")], FakeTrial("b"))
    assert table.rows["b"]["status"] == "TERMINATED" and table.rows["b"]["best/val/miou"] == 0.4


def test_the_table_is_read_back_by_a_new_instance_and_its_rows_stay_frozen(tmp_path, spec):
    table = ResultsTable(tmp_path, spec)
    run(table, FakeTrial("a"), [result(1, 0.5, hours=1.0)])
    run(table, FakeTrial("b"), [result(1, 0.2, hours=3.0)], end="error")
    table.on_experiment_end([])

    again = ResultsTable(tmp_path, spec)  # a resumed study's callback
    pd.testing.assert_frame_equal(again.frame(), table.frame(), check_dtype=False)
    assert again.frame().attrs["objectives"] == [["val/miou", "max"], ["cost/hours", "min"]]
    run(again, FakeTrial("a"), [result(0, 0.0)])  # finished before: kept as it was
    assert again.rows["a"]["val/miou"] == 0.5 and again.rows["a"]["ended_at"] == table.rows["a"]["ended_at"]
    run(again, FakeTrial("b"), [result(1, 0.6, hours=3.0)])  # failed before: rerun
    assert again.rows["b"]["status"] == "TERMINATED"
    assert list(pd.read_parquet(tmp_path / TRIALS_FILE)["pareto"]) == [True, True]


def test_tunes_pickled_callback_leaves_the_rows_to_the_folder(tmp_path, spec):
    table = ResultsTable(tmp_path, spec)
    run(table, FakeTrial("a"), [result(1, 0.5)])
    restored = pickle.loads(pickle.dumps(table))
    assert restored.rows == {} and restored.directory == tmp_path
    restored.setup()  # Tune calls setup when the experiment starts again
    assert list(restored.rows) == ["a"] and restored.rows["a"]["status"] == "TERMINATED"


def test_the_files_are_replaced_whole_never_rewritten_in_place(tmp_path, spec):
    table = ResultsTable(tmp_path, spec)
    table.write()
    assert list(tmp_path.iterdir()) == []  # no rows: no files
    run(table, FakeTrial("a"), [result(1, 0.5)])
    with open(tmp_path / TRIALS_FILE, "rb") as reader:  # a reader holding the table written at a's end
        run(table, FakeTrial("b"), [result(1, 0.6, hours=2.0)])
        old = reader.read()
    # a file rewritten in place would give the reader the new rows (or half of them); a replaced
    # one leaves it the whole old file, and the folder holds the new one
    assert list(pd.read_parquet(io.BytesIO(old))["trial_id"]) == ["a"]
    assert list(pd.read_parquet(tmp_path / TRIALS_FILE)["trial_id"]) == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [FRONTIER_FILE, TRIALS_FILE]  # no temporary left behind
