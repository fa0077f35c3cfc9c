"""Every built-in study spec loads, validates, and shrinks to a valid smoke spec."""

from __future__ import annotations

import pytest

from labelmix.platform.space import trial_config, tune_param_space
from labelmix.platform.spec import load_spec, smoke_spec
from labelmix.search_spaces import builtin_specs, describe_builtins
from labelmix.trainables.config import load_config

NAMES = sorted(builtin_specs())


def test_the_four_built_ins_are_there():
    assert {"quickstart", "paper-ablation", "frontier", "teacher"} <= set(NAMES)
    descriptions = dict(describe_builtins())
    assert set(descriptions) == set(NAMES)
    assert all(descriptions[name] and "\n" not in descriptions[name] for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_builtin_spec_loads_and_validates(name):
    spec, source = load_spec(name)
    assert spec.name == name  # the study folder and the built-in name agree
    assert source == builtin_specs()[name].read_text()
    assert tune_param_space(spec)
    lowest = {axis.name: "0" if axis.encoded else axis.values[-1] for axis in spec.searched}
    load_config(trial_config(spec, lowest))


@pytest.mark.parametrize("name", NAMES)
def test_builtin_smoke_spec_validates_and_is_small(name):
    spec, _ = load_spec(name)
    smoke = smoke_spec(spec)
    assert smoke.search.trials <= spec.smoke.trials
    assert smoke.search.concurrency <= smoke.search.trials
    assert smoke.scheduler.max_epochs == smoke.fixed["epochs"] == spec.smoke.epochs
    if smoke.dataset.synthetic is not None:
        assert smoke.dataset.synthetic.volumes == spec.smoke.volumes


def test_builtin_shapes():
    quick, _ = load_spec("quickstart")
    assert len(quick.objectives) == 2 and quick.search.algorithm == "tpe" and quick.search.concurrency == 2
    # Sized to segment in 3 minutes on 2 cores: 800 steps of a small U-Net at 64x64, the full-mask reference beside it.
    assert quick.fixed["epochs"] * quick.fixed["steps_per_epoch"] == 800 and quick.fixed["unet_base_channels"] == 8
    assert quick.reference_case == {"name": "all masks", "mix": {"full": 1.0, "box": 0.0, "global": 0.0, "none": 0.0}}
    assert quick.total_trials == 7
    ablation, _ = load_spec("paper-ablation")
    assert ablation.search.algorithm == "grid" and ablation.scheduler.type == "none"
    frontier, _ = load_spec("frontier")
    assert frontier.search.algorithm == "nsga2" and frontier.scheduler.type == "pareto_asha"
    teacher, _ = load_spec("teacher")
    assert [o.metric for o in teacher.objectives] == ["val/miou"] and teacher.scheduler.type == "asha"
    assert teacher.fixed["mix"] == {"full": 0.1, "box": 0.3, "global": 0.3, "none": 0.3}
