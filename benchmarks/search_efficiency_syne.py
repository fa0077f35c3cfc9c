"""Syne Tune's MO-ASHA replayed on the recorded curve table, on Syne Tune's own simulator.

The table becomes a ``BlackboxTabular`` (one row per configuration, the epoch as fidelity, the
recorded epoch seconds as elapsed time); ``UserBlackboxBackend`` plays it back in simulated time and
``MOASHA`` (random configurations, non-dominated sorting at each rung) decides which trials go on,
with the same grace period, reduction factor, number of workers and compute budget as the platform's
ParetoASHA runs. Syne Tune minimises every metric, so it ranks on -mIoU and cost.

Syne Tune is a benchmark extra (``pip install 'labelmix[benchmarks]'``), never a runtime dependency.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import tempfile
from typing import Mapping

import numpy as np

from tabular_hpo import Curve, Event, config_key

NEG_MIOU = "neg_val_miou"  # -val/miou: MOASHA minimises all its metrics


def unavailable() -> str | None:
    """Why Syne Tune cannot run here, or None."""
    try:
        import syne_tune  # noqa: F401
        from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA  # noqa: F401
    except ImportError as exc:
        return f"syne-tune is not installed ({exc}); pip install 'labelmix[benchmarks]'"
    return None


def blackbox(curves: Mapping[str, Curve], recorded: Mapping):
    """The curve table as a Syne Tune BlackboxTabular over the searched names' recorded options."""
    import pandas as pd
    from syne_tune.blackbox_repository.blackbox_tabular import BlackboxTabular
    from syne_tune.config_space import choice, randint

    from labelmix.platform.spec import parse_spec
    from labelmix.platform.space import options

    spec = parse_spec(dict(recorded))
    space = {axis.name: choice(options(axis)) for axis in spec.searched}
    keys = sorted(curves)
    hyperparameters = pd.DataFrame([json.loads(key) for key in keys])[list(space)]
    epochs = len(curves[keys[0]].miou)
    values = np.stack([np.stack([curves[k].miou, np.full(epochs, curves[k].cost), np.cumsum(curves[k].seconds),
                                 -curves[k].miou], axis=1) for k in keys])  # configs x epochs x 4
    return BlackboxTabular(
        hyperparameters=hyperparameters, configuration_space=space, fidelity_space={"epoch": randint(1, epochs)},
        objectives_evaluations=values[:, None, :, :],  # configs x seeds(1) x epochs x objectives
        objectives_names=["val/miou", "cost/hours", "elapsed_time", NEG_MIOU],
    ), space, epochs


def replay_moasha(curves: Mapping[str, Curve], recorded: Mapping, seed: int, budget: int, workers: int,
                  grace_period: int, reduction_factor: float) -> tuple[list[Event], dict[str, str]]:
    """MO-ASHA's reported epochs (cut at the budget) and its trials' configurations."""
    from syne_tune import StoppingCriterion, Tuner
    from syne_tune.backend.simulator_backend.simulator_callback import SimulatorCallback
    from syne_tune.blackbox_repository.simulated_tabular_backend import UserBlackboxBackend
    from syne_tune.optimizer.schedulers.multiobjective.moasha import MOASHA

    table, space, epochs = blackbox(curves, recorded)
    events: list[Event] = []
    configs: dict[str, str] = {}

    class Ledger(UserBlackboxBackend):
        """Counts every epoch the simulated workers ran, in simulated-time order: also those of a trial
        stopped in the same poll, which the tuner drops before its callbacks see them (and counts
        towards max_num_evaluations all the same)."""

        def fetch_status_results(self, trial_ids):
            status, results = super().fetch_status_results(trial_ids)
            for trial_id, result in results:
                events.append((str(trial_id), float(result["cost/hours"]), float(result["val/miou"])))
                configs.setdefault(str(trial_id), config_key(self._trial_dict[trial_id].config))
            return status, results

    random.seed(seed)
    np.random.seed(seed)  # MOASHA samples its configurations and brackets from numpy's global generator
    with tempfile.TemporaryDirectory() as folder:
        os.environ["SYNETUNE_FOLDER"] = folder
        tuner = Tuner(
            # the tuner polls every 0.1 simulated seconds (default 5; an epoch took 1.8-4.6 s): MO-ASHA
            # decides on each epoch as it ends, as Tune's schedulers do
            trial_backend=Ledger(blackbox=table, elapsed_time_attr="elapsed_time", tuner_sleep_time=0.1),
            scheduler=MOASHA(space, metrics=[NEG_MIOU, "cost/hours"], do_minimize=True, time_attr="epoch",
                             max_t=epochs, grace_period=grace_period, reduction_factor=reduction_factor,
                             random_seed=seed),
            stop_criterion=StoppingCriterion(max_num_evaluations=budget),
            n_workers=workers, sleep_time=0, callbacks=[SimulatorCallback()], results_update_interval=3600,
            print_update_interval=3600, save_tuner=False, tuner_name=f"moasha-{seed}", suffix_tuner_name=False,
        )
        logging.getLogger("syne_tune").setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()):  # its tuner prints every trial's start and end
            tuner.run()
    return events[:budget], configs
