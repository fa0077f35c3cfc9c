"""The pure parts of benchmarks/search_efficiency.py (benchmarks/tabular_hpo.py) on a hand-made
3-configuration table with hand-computed hypervolumes. No Ray: part of the quick suite."""

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from tabular_hpo import (  # noqa: E402
    at_compute, check_targets, compute_to_reach, curves_of, grid_compute, grid_hypervolume, hypervolume_curve, reference_point,
    summarise,
)

# config -> (cost/hours, val/miou at epochs 1 and 2)
TABLE = {"A": (1.0, [0.2, 0.4]), "B": (2.0, [0.3, 0.6]), "C": (3.0, [0.1, 0.7])}


def frame(table=TABLE) -> pd.DataFrame:
    return pd.DataFrame([{"config": key, "epoch": epoch, "cost/hours": cost, "val/miou": miou, "seconds": 5.0}
                         for key, (cost, curve) in table.items() for epoch, miou in enumerate(curve, start=1)])


def events(*names: str) -> list:
    """'A1' -> trial A reports its epoch-1 result."""
    return [(name[0], TABLE[name[0]][0], TABLE[name[0]][1][int(name[1]) - 1]) for name in names]


CURVES = curves_of(frame())
REFERENCE = reference_point(CURVES)  # 1.1 x the largest cost, mIoU 0
INTERLEAVED = events("A1", "B1", "A2", "B2", "C1", "C2")
# After each epoch, with the reference (3.3, 0): A1 3.3-1=2.3 x 0.2; B1 adds 1.3 x 0.3 beside A's
# 1 x 0.2; A2 at 0.4 dominates B's 0.3 (2.3 x 0.4); B2 gives 1 x 0.4 + 1.3 x 0.6; C1 (0.1) is
# dominated; C2 gives 1 x 0.4 + 1 x 0.6 + 0.3 x 0.7.
INTERLEAVED_HV = [0.46, 0.59, 0.92, 1.18, 1.18, 1.21]


def test_the_table_reads_into_one_curve_per_configuration():
    assert sorted(CURVES) == ["A", "B", "C"]
    assert CURVES["B"].cost == 2.0 and CURVES["B"].miou.tolist() == [0.3, 0.6]
    assert REFERENCE == pytest.approx((3.3, 0.0))
    assert grid_compute(CURVES) == 6


def test_a_configuration_with_missing_epochs_is_refused():
    with pytest.raises(ValueError, match="epochs"):
        curves_of(frame({**TABLE, "D": (4.0, [0.5])}))


def test_the_grid_hypervolume_counts_every_configuration_at_its_last_epoch():
    assert grid_hypervolume(CURVES, REFERENCE) == pytest.approx(1.21)


def test_hypervolume_against_compute():
    assert hypervolume_curve(INTERLEAVED, REFERENCE).tolist() == pytest.approx(INTERLEAVED_HV)


def test_a_trial_counts_with_its_last_reported_point():
    dropping = [("A", 1.0, 0.4), ("A", 1.0, 0.2)]
    assert hypervolume_curve(dropping, REFERENCE).tolist() == pytest.approx([0.92, 0.46])


def test_reading_the_curve_at_a_compute_level():
    curve = hypervolume_curve(INTERLEAVED, REFERENCE)
    # nothing before the first epoch; the last value after a search that ended early
    assert at_compute(curve, [0, 1, 3, 6, 10]).tolist() == pytest.approx([0.0, 0.46, 0.92, 1.21, 1.21])


def test_compute_to_reach_95_percent_of_the_grid():
    curve = hypervolume_curve(INTERLEAVED, REFERENCE)
    assert compute_to_reach(curve, 0.95 * 1.21) == 4  # 1.18 >= 1.1495, 0.92 is not
    assert compute_to_reach(curve, 1.21) == 6  # reaching the target exactly counts
    assert compute_to_reach(curve, 1.3) is None


def test_the_summary_over_seeds():
    costly_first = events("C1", "C2", "A1", "A2", "B1", "B2")  # 0.03, 0.21, 0.61, 1.01, 1.01, 1.21
    cut_short = events("A1", "A2")  # 0.46, 0.92: never reaches 95%
    curves = [hypervolume_curve(e, REFERENCE) for e in (INTERLEAVED, costly_first, cut_short)]
    summary = summarise(curves, grid_hv=1.21, compute=6, levels=(0.5, 1.0))
    half = summary["hypervolume_fraction_at_compute_fraction"]["0.5"]  # after 3 epochs: 0.92, 0.61, 0.92
    assert half["mean"] == pytest.approx((0.92 + 0.61 + 0.92) / 3 / 1.21)
    assert half["min"] == pytest.approx(0.61 / 1.21) and half["max"] == pytest.approx(0.92 / 1.21)
    needed = summary["compute_to_target"]
    assert needed["per_seed_epochs"] == [4, 6, None]
    assert needed["seeds_reaching"] == 2
    assert needed["median_epochs"] == 6  # of 4, 6 and never
    assert needed["median_fraction"] == pytest.approx(1.0)
    assert needed["min_fraction"] == pytest.approx(4 / 6) and needed["mean_fraction"] == pytest.approx(5 / 6)
    assert summary["epochs_used"]["min"] == 2


def test_the_median_is_none_when_most_seeds_never_reach_the_target():
    never = hypervolume_curve(events("A1"), REFERENCE)
    summary = summarise([never, never, hypervolume_curve(INTERLEAVED, REFERENCE)], grid_hv=1.21, compute=6)
    assert summary["compute_to_target"]["median_fraction"] is None
    assert summary["compute_to_target"]["seeds_reaching"] == 1


def test_the_targets_compare_medians():
    def summary(median):
        return {"compute_to_target": {"median_fraction": median}}

    met = check_targets({"mine": summary(0.2), "rival": summary(0.25)}, "rival", searcher="mine")
    assert met["within"] is True and met["no_more_than_rival"] is True
    slower = check_targets({"mine": summary(0.35), "rival": summary(0.25)}, "rival", searcher="mine")
    assert slower["within"] is False and slower["no_more_than_rival"] is False
    never = check_targets({"mine": summary(None), "rival": summary(0.5)}, "rival", searcher="mine")
    assert never["within"] is False and never["no_more_than_rival"] is False
    assert check_targets({"mine": summary(0.2), "rival": summary(None)}, "rival", searcher="mine")["no_more_than_rival"]
    assert check_targets({"mine": summary(None), "rival": summary(None)}, "rival", searcher="mine")["no_more_than_rival"] is None
    assert check_targets({"mine": summary(0.2)}, "rival", searcher="mine")["no_more_than_rival"] is None
