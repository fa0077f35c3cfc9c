"""The study's search in Tune: Optuna's sampler, the reference first, and a copy of the searcher's
saved state that survives a killed driver.

Tune saves its searcher (``search_gen_state-*.json``, ``searcher-state-*.pkl``) into a staging
folder and copies that folder to the study folder in the background, file by file: a driver killed
during the copy leaves an experiment state whose searcher is missing or cut short, and Tune then
resumes with an empty OptunaSearch (CI saw ``OptunaSearch ... no search space has been defined``).
:class:`StudyGenerator` writes each saved searcher state a second time, as one file written at once
(``searcher-backup.pkl``), straight into the study folder; :func:`put_back_saved_searcher` restores
Tune's files from it before a study resumes.

:class:`NoRepeats` keeps a search from running one configuration twice: a study's trial with the
same config (seed included) gives the same curve, so a repeat is compute spent on nothing (pymoo's
NSGA-II drops duplicates by default for the same reason; on the tabular benchmark Optuna's NSGA-II
and random search re-ran 6 to 9 of 28 configurations per search, docs/RESULTS.md).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import logging
import pickle
import threading
from pathlib import Path
from typing import Optional

import optuna
from ray.tune.search import ConcurrencyLimiter, SearchGenerator, Searcher
from ray.tune.search.util import _set_search_properties_backwards_compatible

from labelmix.errors import UserError
from labelmix.platform.space import distinct_points, optuna_grid, reference_point
from labelmix.platform.spec import StudySpec
from labelmix.platform.storage import write_atomically

# Tune's names for the two files of a saved searcher, {} its session (OptunaSearch keeps Searcher's name)
SAVED_FILES = (SearchGenerator.CKPT_FILE_TMPL, Searcher.CKPT_FILE_TMPL)
SAVED_STATE = tuple(template.format("*") for template in SAVED_FILES)
BACKUP_FILE = "searcher-backup.pkl"
# suggestions in a row that only repeat configurations already run before the search is called done
REPEAT_ATTEMPTS = 200

logger = logging.getLogger(__name__)


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
    searcher = NoRepeats(OptunaSearch(metric=metrics, mode=modes, sampler=sampler), distinct_points(spec))
    if spec.reference_case is None:
        return searcher
    from labelmix.platform.reference import ReferenceFirst

    return ReferenceFirst(searcher, reference_point(spec))


def config_key(config: dict) -> str:
    """One string per configuration: its sampled values, in name order."""
    return json.dumps(config, sort_keys=True, default=str)


class NoRepeats(Searcher):
    """Wraps a searcher so that no configuration runs twice.

    When the wrapped searcher suggests a configuration already given to a trial, that suggestion
    runs nothing: the wrapped searcher is told the earlier trial's last result at once (or, while
    that trial still runs, told nothing learnt: a pruned trial) and asked again, under an id of its
    own. After ``REPEAT_ATTEMPTS`` repeats in a row, or once all ``size`` configurations of a
    finite space (``space.distinct_points``) have run, the search is done (``Searcher.FINISHED``).
    Its record goes into Tune's saved searcher state, so a resumed study does not repeat either.
    """

    def __init__(self, searcher: Searcher, size: int | None, attempts: int = REPEAT_ATTEMPTS) -> None:
        self.searcher = searcher
        self.size, self.attempts = size, attempts
        self.known: dict[str, dict | None] = {}  # config key -> the objectives of its trial's last result
        self.trials: dict[str, tuple[str, str]] = {}  # running trial id -> (config key, the wrapped searcher's id)
        self.repeats = 0  # suggestions that were repeats, over the search
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], config: dict, **spec) -> bool:
        return _set_search_properties_backwards_compatible(self.searcher.set_search_properties, metric, mode,
                                                           config, **spec)

    def suggest(self, trial_id: str) -> Optional[dict]:
        for attempt in range(self.attempts):
            if self.size is not None and len(self.known) >= self.size:
                logger.info("every one of the %d configurations of the search space has run: the search is done",
                            self.size)
                return Searcher.FINISHED
            inner_id = trial_id if attempt == 0 else f"{trial_id}~repeat{attempt}"
            config = self.searcher.suggest(inner_id)
            if config is None or config == Searcher.FINISHED:
                return config
            key = config_key(config)
            if key not in self.known:
                self.known[key] = None
                self.trials[trial_id] = (key, inner_id)
                return config
            self.repeats += 1
            self.searcher.on_trial_complete(inner_id, result=self.known[key])
        logger.warning("the searcher suggested only configurations already run, %d times in a row: the search is done",
                       self.attempts)
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.trials:
            self.searcher.on_trial_result(self.trials[trial_id][1], result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id not in self.trials:
            return
        key, inner_id = self.trials.pop(trial_id)
        if result and not error:
            names = self.metric if isinstance(self.metric, list) else [self.metric]
            self.known[key] = {name: result[name] for name in names if name in result}
        self.searcher.on_trial_complete(inner_id, result=result, error=error)

    # Tune saves the innermost searcher with save(); the wrappers' get_state() goes beside it.
    def get_state(self) -> dict:
        return copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "searcher"})

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


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
