"""The study's search generator keeps a whole copy of each searcher state Tune saves, and a resume puts
Tune's files back from it when the copy Tune made was cut short or never made."""

import pickle

import pytest

from labelmix.errors import UserError
from labelmix.platform.searcher import (
    BACKUP_FILE, PicklableNSGAIISampler, StudyGenerator, make_searcher, put_back_saved_searcher,
)
from labelmix.platform.space import tune_param_space
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
