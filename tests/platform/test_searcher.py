"""The study's search generator keeps a whole copy of each searcher state Tune saves, and a resume puts
Tune's files back from it when the copy Tune made was cut short or never made."""

import pickle

import pytest

from labelmix.errors import UserError
from ray.tune.search import Searcher

from labelmix.platform.searcher import (
    BACKUP_FILE, NoRepeats, PicklableNSGAIISampler, StudyGenerator, make_searcher, put_back_saved_searcher,
)
from labelmix.platform.space import distinct_points, tune_param_space
from labelmix.platform.spec import parse_spec
from labelmix.platform.storage import StudyFolder
from tests.platform.test_reference import SPEC


def _generator(tmp_path):
    spec = parse_spec(SPEC)
    folder = StudyFolder(tmp_path / "study")
    folder.local.mkdir()
    generator = StudyGenerator(make_searcher(spec), spec.search.concurrency, folder)
    generator.set_search_properties(None, None, tune_param_space(spec))
    return generator, folder


def test_each_saved_state_is_also_written_whole_into_the_study_folder(tmp_path):
    generator, folder = _generator(tmp_path)
    assert generator.searcher.max_concurrent == 1  # the spec's concurrency
    generator.searcher.suggest("a")  # the reference
    staging = tmp_path / "staging"
    staging.mkdir()
    generator.save_to_dir(str(staging), "s1")
    names = sorted(p.name for p in staging.iterdir())
    assert names == ["search_gen_state-s1.json", "searcher-state-s1.pkl"]
    backup = pickle.loads((folder.local / BACKUP_FILE).read_bytes())
    assert backup == {name: (staging / name).read_bytes() for name in names}


@pytest.mark.parametrize("damage", ["missing", "cut short"])
def test_a_resume_puts_back_the_saved_searcher_from_the_backup(tmp_path, damage):
    generator, folder = _generator(tmp_path)
    generator.save_to_dir(str(folder.local), "s1")  # local storage: the study folder as Tune's copy of it
    saved = {name: (folder.local / name).read_bytes() for name in ("search_gen_state-s1.json", "searcher-state-s1.pkl")}
    assert put_back_saved_searcher(folder) == []  # Tune's own files are fine
    if damage == "missing":
        (folder.local / "searcher-state-s1.pkl").unlink()
    else:
        (folder.local / "searcher-state-s1.pkl").write_bytes(saved["searcher-state-s1.pkl"][:100])
    assert put_back_saved_searcher(folder) == sorted(saved)
    assert {name: (folder.local / name).read_bytes() for name in saved} == saved
    if damage == "cut short":
        assert (folder.local / "searcher-state-s1.pkl.unreadable").is_file()


def test_a_lost_searcher_without_a_backup_is_one_clear_error(tmp_path):
    generator, folder = _generator(tmp_path)
    generator.save_to_dir(str(folder.local), "s1")
    (folder.local / BACKUP_FILE).unlink()
    (folder.local / "search_gen_state-s1.json").unlink()
    with pytest.raises(UserError, match="has no searcher-backup.pkl to restore it from"):
        put_back_saved_searcher(folder)


def test_the_nsga2_sampler_survives_a_pickle_round_trip_and_keeps_sampling():
    """Tune pickles the searcher at the start and at every save; Optuna 5.1's NSGA-II sampler holds
    a thread lock that plain pickling refuses."""
    import optuna
    import ray.cloudpickle as cloudpickle

    sampler = PicklableNSGAIISampler(seed=3, population_size=4)
    copy = cloudpickle.loads(cloudpickle.dumps(pickle.loads(pickle.dumps(sampler))))
    assert isinstance(copy, optuna.samplers.NSGAIISampler)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=copy)
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=10)
    assert len(study.trials) == 10
    assert hasattr(copy, "_thread_lock") == hasattr(optuna.samplers.NSGAIISampler(), "_thread_lock")


class _Scripted:
    """A searcher that suggests a fixed sequence of configurations and records what it is told."""

    metric, mode = ["val/miou", "cost/hours"], ["max", "min"]

    def __init__(self, configs):
        self.configs, self.asked, self.told = list(configs), [], []

    def suggest(self, trial_id):
        self.asked.append(trial_id)
        return self.configs.pop(0) if self.configs else Searcher.FINISHED

    def on_trial_result(self, trial_id, result):
        pass

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told.append((trial_id, result, error))


def test_no_repeats_asks_again_and_tells_the_searcher_what_it_already_knows():
    a, b, c = {"x": "a"}, {"x": "b"}, {"x": "c"}
    inner = _Scripted([a, a, b, a, b, c])
    searcher = NoRepeats(inner, size=None)
    assert searcher.suggest("t1") == a
    assert searcher.suggest("t2") == b  # a again: t1 still runs, so the repeat is told as pruned
    assert inner.asked == ["t1", "t2", "t2~repeat1"] and inner.told == [("t2", None, False)]
    searcher.on_trial_complete("t1", {"val/miou": 0.5, "cost/hours": 2.0, "epoch": 3})
    assert inner.told[-1] == ("t1", {"val/miou": 0.5, "cost/hours": 2.0, "epoch": 3}, False)
    assert searcher.suggest("t3") == c  # a (known: its objectives told at once), b (running: pruned), then c
    assert inner.told[-2:] == [("t3", {"val/miou": 0.5, "cost/hours": 2.0}, False), ("t3~repeat1", None, False)]
    searcher.on_trial_complete("t2", {"val/miou": 0.1, "cost/hours": 1.0})
    assert inner.told[-1] == ("t2~repeat1", {"val/miou": 0.1, "cost/hours": 1.0}, False)  # under the id b was asked with
    assert searcher.repeats == 3


def test_no_repeats_ends_the_search_when_the_space_is_used_up_or_only_repeats_come():
    a, b = {"x": "a"}, {"x": "b"}
    searcher = NoRepeats(_Scripted([a, b, a]), size=2)
    assert searcher.suggest("t1") == a and searcher.suggest("t2") == b
    assert searcher.suggest("t3") == Searcher.FINISHED  # both configurations have run: nothing is asked
    assert searcher.searcher.asked == ["t1", "t2"]
    stuck = NoRepeats(_Scripted([a] * 10), size=None, attempts=4)
    assert stuck.suggest("t1") == a
    assert stuck.suggest("t2") == Searcher.FINISHED and stuck.searcher.asked == ["t1", "t2", "t2~repeat1",
                                                                                  "t2~repeat2", "t2~repeat3"]


def test_no_repeats_keeps_its_record_in_the_saved_state():
    a, b = {"x": "a"}, {"x": "b"}
    searcher = NoRepeats(_Scripted([a]), size=None)
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"val/miou": 0.5, "cost/hours": 2.0})
    resumed = NoRepeats(_Scripted([a, b]), size=None)
    resumed.set_state(searcher.get_state())
    assert resumed.suggest("t2") == b and resumed.repeats == 1


def _constant_trial(config):
    from ray import tune

    tune.report({"val/miou": 0.5 if config["ds_type"] == "none" else 0.6, "cost/hours": 1.0})


@pytest.mark.parametrize("algorithm", ["random", "nsga2"])
def test_a_search_through_tune_runs_each_configuration_of_a_finite_space_once(algorithm, local_ray, tmp_path):
    """Random search and NSGA-II asked for 12 trials of a 4-point space run 4 trials, all distinct."""
    from ray import tune

    spec = parse_spec({**SPEC, "reference": None, "space": {"ds_type": {"choice": ["none", "multi_label"]},
                                                            "lr": {"choice": [0.001, 0.01]}},
                       "search": {"algorithm": algorithm, "trials": 12, "concurrency": 1, "seed": 0}})
    assert distinct_points(spec) == 4
    results = tune.Tuner(
        _constant_trial, param_space=tune_param_space(spec),
        tune_config=tune.TuneConfig(search_alg=make_searcher(spec), num_samples=12),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    ).fit()
    configs = sorted((r.config["ds_type"], r.config["lr"]) for r in results)
    assert configs == [("multi_label", 0.001), ("multi_label", 0.01), ("none", 0.001), ("none", 0.01)]
