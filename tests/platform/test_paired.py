"""space.cases, the paired seed replicate, and the paired table (labelmix table)."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest

from labelmix.cli import main
from labelmix.errors import UserError
from labelmix.platform.paired import format_paired, paired_table
from labelmix.platform.space import case_name, trial_config
from labelmix.platform.spec import parse_spec
from tests.platform.test_spec import VALID

CASES = {
    "seed": {"grid": [0, 1]},
    "cases": {"grid": [
        {"name": "alone", "mix": {"full": 0.05, "none": 0.95}, "pseudo_weight": 0},
        {"name": "boxes", "mix": {"full": 0.05, "box": 0.95}},
    ]},
}


def grid_spec(space=None, **changes):
    data = copy.deepcopy(VALID)
    data["space"] = copy.deepcopy(space or CASES)
    data["search"] = {"algorithm": "grid", "concurrency": 2, "seed": 7}
    data["scheduler"] = {"type": "none"}
    data.update(changes)
    return parse_spec(data)


def test_a_case_sets_its_fields_together_and_the_seed_is_one_replicate():
    spec = grid_spec()
    assert spec.search.trials == 4
    alone = trial_config(spec, {"seed": 1, "cases": "0"})
    assert alone["seed"] == 1 and alone["pseudo_weight"] == 0
    # the mix seed follows the searched seed: same masked images for every case of one seed
    assert alone["mix"] == {"full": 0.05, "box": 0.0, "global": 0.0, "none": 0.95, "seed": 1}
    boxes = trial_config(spec, {"seed": 1, "cases": "1"})
    assert boxes["mix"]["seed"] == 1 and "pseudo_weight" not in boxes and "name" not in boxes
    assert case_name(spec, {"seed": 1, "cases": "1"}) == "boxes"


def test_without_a_searched_seed_the_mix_seed_is_the_search_seed():
    spec = grid_spec({"cases": CASES["cases"]})
    assert trial_config(spec, {"cases": "1"})["mix"]["seed"] == 7


@pytest.mark.parametrize("cases, message", [
    ({"grid": [{"name": "a", "mix": {"full": 0.5, "box": 0.6}}]}, "space.cases.grid.0.mix: fractions"),
    ({"grid": [{"name": "a", "lr": -1}]}, "space.cases.grid.0.lr"),
    ({"grid": [{"name": "a", "epochz": 3}]}, "space.cases.grid.0.epochz: not a trial config field"),
    ({"grid": [{"name": "a"}, {"name": "a", "lr": 0.1}]}, "space.cases.grid.1.name: 'a' names two cases"),
    ({"grid": [{"name": "a", "batch_size": 4}]}, "space.cases.grid.0.batch_size: also set in fixed"),
    ({"grid": ["boxes"]}, "space.cases.grid.0: a case is a non-empty mapping"),
    ({"uniform": [0, 1]}, "space.cases: give {grid: [cases]} or {choice: [cases]}"),
])
def test_bad_cases_are_named(cases, message):
    with pytest.raises(UserError) as err:
        grid_spec({"seed": {"grid": [0]}, "cases": cases})
    assert message in str(err.value)


def _frame():
    rows = []
    values = {"alone": [0.30, 0.50, 0.20], "boxes": [0.60, 0.62, 0.58]}
    for case, scores in values.items():
        for seed, score in enumerate(scores):
            rows.append({"case": case, "config/seed": seed, "status": "TERMINATED", "val/miou": score})
    rows.append({"case": "boxes", "config/seed": 3, "status": "ERROR", "val/miou": 0.9})  # not finished: left out
    return pd.DataFrame(rows)


def test_paired_table_gives_mean_std_and_paired_differences():
    table = paired_table(_frame(), "val/miou", baseline="alone").set_index("case")
    assert table.loc["boxes", "seeds"] == 3
    assert table.loc["boxes", "mean"] == pytest.approx(0.60)
    assert table.loc["boxes", "std"] == pytest.approx(0.02)
    assert table.loc["alone", "std"] == pytest.approx(math.sqrt(((0.3 - 1 / 3) ** 2 + (0.5 - 1 / 3) ** 2 + (0.2 - 1 / 3) ** 2) / 2))
    # differences 0.30, 0.12, 0.38: mean 0.2667
    assert table.loc["boxes", "diff_mean"] == pytest.approx(0.8 / 3)
    assert table.loc["boxes", "diff_std"] == pytest.approx(pd.Series([0.30, 0.12, 0.38]).std())
    assert table.loc["boxes", "higher"] == 3 and table.loc["alone", "diff_mean"] == 0.0
    text = format_paired(paired_table(_frame(), "val/miou", "alone"), "val/miou", "alone")
    assert "| boxes | 3 | 0.600 | 0.020 | 0.580 | 0.620 | 3 | +0.267 |" in text


def test_paired_table_refuses_an_unknown_baseline_and_a_table_without_cases():
    with pytest.raises(UserError, match="--baseline: no case named 'x'; cases: alone, boxes"):
        paired_table(_frame(), "val/miou", baseline="x")
    with pytest.raises(UserError, match="no 'case' column"):
        paired_table(_frame().drop(columns="case"), "val/miou")


def test_table_command_reads_a_study_folder(tmp_path, capsys):
    _frame().to_parquet(tmp_path / "trials.parquet")
    assert main(["table", str(tmp_path), "--baseline", "alone"]) == 0
    assert "| alone | 3 |" in capsys.readouterr().out
    assert main(["table", str(tmp_path / "nope")]) == 2
    assert "no trials.parquet here" in capsys.readouterr().err


def test_a_later_study_replaces_the_same_case_and_seed(tmp_path, capsys):
    from labelmix.platform.paired import combine

    redo = pd.DataFrame([{"case": "alone", "config/seed": 0, "status": "TERMINATED", "val/miou": 0.40},
                         {"case": "alone", "config/seed": 1, "status": "ERROR", "val/miou": 0.0}])
    table = paired_table(combine([_frame(), redo]), "val/miou", "alone").set_index("case")
    # alone: 0.40 (re-measured), 0.50, 0.20; the errored redo of seed 1 does not replace the finished one
    assert table.loc["alone", "mean"] == pytest.approx((0.40 + 0.50 + 0.20) / 3)
    assert table.loc["boxes", "diff_mean"] == pytest.approx(((0.60 - 0.40) + (0.62 - 0.50) + (0.58 - 0.20)) / 3)
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    _frame().to_parquet(first / "trials.parquet")
    redo.to_parquet(second / "trials.parquet")
    assert main(["table", str(first), str(second)]) == 0
    assert "| alone | 3 | 0.367 |" in capsys.readouterr().out
