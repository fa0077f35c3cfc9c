"""The trial table's frontier for a spec's objectives, against a hand-made table with hand-worked answers."""

import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from labelmix.platform.trial_table import (
    DEFAULT_OBJECTIVES,
    as_objectives,
    format_frontier,
    frontier_axes,
    frontier_of,
    frontier_rows,
    objective_values,
    objectives_json,
    read_table,
    recommend_index,
    with_pareto,
    write_parquet,
)

NAN = math.nan
MDICE = [("val/mdice", "max"), ("cost/hours", "min")]

# Four finished trials that trade hours for quality differently on mIoU and on Dice; e errored and f
# was over the budget cap (not trained): neither counts, however good it looks.
TABLE = pd.DataFrame([
    {"trial_id": "a", "status": "TERMINATED", "cost/hours": 1.0, "cost/reduction": 0.9, "val/miou": 0.50, "val/mdice": 0.60},
    {"trial_id": "b", "status": "TERMINATED", "cost/hours": 2.0, "cost/reduction": 0.8, "val/miou": 0.45, "val/mdice": 0.72},
    {"trial_id": "c", "status": "TERMINATED", "cost/hours": 3.0, "cost/reduction": 0.7, "val/miou": 0.70, "val/mdice": 0.68},
    {"trial_id": "d", "status": "TERMINATED", "cost/hours": 4.0, "cost/reduction": 0.6, "val/miou": 0.72, "val/mdice": 0.80},
    {"trial_id": "e", "status": "ERROR", "cost/hours": 0.5, "cost/reduction": 0.95, "val/miou": 0.90, "val/mdice": 0.90},
    {"trial_id": "f", "status": "TERMINATED", "cost/hours": 0.2, "cost/reduction": 0.99, "val/miou": NAN,
     "val/mdice": 0.99, "status/over_budget": 1.0},
])


def test_mdice_frontier_is_worked_out_by_hand_and_differs_from_the_miou_one():
    # val/miou by cost: a 0.50 | b 0.45 < a's, dominated | c 0.70 | d 0.72 -> a, c, d
    assert list(frontier_of(TABLE)["trial_id"]) == ["a", "c", "d"]
    assert list(frontier_of(TABLE, [("val/miou", "max"), ("cost/hours", "min")])["trial_id"]) == ["a", "c", "d"]
    # val/mdice by cost: a 0.60 | b 0.72 | c 0.68 < b's, dominated | d 0.80 -> a, b, d
    assert list(frontier_of(TABLE, MDICE)["trial_id"]) == ["a", "b", "d"]
    assert list(with_pareto(TABLE, MDICE)["pareto"]) == [True, True, False, True, False, False]


def test_a_maximised_cost_axis_is_negated_and_the_frontier_runs_cheapest_first():
    # cost/reduction max orders the trials as cost/hours min does; the cheapest (most reduced) first
    objectives = [("val/mdice", "max"), ("cost/reduction", "max")]
    assert list(frontier_of(TABLE, objectives)["trial_id"]) == ["a", "b", "d"]


def test_rows_that_do_not_count_have_nan_for_every_objective():
    values = objective_values(TABLE, MDICE)  # columns: x (cost/hours), y (val/mdice)
    assert values[:4].tolist() == [[1.0, 0.60], [2.0, 0.72], [3.0, 0.68], [4.0, 0.80]]
    assert np.isnan(values[4:]).all()  # errored; over budget (its 0.99 Dice is not a result)


def test_frontier_axes_complete_a_lone_objective_with_the_other_kind():
    assert frontier_axes(None) == (("cost/hours", "min"), ("val/miou", "max"))
    assert frontier_axes(MDICE) == (("cost/hours", "min"), ("val/mdice", "max"))
    assert frontier_axes([("cost/hours", "min"), ("val/miou_bg", "max")]) == (("cost/hours", "min"), ("val/miou_bg", "max"))
    assert frontier_axes([("val/mdice", "max")]) == (("cost/hours", "min"), ("val/mdice", "max"))
    assert frontier_axes([("cost/reduction", "max")]) == (("cost/reduction", "max"), ("val/miou", "max"))


def test_objectives_from_a_spec_and_from_json():
    from labelmix.platform.spec import Objective

    spec_objectives = (Objective(metric="val/mdice"), Objective(metric="cost/hours"))
    assert as_objectives(spec_objectives) == (("val/mdice", "max"), ("cost/hours", "min"))
    text = objectives_json(spec_objectives)
    assert json.loads(text) == [{"metric": "val/mdice", "mode": "max"}, {"metric": "cost/hours", "mode": "min"}]
    assert as_objectives(text) == (("val/mdice", "max"), ("cost/hours", "min"))
    assert as_objectives(None) == DEFAULT_OBJECTIVES
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        as_objectives([("val/miou", "up")])


@pytest.mark.parametrize("objectives, budget, expected", [
    (None, 3.0, "c"), (MDICE, 3.0, "b"), (MDICE, 1000, "d"), (MDICE, 1.5, "a"), (MDICE, 0.9, None)])
def test_recommend_follows_the_quality_objective(objectives, budget, expected):
    index = recommend_index(with_pareto(TABLE, objectives), budget)
    assert (None if index is None else TABLE.iloc[index]["trial_id"]) == expected


def test_the_table_keeps_its_objectives_through_its_parquet_file(tmp_path):
    write_parquet(with_pareto(TABLE, MDICE), tmp_path / "trials.parquet")
    table = read_table(tmp_path)
    assert list(frontier_rows(table)["trial_id"]) == ["a", "b", "d"]
    assert list(frontier_rows(read_table(tmp_path, DEFAULT_OBJECTIVES))["trial_id"]) == ["a", "c", "d"]
    assert len(frontier_of(read_table(tmp_path / "nothing"))) == 0  # no trial recorded yet


def test_format_frontier_shows_the_objectives_first():
    front = frontier_of(TABLE, MDICE)
    assert format_frontier(front).splitlines() == [
        "trial_id  cost/hours  val/mdice  val/miou  cost/reduction",
        "       a       1.000      0.600     0.500           0.900",
        "       b       2.000      0.720     0.450           0.800",
        "       d       4.000      0.800     0.720           0.600",
    ]
    assert format_frontier(front.iloc[:0]) == "(no finished trials on the frontier yet)"


def test_plots_draw_the_objectives(tmp_path):
    from labelmix.platform.plots import frontier_html

    page = frontier_html(with_pareto(TABLE, MDICE), tmp_path / "f.html", title="demo").read_text()
    svg = ET.fromstring(page[page.index("<svg"):page.index("</svg>") + 6])
    circles = svg.findall("{http://www.w3.org/2000/svg}circle")
    front = [json.loads(c.get("data-info")) for c in circles if c.get("class") == "front"]
    assert len(circles) == 4 and {i["trial"] for i in front} == {"a", "b", "d"}
    assert front[0]["val/mdice"] == "0.600" and front[0]["cost/hours"] == "1.00"
    assert "foreground Dice (val)" in page and "annotation cost (hours)" in page and "demo: annotation cost vs Dice" in page


def test_browse_and_trial_table_import_no_ray():
    code = "import labelmix.platform.browse, labelmix.platform.trial_table, sys; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
