"""Spec search space -> Tune/Optuna distributions, and sampled points -> trial configs."""

from __future__ import annotations

import copy
import itertools

import pytest
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Uniform

from labelmix.errors import UserError
from labelmix.platform.space import grid_size, mix_of, optuna_grid, trial_config, tune_param_space
from labelmix.platform.spec import load_spec, parse_spec
from labelmix.trainables.config import load_config
from labelmix.trainables.data.annotations import AnnotationMix

BASE = {
    "name": "space-test",
    "dataset": {"synthetic": {"volumes": 4, "slices": 4, "height": 64, "width": 64, "seed": 3}},
    "cost": {"full_seconds": 100, "box_seconds": 5, "global_seconds": 2},
    "objectives": [{"metric": "val/miou"}, {"metric": "cost/hours"}],
    "space": {
        "mix": {"full": {"uniform": [0.02, 0.3]}, "box": {"uniform": [0, 1]}, "global": {"uniform": [0, 1]}, "none": 0},
        "ds_type": {"choice": ["none", "standard", "multi_label"]},
        "ds_depth": {"int": [0, 5]},
        "ema_decay": {"loguniform": [0.9, 0.999]},
        "decoder_channels": {"choice": [[64, 32, 16, 8, 4], [128, 64, 32, 16, 8]]},
    },
    "fixed": {"epochs": 2, "encoder": "resnet18", "batch_size": 4},
    "search": {"algorithm": "tpe", "trials": 4, "seed": 7},
}


def spec_of(**changes):
    data = copy.deepcopy(BASE)
    data.update(changes)
    return parse_spec(data)


def sampled_point(**overrides):
    point = {"mix.full": 0.2, "mix.box": 0.5, "mix.global": 0.3, "ds_type": "standard", "ds_depth": 2,
             "ema_decay": 0.99, "decoder_channels": "1"}
    point.update(overrides)
    return point


def test_param_space_types_and_bounds():
    space = tune_param_space(spec_of())
    assert set(space) == {"mix.full", "mix.box", "mix.global", "ds_type", "ds_depth", "ema_decay", "decoder_channels"}
    assert "mix.none" not in space and "epochs" not in space  # fixed values are merged at trial time
    assert isinstance(space["mix.full"], Float) and isinstance(space["mix.full"].get_sampler(), Uniform)
    assert (space["mix.full"].lower, space["mix.full"].upper) == (0.02, 0.3)
    assert isinstance(space["ema_decay"], Float) and isinstance(space["ema_decay"].get_sampler(), LogUniform)
    assert (space["ema_decay"].lower, space["ema_decay"].upper) == (0.9, 0.999)
    assert isinstance(space["ds_type"], Categorical)
    assert space["ds_type"].categories == ["none", "standard", "multi_label"]
    assert isinstance(space["ds_depth"], Integer)


def test_randint_upper_bound_is_inclusive():
    depth = tune_param_space(spec_of())["ds_depth"]
    assert (depth.lower, depth.upper) == (0, 6)  # tune.randint excludes upper: {int: [0, 5]} reaches 5
    samples = {depth.sample(random_state=seed) for seed in range(200)}
    assert samples == {0, 1, 2, 3, 4, 5}


def test_non_scalar_choice_is_sampled_as_index_strings_and_decoded():
    spec = spec_of()
    assert tune_param_space(spec)["decoder_channels"].categories == ["0", "1"]
    config = trial_config(spec, sampled_point(decoder_channels="1"))
    assert config["decoder_channels"] == [128, 64, 32, 16, 8]
    assert load_config(config).decoder_channels == (128, 64, 32, 16, 8)
    with pytest.raises(UserError, match="space.decoder_channels: expected an option index 0..1"):
        trial_config(spec, sampled_point(decoder_channels="2"))


def test_choice_of_complete_mixes():
    spec = spec_of(space={"mix": {"choice": [{"full": 1}, {"full": 0.06, "none": 0.94}]}, "ds_depth": {"int": [1, 3]}})
    assert tune_param_space(spec)["mix"].categories == ["0", "1"]
    config = trial_config(spec, {"mix": "1", "ds_depth": 3})
    assert config["mix"] == {"full": 0.06, "box": 0.0, "global": 0.0, "none": 0.94, "seed": 7}
    assert mix_of(config) == AnnotationMix(0.06, 0.0, 0.0, 0.94, seed=7)


def test_mix_weights_are_normalised_to_fractions():
    spec = spec_of(space={"mix": {"full": {"uniform": [0, 1]}, "box": {"uniform": [0, 1]}}, "lr": {"loguniform": [1e-4, 1e-2]}})
    config = trial_config(spec, {"mix.full": 1, "mix.box": 3, "lr": 1e-3})
    assert config["mix"] == {"full": 0.25, "box": 0.75, "global": 0.0, "none": 0.0, "seed": 7}  # seed: search.seed
    assert mix_of(config) == load_config(config).mix == AnnotationMix(0.25, 0.75, 0.0, 0.0, seed=7)


def test_fixed_zero_types_stay_zero_and_mix_seed_can_be_set():
    spec = spec_of(space={"mix": {"full": {"uniform": [0, 1]}, "box": 0, "global": 0.5, "seed": 11}, "lr": {"uniform": [1e-3, 1e-2]}})
    config = trial_config(spec, {"mix.full": 0.5, "lr": 0.005})
    assert config["mix"] == {"full": 0.5, "box": 0.0, "global": 0.5, "none": 0.0, "seed": 11}


def test_all_zero_mix_weights_raise():
    spec = spec_of(space={"mix": {"full": {"choice": [0, 1]}, "box": {"choice": [0, 1]}}})
    with pytest.raises(UserError, match="mix: the weights .* sum to 0"):
        trial_config(spec, {"mix.full": 0, "mix.box": 0})


def test_trial_config_passes_load_config_and_carries_the_spec_sections():
    spec = spec_of()
    config = trial_config(spec, sampled_point())
    loaded = load_config(config)
    assert loaded.ds_type == "standard" and loaded.ds_depth == 2 and loaded.ema_decay == 0.99
    assert loaded.epochs == 2 and loaded.batch_size == 4  # fixed
    assert loaded.dataset.synthetic.seed == 3 and loaded.cost.full_seconds == 100
    assert loaded.mix.seed == 7
    assert abs(sum(mix_of(config).fractions) - 1) < 1e-9


def test_trial_config_rejects_missing_and_unknown_values():
    spec = spec_of()
    point = sampled_point()
    del point["ds_type"]
    with pytest.raises(UserError, match="no value for the searched field space.ds_type"):
        trial_config(spec, point)
    with pytest.raises(UserError, match="not searched by the spec"):
        trial_config(spec, sampled_point(lr=0.1))


def test_fixed_mix_is_passed_through_with_missing_types_zero():
    spec = spec_of(space={"lr": {"uniform": [1e-3, 1e-2]}}, fixed={"mix": {"box": 0.5, "none": 0.5}})
    config = trial_config(spec, {"lr": 0.002})
    assert mix_of(config) == load_config(config).mix == AnnotationMix(0.0, 0.5, 0.0, 0.5, seed=7)
    assert mix_of(load_config(config)) == AnnotationMix(0.0, 0.5, 0.0, 0.5, seed=7)


def test_paper_ablation_grid():
    spec, _ = load_spec("paper-ablation")
    grid = optuna_grid(spec)
    assert grid == {"ds_type": ["none", "standard", "multi_label"], "ds_depth": [1, 3, 5], "mix": ["0", "1", "2"]}
    assert grid_size(spec) == 27
    space = tune_param_space(spec)
    assert all(isinstance(d, Categorical) for d in space.values())  # what OptunaSearch + GridSampler need
    assert tune_param_space(spec, grid_search=True)["ds_depth"] == {"grid_search": [1, 3, 5]}
    mixes = {tuple(sorted(mix_of(trial_config(spec, {"ds_type": "none", "ds_depth": 1, "mix": i})).as_dict().items()))
             for i in grid["mix"]}
    assert len(mixes) == 3
    with pytest.raises(UserError, match="search.algorithm: tpe is not grid"):
        optuna_grid(spec_of())


def test_optuna_search_walks_the_whole_grid():
    """The grid path end to end through OptunaSearch (no Ray started): 27 distinct, valid trials."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec, _ = load_spec("paper-ablation")
    searcher = OptunaSearch(
        space=OptunaSearch.convert_search_space(tune_param_space(spec)),
        sampler=optuna.samplers.GridSampler(optuna_grid(spec), seed=0),
        metric=["val/miou", "cost/hours"], mode=["max", "min"],
    )
    seen = set()
    for i in range(grid_size(spec)):
        config = searcher.suggest(f"t{i}")
        seen.add((config["ds_type"], config["ds_depth"], config["mix"]))
        load_config(trial_config(spec, config))
        searcher.on_trial_complete(f"t{i}", {"val/miou": 0.5, "cost/hours": 1.0})
    assert seen == set(itertools.product(*optuna_grid(spec).values()))


def test_optuna_search_keeps_dotted_names():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = spec_of()
    searcher = OptunaSearch(
        space=OptunaSearch.convert_search_space(tune_param_space(spec)),
        sampler=optuna.samplers.TPESampler(seed=0),
        metric=["val/miou", "cost/hours"], mode=["max", "min"],
    )
    for i in range(3):
        config = searcher.suggest(f"t{i}")
        assert set(config) == set(tune_param_space(spec))
        assert load_config(trial_config(spec, config)).ds_type in ("none", "standard", "multi_label")
