"""ParetoASHA: the promotion rule on recorded rung results, the Tune hooks with fake trials, and
one real Tuner run (slow)."""

import numpy as np
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from labelmix.errors import UserError
from labelmix.platform.pareto_asha import ParetoASHA, promotes

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
OBJECTIVES = {"val/miou": "max", "cost/hours": "min"}

# The rung of the design note: A is cheap and poor, B and D good and dear, C dominated by B.
#            (val/miou, cost/hours), the order of OBJECTIVES
RUNG = {"A": (0.40, 1.0), "B": (0.70, 10.0), "C": (0.65, 12.0), "D": (0.72, 20.0)}


def fake_trial(trial_id: str) -> Trial:
    # a stub Trial needs no Ray cluster and no registered trainable
    return Trial("__fake", trial_id=trial_id, stub=True)


def result(trial_id: str, iteration: int) -> dict:
    miou, hours = RUNG[trial_id]
    return {"training_iteration": iteration, "val/miou": miou, "cost/hours": hours}


def scheduler(**overrides) -> ParetoASHA:
    settings = dict(objectives=OBJECTIVES, max_t=4, grace_period=1, reduction_factor=2)
    settings.update(overrides)
    return ParetoASHA(**settings)


def records(*trial_ids):
    return [(trial_id, np.array(RUNG[trial_id])) for trial_id in trial_ids]


# --- the promotion rule -------------------------------------------------------------------------


def test_decide_keeps_the_cheap_trial_on_the_front():
    # crowding: A and D (front ends, crowding inf), B (front middle), C (rank 1); keep ceil(4/2) = 2
    rung = records("B", "C", "D", "A")
    sched = scheduler()  # front_order "crowding", the default
    assert {t: sched.decide(rung, t) for t in "ABCD"} == {"A": True, "B": False, "C": False, "D": True}


def test_decide_by_hypervolume_contribution_keeps_what_adds_most_to_the_front():
    # minimised (-miou, hours): worst (-0.40, 20), best (-0.72, 1), reference (-0.368, 21.9);
    # along -miou: D (-0.72, 20) adds 0.02 x 1.9 = 0.038, B 0.30 x 10 = 3.0, A 0.032 x 9 = 0.288;
    # keep 2: B and the cheap A, not D (0.02 more mIoU than B for twice its hours)
    rung = records("B", "C", "D", "A")
    sched = scheduler(front_order="hypervolume")
    assert {t: sched.decide(rung, t) for t in "ABCD"} == {"A": True, "B": True, "C": False, "D": False}


def test_decide_by_hypervolume_a_cheap_trial_that_learned_nothing_stops():
    # Z (cheapest, mIoU 0) and D are the ends of the front: crowding keeps both. Minimised
    # (-miou, hours), reference (0.072, 21.95): D adds 0.02 x 1.95, B 0.2 x 10, Y 0.5 x 8, Z 0.072 x 1.5
    rung = records("B", "D") + [("Y", np.array([0.5, 2.0])), ("Z", np.array([0.0, 0.5]))]
    by_volume = {t: promotes(rung, t, ["max", "min"], 2, front_order="hypervolume") for t in "BDYZ"}
    by_crowding = {t: promotes(rung, t, ["max", "min"], 2) for t in "BDYZ"}  # the default
    assert by_volume == {"B": True, "D": False, "Y": True, "Z": False}
    assert by_crowding == {"B": False, "D": True, "Y": False, "Z": True}


def test_decide_single_record_continues():
    assert scheduler().decide([("x", np.array([0.0, 1e9]))], "x")


def test_decide_ties_go_to_the_trial_being_decided():
    # two front ends, both crowding inf, keep 1: each continues when it is the one deciding
    rung = records("A", "B")
    assert promotes(rung, "A", ["max", "min"], 2, "crowding") and promotes(rung, "B", ["max", "min"], 2, "crowding")


def test_decide_reduction_factor_three():
    # keep ceil(4/3) = 2 of A..D, the same two ends; with five records keep 2 as well
    rung = records("A", "B", "C", "D") + [("E", np.array([0.10, 30.0]))]
    assert [promotes(rung, t, ["max", "min"], 3, "crowding") for t in "ABCDE"] == [True, False, False, True, False]
    # by hypervolume (reference (-0.038, 32.9)): A adds 0.362 x 9, B 0.30 x 10, D 0.02 x 12.9
    assert [promotes(rung, t, ["max", "min"], 3, "hypervolume") for t in "ABCDE"] == [True, True, False, False, False]


def test_front_order_is_checked():
    with pytest.raises(UserError, match="front_order must be 'hypervolume' or 'crowding'"):
        scheduler(front_order="crowded")


def test_decide_unknown_trial_is_an_error():
    with pytest.raises(ValueError, match="not among the rung records"):
        scheduler().decide(records("A"), "Z")


# --- against Ray's own ASHA, driven through the same hooks --------------------------------------


def drive(sched, order, iteration=1):
    decisions = {}
    for trial_id in order:
        trial = fake_trial(trial_id)
        sched.on_trial_add(None, trial)
        decisions[trial_id] = sched.on_trial_result(None, trial, result(trial_id, iteration))
    return decisions


def test_asha_on_miou_stops_the_cheap_trial_and_pareto_asha_keeps_it():
    order = ["B", "C", "D", "A"]
    asha = ASHAScheduler(metric="val/miou", mode="max", max_t=4, grace_period=1, reduction_factor=2)
    # ASHA compares with the percentile of earlier records: C < .70, D > .675, A < .70
    assert drive(asha, order) == {"B": CONTINUE, "C": STOP, "D": CONTINUE, "A": STOP}
    # ParetoASHA: C is dominated by B; D and A are ends of the front
    assert drive(scheduler(), order) == {"B": CONTINUE, "C": STOP, "D": CONTINUE, "A": CONTINUE}


# --- the Tune hooks -----------------------------------------------------------------------------


def test_milestones_like_asha_below_max_t():
    assert ParetoASHA(OBJECTIVES).milestones == (1, 3, 9, 27, 81)
    assert scheduler().milestones == (1, 2)
    assert scheduler(grace_period=4).milestones == ()


def test_max_t_stops():
    sched = scheduler()
    trial = fake_trial("B")
    sched.on_trial_add(None, trial)
    assert sched.on_trial_result(None, trial, result("B", 4)) == STOP
    assert sched.on_trial_result(None, trial, result("B", 5)) == STOP


def test_first_trial_at_a_rung_continues_and_is_recorded():
    sched = scheduler()
    assert drive(sched, ["C"]) == {"C": CONTINUE}
    assert [t for t, _ in sched.rung_records(0)] == ["C"]
    np.testing.assert_array_equal(sched.rung_records(0)[0][1], RUNG["C"])
    assert sched.rung_records(1) == []


def test_result_is_recorded_once_per_rung_and_only_at_the_highest_reached():
    sched = scheduler(max_t=100)  # rungs 1, 2, 4, 8, 16, 32, 64
    trial = fake_trial("A")
    sched.on_trial_add(None, trial)
    sched.on_trial_result(None, trial, result("A", 1))
    sched.on_trial_result(None, trial, result("A", 1))  # a repeated result: no second record
    sched.on_trial_result(None, trial, result("A", 5))  # jumps past 2 and 4: recorded at 4 only
    sched.on_trial_result(None, trial, result("A", 6))  # between rungs: nothing new
    counts = [len(sched.rung_records(i)) for i in range(len(sched.milestones))]
    assert counts == [1, 0, 1, 0, 0, 0, 0]


def test_dominated_trial_stops_at_the_second_rung_too():
    sched = scheduler(max_t=8)  # rungs 1, 2, 4
    for trial_id in ["B", "C"]:
        sched.on_trial_add(None, fake_trial(trial_id))
    assert sched.on_trial_result(None, fake_trial("B"), result("B", 2)) == CONTINUE
    assert sched.on_trial_result(None, fake_trial("C"), result("C", 2)) == STOP
    assert "num_stopped=1" in sched.debug_string()


def test_missing_objective_names_the_key_and_the_keys_present():
    sched = scheduler()
    trial = fake_trial("A")
    sched.on_trial_add(None, trial)
    bad = {"training_iteration": 1, "val/miou": 0.5, "train/loss": 0.1, "config/lr": 0.1}
    with pytest.raises(UserError, match="no objective 'cost/hours'") as error:
        sched.on_trial_result(None, trial, bad)
    assert "['train/loss', 'training_iteration', 'val/miou']" in str(error.value)


def test_missing_time_attr_and_non_numeric_objective_are_errors():
    sched = scheduler(time_attr="epoch")
    trial = fake_trial("A")
    sched.on_trial_add(None, trial)
    with pytest.raises(UserError, match="no 'epoch'"):
        sched.on_trial_result(None, trial, result("A", 1))
    with pytest.raises(UserError, match="must be a number, got 'high'"):
        sched.on_trial_result(None, trial, {"epoch": 1, "val/miou": "high", "cost/hours": 1.0})


def test_result_without_reported_metrics_continues():
    # what Tune passes when a trial returns without ever reporting: only auto-filled keys
    sched = scheduler()
    trial = fake_trial("A")
    sched.on_trial_add(None, trial)
    auto_only = {"training_iteration": 1, "done": True, "trial_id": "A", "config/lr": 0.1}
    assert sched.on_trial_result(None, trial, auto_only) == CONTINUE


def test_nan_objective_is_recorded_last():
    sched = scheduler()
    drive(sched, ["B"])
    trial = fake_trial("N")
    sched.on_trial_add(None, trial)
    nan_result = {"training_iteration": 1, "val/miou": float("nan"), "cost/hours": 0.1}
    assert sched.on_trial_result(None, trial, nan_result) == STOP


def test_on_trial_complete_records_and_forgets_the_trial():
    sched = scheduler()
    trial = fake_trial("A")
    sched.on_trial_add(None, trial)
    sched.on_trial_complete(None, trial, result("A", 2))  # e.g. ended by a stopper
    assert [t for t, _ in sched.rung_records(1)] == ["A"]
    sched.on_trial_complete(None, fake_trial("Z"), {})  # unknown trial, empty result: no error
    sched.on_trial_remove(None, fake_trial("Y"))
    sched.on_trial_error(None, fake_trial("X"))


def test_set_search_properties_accepts_and_ignores_tune_config_metric():
    sched = scheduler()
    assert sched.set_search_properties("val/miou", "max")
    assert sched.set_search_properties(None, None)
    assert sched.metric is None  # so Tune's strict metric check asks nothing of this scheduler


def test_choose_trial_to_run_is_fifo():
    class Controller:
        def get_trials(self):
            return trials

    trials = [fake_trial("a"), fake_trial("b")]
    trials[0].status = Trial.RUNNING
    assert scheduler().choose_trial_to_run(Controller()) is trials[1]


def test_save_and_restore(tmp_path):
    sched = scheduler()
    drive(sched, ["B", "C"])
    sched.save(str(tmp_path / "sched.pkl"))
    restored = scheduler(max_t=50)
    restored.restore(str(tmp_path / "sched.pkl"))
    assert restored.milestones == (1, 2)
    assert [t for t, _ in restored.rung_records(0)] == ["B", "C"]
    assert restored.debug_string() == sched.debug_string()


def test_debug_string():
    sched = scheduler()
    drive(sched, ["B", "C", "D", "A"])
    text = sched.debug_string()
    assert text.startswith("Using ParetoASHA (max val/miou, min cost/hours): num_stopped=1")
    assert "Rung 1: 4 recorded, 3 on the front" in text


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(objectives={}), "objectives"),
        (dict(objectives=["val/miou"]), "objectives"),
        (dict(objectives={"val/miou": "maximise"}), r"objectives\['val/miou'\]"),
        (dict(grace_period=0), "grace_period must be >= 1"),
        (dict(max_t=2, grace_period=3), r"max_t must be >= grace_period \(3\), got 2"),
        (dict(reduction_factor=1), "reduction_factor must be > 1"),
        (dict(reduction_factor="3"), "reduction_factor must be a finite number"),
        (dict(time_attr=""), "time_attr"),
    ],
)
def test_constructor_validates(overrides, field):
    with pytest.raises(UserError, match=field):
        scheduler(**overrides)


# --- brackets -----------------------------------------------------------------------------------


def test_brackets_deal_trials_in_turn_and_skip_their_first_rungs():
    sched = scheduler(max_t=8, brackets=3)  # rungs 1, 2, 4; bracket 1 starts at 2, bracket 2 at 4
    order = ["B", "C", "D", "A", "X"]
    for trial_id in order:
        sched.on_trial_add(None, fake_trial(trial_id))
    assert [sched.bracket_of(t) for t in order] == [0, 1, 2, 0, 1]
    # C is dominated by B, but C sits in bracket 1 and has no rung at 1: no record, it continues
    assert sched.on_trial_result(None, fake_trial("B"), result("B", 1)) == CONTINUE
    assert sched.on_trial_result(None, fake_trial("C"), result("C", 1)) == CONTINUE
    assert [t for t, _ in sched.rung_records(0, 0)] == ["B"]
    assert sched.rung_records(0, 1) == []
    # at 2 C is the first record of bracket 1's first rung; bracket 0's rung 2 is another rung
    assert sched.on_trial_result(None, fake_trial("C"), result("C", 2)) == CONTINUE
    assert [t for t, _ in sched.rung_records(1, 1)] == ["C"]
    assert sched.rung_records(1, 0) == []
    # D (bracket 2) first meets a rung at 4
    assert sched.on_trial_result(None, fake_trial("D"), result("D", 2)) == CONTINUE
    assert sched.on_trial_result(None, fake_trial("D"), result("D", 4)) == CONTINUE
    assert [t for t, _ in sched.rung_records(2, 2)] == ["D"]


def test_a_trial_is_compared_only_within_its_bracket():
    one = scheduler(max_t=4, brackets=1)
    two = scheduler(max_t=4, brackets=2)  # rungs 1, 2: bracket 1 first compares at 2
    order = ["B", "A", "C"]  # with two brackets: B, C in bracket 0, A in bracket 1
    assert drive(one, order, iteration=2) == {"B": CONTINUE, "A": CONTINUE, "C": STOP}
    assert drive(two, order, iteration=2) == {"B": CONTINUE, "A": CONTINUE, "C": STOP}
    # at rung 1 only bracket 0 compares: C (dominated by B) stops there, A is not judged yet
    three = scheduler(max_t=4, brackets=2)
    assert drive(three, ["B", "A", "C"], iteration=1) == {"B": CONTINUE, "A": CONTINUE, "C": STOP}
    assert [t for t, _ in three.rung_records(0, 0)] == ["B", "C"]
    # a dominated trial alone in its bracket continues: C second, in bracket 1
    four = scheduler(max_t=4, brackets=2)
    assert drive(four, ["B", "C"], iteration=2) == {"B": CONTINUE, "C": CONTINUE}


def test_brackets_are_checked():
    with pytest.raises(UserError, match=r"brackets must be a whole number from 1 to 3 \(one more than the rungs \[1, 2\] below max_t\), got 4"):
        scheduler(brackets=4)
    for bad in (0, 1.5, True):
        with pytest.raises(UserError, match="brackets must be a whole number"):
            scheduler(brackets=bad)
    assert scheduler(brackets=3).brackets == 3


def test_restore_state_saved_before_brackets(tmp_path):
    import pickle

    sched = scheduler()
    drive(sched, ["B", "C"])
    old = dict(sched.__dict__)
    for key in ("_brackets", "_bracket"):
        del old[key]
    old["_records"] = old["_records"][0]  # the one list of rungs, as saved then
    path = tmp_path / "old.pkl"
    path.write_bytes(pickle.dumps(old))
    restored = scheduler(brackets=2)
    restored.restore(str(path))
    assert restored.brackets == 1
    assert [t for t, _ in restored.rung_records(0)] == ["B", "C"]
    assert restored.debug_string() == sched.debug_string()
    restored.on_trial_add(None, fake_trial("D"))
    assert restored.on_trial_result(None, fake_trial("D"), result("D", 1)) == CONTINUE


def test_debug_string_names_the_brackets():
    sched = scheduler(max_t=4, brackets=2)
    drive(sched, ["B", "A", "C"], iteration=2)
    assert sched.debug_string().splitlines()[1:] == [
        "Bracket 0, rung 1: 0 recorded, 0 on the front",
        "Bracket 0, rung 2: 2 recorded, 1 on the front",
        "Bracket 1, rung 2: 1 recorded, 1 on the front",
    ]


# --- a real Tuner run ---------------------------------------------------------------------------

# six trials; index 0 best on both objectives, then each worse on both: the later ones are
# dominated by the earlier ones, so some must stop at rung 1 or 2
TABLE = [(0.9 - 0.1 * i, 1.0 + i) for i in range(6)]


def _trainable(config):
    from ray import tune

    miou, hours = TABLE[config["i"]]
    for step in range(4):
        tune.report({"val/miou": miou * (step + 1) / 4, "cost/hours": hours})


def _fit(tmp_path, name: str, sched: ParetoASHA):
    """The six TABLE trials through a real Tuner with ``sched``."""
    import ray
    from ray import tune

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            _trainable,
            param_space={"i": tune.grid_search(list(range(6)))},
            # single-metric, for the result grid; the scheduler ignores it
            tune_config=tune.TuneConfig(metric="val/miou", mode="max", scheduler=sched),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name=name, verbose=0),
        )
        results = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    assert results.num_errors == 0 and len(results) == 6
    return {r.config["i"]: r.metrics["training_iteration"] for r in results}


@pytest.mark.slow
def test_tuner_runs_with_pareto_asha(tmp_path):
    reached = _fit(tmp_path, "pareto_asha", scheduler(max_t=4, grace_period=1, reduction_factor=2))
    assert max(reached.values()) == 4  # some trial ran to max_t
    assert min(reached.values()) < 4  # and some were stopped at a rung


@pytest.mark.slow
def test_tuner_runs_with_brackets(tmp_path):
    reached = _fit(tmp_path, "pareto_asha_brackets", scheduler(max_t=4, grace_period=1, reduction_factor=2, brackets=2))
    # trials 1, 3, 5 (added second, fourth, sixth) are in bracket 1: none is judged before iteration 2
    assert all(reached[i] >= 2 for i in (1, 3, 5))
    assert max(reached.values()) == 4 and min(reached.values()) < 4
