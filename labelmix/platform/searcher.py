"""The study's search in Tune: Optuna's sampler, the reference first, and a copy of the searcher's
saved state that survives a killed driver.

Tune saves its searcher (``search_gen_state-*.json``, ``searcher-state-*.pkl``) into a staging
folder and copies that folder to the study folder in the background, file by file: a driver killed
during the copy leaves an experiment state whose searcher is missing or cut short, and Tune then
resumes with an empty OptunaSearch (CI saw ``OptunaSearch ... no search space has been defined``).
:class:`StudyGenerator` writes each saved searcher state a second time, as one file written at once
(``searcher-backup.pkl``), straight into the study folder; :func:`put_back_saved_searcher` restores
Tune's files from it before a study resumes.
"""

from __future__ import annotations

import fnmatch
import pickle
import threading
from pathlib import Path

import optuna
from ray.tune.search import ConcurrencyLimiter, SearchGenerator, Searcher

from labelmix.errors import UserError
from labelmix.platform.space import optuna_grid, reference_point
from labelmix.platform.spec import StudySpec
from labelmix.platform.storage import write_atomically

# Tune's names for the two files of a saved searcher, {} its session (OptunaSearch keeps Searcher's name)
SAVED_FILES = (SearchGenerator.CKPT_FILE_TMPL, Searcher.CKPT_FILE_TMPL)
SAVED_STATE = tuple(template.format("*") for template in SAVED_FILES)
BACKUP_FILE = "searcher-backup.pkl"


def objective_lists(spec: StudySpec) -> tuple[list[str], list[str]]:
    return [o.metric for o in spec.objectives], [o.mode for o in spec.objectives]


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGAIISampler, picklable: from Optuna 5.1 its generation cache holds a
    ``threading.Lock``, and Tune pickles the searcher when a study starts and at every save (a
    study with ``algorithm: nsga2`` failed with "cannot pickle '_thread.lock' object"). The lock
    is left out of the pickle and made anew on load."""

    def __getstate__(self):
        state = self.__dict__.copy()
        lock = state.pop("_thread_lock", None)
        state["_had_thread_lock"] = lock is not None
        return state

    def __setstate__(self, state):
        state = dict(state)
        if state.pop("_had_thread_lock", False):
            state["_thread_lock"] = threading.Lock()
        self.__dict__.update(state)


def make_searcher(spec: StudySpec):
    """OptunaSearch with the spec's sampler; with a reference, wrapped so that it comes first."""
    from ray.tune.search.optuna import OptunaSearch

    algorithm, seed = spec.search.algorithm, spec.search.seed
    if algorithm == "tpe":
        startup = spec.search.startup_trials
        sampler = optuna.samplers.TPESampler(seed=seed, **({"n_startup_trials": startup} if startup is not None else {}))
    elif algorithm == "nsga2":
        # 16: on the tabular benchmark (docs/RESULTS.md) 4 repeated configurations (19 distinct of 28)
        # and reached 95% of the grid's hypervolume later (median 83% of its compute against 50%)
        population = spec.search.population_size or max(16, spec.search.concurrency * 2)
        sampler = PicklableNSGAIISampler(seed=seed, population_size=population)
    elif algorithm == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:  # grid
        sampler = optuna.samplers.GridSampler(optuna_grid(spec), seed=seed)
    metrics, modes = objective_lists(spec)
    if len(metrics) == 1:
        metrics, modes = metrics[0], modes[0]
    searcher = OptunaSearch(metric=metrics, mode=modes, sampler=sampler)
    if spec.reference_case is None:
        return searcher
    from labelmix.platform.reference import ReferenceFirst

    return ReferenceFirst(searcher, reference_point(spec))


class StudyGenerator(SearchGenerator):
    """Tune's search generator, keeping a whole copy of every searcher state Tune saves in ``folder``
    (a ``storage.StudyFolder``). It carries the study's concurrency limit (Tune adds its own only
    around a bare searcher)."""

    def __init__(self, searcher, concurrency: int, folder) -> None:
        super().__init__(ConcurrencyLimiter(searcher, max_concurrent=concurrency))
        self.folder = folder

    def save_to_dir(self, dirpath: str, session_str: str) -> None:
        super().save_to_dir(dirpath, session_str)
        names = [template.format(session_str) for template in SAVED_FILES]
        backup = {name: (Path(dirpath) / name).read_bytes() for name in names if (Path(dirpath) / name).is_file()}
        write_atomically(self.folder.local / BACKUP_FILE, pickle.dumps(backup))
        self.folder.upload(BACKUP_FILE)


def saved_searcher_readable(folder) -> bool:
    """Whether Tune will restore the searcher it saved: the newest of each of its files is there and
    unpickles. An unreadable one is moved aside (Tune would fail on it) and the answer is False."""
    import ray.cloudpickle as cloudpickle

    for pattern in SAVED_STATE:
        names = folder.matching(pattern)
        if not names:
            return False
        try:
            cloudpickle.loads(folder.read_bytes(names[0]))
        except Exception:  # a file cut short by a killed copy: any unpickling error
            folder.move_aside(names[0], ".unreadable")
            return False
    return True


def put_back_saved_searcher(folder) -> list[str]:
    """Before a resume: when Tune's saved searcher is missing or unreadable, write its files again
    from the study's backup; returns the names written (none when Tune's own files are fine)."""
    if saved_searcher_readable(folder):
        return []
    folder.download(BACKUP_FILE)
    try:
        backup = pickle.loads((folder.local / BACKUP_FILE).read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError):
        backup = {}
    if not all(any(fnmatch.fnmatch(name, pattern) for name in backup) for pattern in SAVED_STATE):
        raise UserError(f"{folder.location}: Tune's saved searcher state is missing or unreadable and the study "
                        f"has no {BACKUP_FILE} to restore it from (a study started before labelmix kept one); its "
                        "finished trials are in trials.parquet, but the search cannot be resumed")
    for name, data in backup.items():
        write_atomically(folder.local / name, data)
        folder.upload(name)
    return sorted(backup)
