"""The study spec: what loads, and what each mistake is told (the message starts with the field path)."""

from __future__ import annotations

import copy

import pytest
import yaml

from labelmix.errors import UserError
from labelmix.platform.spec import StudySpec, load_spec, parse_spec, smoke_spec, spec_hash
from labelmix.trainables.config import TrainConfig

VALID = {
    "name": "quickstart",
    "description": "a test study",
    "dataset": {"synthetic": {"volumes": 12, "slices": 16, "height": 64, "width": 64, "seed": 0}},
    "cost": {"full_seconds": 240, "box_seconds": 7, "global_seconds": 1},
    "objectives": [{"metric": "val/miou", "mode": "max"}, {"metric": "cost/hours", "mode": "min"}],
    "space": {
        "mix": {
            "full": {"uniform": [0.02, 0.3]},
            "box": {"uniform": [0, 1]},
            "global": {"uniform": [0, 1]},
            "none": 0,
        },
        "ds_type": {"choice": ["none", "standard", "multi_label"]},
        "ds_depth": {"int": [0, 5]},
        "ema_decay": {"loguniform": [0.9, 0.999]},
    },
    "fixed": {"epochs": 6, "encoder": "resnet18", "batch_size": 16},
    "search": {"algorithm": "tpe", "trials": 8, "concurrency": 2, "seed": 0},
    "scheduler": {"type": "pareto_asha", "max_epochs": 6, "grace_period": 1, "reduction_factor": 2},
    "budget": {"max_hours": None},
    "resources": {"cpus": 1, "gpus": 0},
    "failure": {"max_failures": 1},
    "storage": {"path": "studies"},
    "tracking": {"uri": None, "experiment": None},
    "smoke": {"trials": 2, "epochs": 1, "volumes": 4, "slices": 4, "size": 64},
}


def spec_with(**changes) -> dict:
    """VALID with dotted-path changes; the value DELETE removes the key."""
    data = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return data


DELETE = object()


def tiny_store(path):
    """A real dataset store of 8 synthetic 32x32 images (the spec reads a store's metadata)."""
    from labelmix.trainables.data.synth import SynthSettings
    from labelmix.trainables.data.synth_store import write_synthetic_store

    return write_synthetic_store(SynthSettings(4, 2, 32, 32, 0), path).path


def test_valid_spec_loads_with_filled_defaults():
    spec = parse_spec(VALID)
    assert isinstance(spec, StudySpec)
    assert spec.name == "quickstart"
    assert [o.metric for o in spec.objectives] == ["val/miou", "cost/hours"]
    assert spec.tracking.experiment == "quickstart"  # defaults to the study name
    assert spec.scheduler.max_epochs == spec.fixed["epochs"] == 6
    names = {a.name: a.kind for a in spec.axes}
    assert names == {
        "mix.full": "uniform", "mix.box": "uniform", "mix.global": "uniform", "mix.none": "fixed",
        "ds_type": "choice", "ds_depth": "int", "ema_decay": "loguniform",
    }
    with pytest.raises(Exception):
        spec.name = "other"  # frozen


def test_minimal_spec_fills_defaults():
    spec = parse_spec({
        "name": "mini",
        "objectives": [{"metric": "cost/reduction"}],
        "space": {"lr": {"loguniform": [1e-4, 1e-2]}},
        "search": {"trials": 3},
    })
    assert spec.objectives[0].mode == "max"  # the metric's natural direction
    assert spec.search.algorithm == "tpe"
    assert spec.scheduler.type == "none"
    assert spec.scheduler.max_epochs == TrainConfig.model_fields["epochs"].default
    assert spec.dataset.synthetic is not None
    assert spec.resources.cpus == 1 and spec.resources.gpus == 0


def test_epochs_filled_from_scheduler():
    data = spec_with(fixed__epochs=DELETE, scheduler__max_epochs=4)
    assert parse_spec(data).fixed["epochs"] == 4
    data = spec_with(scheduler__max_epochs=DELETE)
    assert parse_spec(data).scheduler.max_epochs == 6


def test_mix_of_complete_mixes_and_fixed_mix():
    data = spec_with(space__mix={"choice": [{"full": 1}, {"full": 0.1, "none": 0.9}]})
    axis = next(a for a in parse_spec(data).axes if a.name == "mix")
    assert axis.kind == "choice"
    assert axis.values[1] == {"full": 0.1, "box": 0.0, "global": 0.0, "none": 0.9}
    data = spec_with(space__mix=DELETE, fixed__mix={"full": 0.5, "box": 0.5})
    assert parse_spec(data).fixed["mix"] == {"full": 0.5, "box": 0.5}


def test_grid_trials_default_to_the_grid_size():
    data = spec_with(
        search={"algorithm": "grid"},
        space={"ds_type": {"grid": ["none", "multi_label"]}, "ds_depth": {"grid": [1, 2, 3]}, "lr": 0.001},
    )
    assert parse_spec(data).search.trials == 6


def test_dataset_path_must_exist_and_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_store(tmp_path / "store.parquet")
    spec = parse_spec(spec_with(dataset={"path": "store.parquet"}))
    assert spec.dataset.path == str(tmp_path / "store.parquet")
    assert parse_spec(spec_with(dataset={"path": "s3://bucket/store.parquet"})).dataset.path.startswith("s3://")


INVALID = [
    # unknown keys, anywhere; the message lists the allowed keys
    (dict(colour="red"), "colour: unknown key; allowed here: budget, cost, dataset, description"),
    (dict(search__sampler="tpe"), "search.sampler: unknown key; allowed here: algorithm"),
    (dict(dataset__synthetic__depth=3), "dataset.synthetic.depth: unknown key"),
    (dict(space__ds_type={"choise": ["none"]}), "space.ds_type.choise: unknown key; allowed here: choice, uniform"),
    (dict(space__ds_type={"choice": ["none"], "uniform": [0, 1]}), "space.ds_type: give exactly one distribution"),
    (dict(space__mix__boxes={"uniform": [0, 1]}), "space.mix.boxes: unknown key; allowed here: full, box, global, none"),
    # wrong types
    (dict(name="Quick Start"), "name: String should match pattern"),
    (dict(search__trials="many"), "search.trials: Input should be a valid integer"),
    (dict(space__ema_decay={"uniform": "wide"}), "space.ema_decay.uniform: Input should be a valid tuple"),
    (dict(space__ds_depth={"int": [0.5, 3]}), "space.ds_depth.int.0: Input should be a valid integer"),
    (dict(space__mix=[0.5, 0.5]), "space.mix: a mix is per-type weights"),
    (dict(space__mix__box="half"), "space.mix.box: mix weights must be numbers in [0, 1]"),
    # empty choice, bad bounds
    (dict(space__ds_type={"choice": []}), "space.ds_type.choice: List should have at least 1 item"),
    (dict(space__ema_decay={"loguniform": [0.999, 0.9]}), "space.ema_decay.loguniform: low 0.999 > high 0.9"),
    (dict(space__ema_decay={"loguniform": [0, 0.9]}), "space.ema_decay.loguniform: low must be > 0 on a log scale"),
    (dict(space__ds_depth={"int": [5, 0]}), "space.ds_depth.int: low 5 > high 0"),
    (dict(space__lr={"uniform": [0.1, 0.01]}), "space.lr.uniform: low 0.1 > high 0.01"),
    # fractions and plain mix values outside [0, 1]
    (dict(space__mix__full={"uniform": [0.5, 1.5]}), "space.mix.full.uniform: mix weights must be numbers in [0, 1]"),
    (dict(space__mix__none=2), "space.mix.none: mix weights must be numbers in [0, 1], got 2"),
    (dict(space__mix__box={"choice": [0.5, -0.1]}), "space.mix.box.choice: mix weights must be numbers in [0, 1]"),
    (dict(space__mix={"full": 0, "box": 0}), "space.mix: every weight is 0"),
    (dict(space__mix={"choice": [{"full": 0.5, "none": 0.6}]}), "space.mix.choice.0: fractions full+box+global+none must sum to 1"),
    (dict(space__mix={"choice": [{"full": 1.5}]}), "space.mix.choice.0.full: fraction must be in [0, 1]"),
    (dict(space__mix={"choice": [{"full": 1, "boxes": 0}]}), "space.mix.choice.0: unknown annotation type"),
    (dict(space__mix={"choice": [{"full": 1}], "grid": [{"full": 1}]}), "space.mix: give one of choice or grid"),
    (dict(fixed__mix={"full": 0.5}, space__mix=DELETE), "fixed.mix: full+box+global+none must sum to 1"),
    # unknown algorithm or scheduler
    (dict(search__algorithm="cmaes"), "search.algorithm: Input should be 'tpe', 'nsga2', 'random' or 'grid'"),
    (dict(scheduler__type="hyperband"), "scheduler.type: Input should be 'none', 'asha' or 'pareto_asha'"),
    (dict(scheduler__type="asha"),
     "scheduler.type: asha optimises one metric; with 2 objectives use pareto_asha or none"),
    # grid only with grid, and grid everywhere with grid
    (dict(space__ds_type={"grid": ["none", "standard"]}), "space.ds_type.grid: a grid list needs search.algorithm: grid"),
    (dict(search__algorithm="grid", search__trials=DELETE,
          space={"ds_type": {"grid": ["none"]}, "ema_decay": {"uniform": [0.9, 0.99]}}),
     "space.ema_decay: search.algorithm grid needs every searched field as {grid: [..]}"),
    (dict(search__algorithm="grid", space={"ds_depth": {"grid": [1, 2]}}, search__trials=3),
     "search.trials: 3 is more than the grid's 2 points"),
    # fields that are not TrainConfig fields, with close matches
    (dict(space__ema_decy={"uniform": [0.9, 0.99]}), "space.ema_decy: not a trial config field; did you mean ema_decay"),
    (dict(fixed__batchsize=8), "fixed.batchsize: not a trial config field; did you mean batch_size"),
    (dict(fixed__cost={"full_seconds": 1}), "fixed.cost: set by the spec's top-level `cost:` section"),
    (dict(fixed__ds_type="none"), "space.ds_type: also set in fixed"),
    # datasets
    (dict(dataset={"path": "/no/such/store.parquet"}), "dataset.path: file not found: /no/such/store.parquet"),
    (dict(dataset={}), "dataset: give exactly one of dataset.path or dataset.synthetic"),
    # objectives
    (dict(objectives=[{"metric": "val/iou", "mode": "max"}]), "objectives.0.metric: Input should be 'val/miou'"),
    (dict(objectives=[{"metric": "val/miou", "mode": "up"}]), "objectives.0.mode: Input should be 'max' or 'min'"),
    (dict(objectives=[{"metric": "val/miou"}, {"metric": "val/miou"}]), "objectives.1.metric: val/miou is listed twice"),
    (dict(objectives=[]), "objectives: give 1 or 2 objectives, got 0"),
    (dict(objectives=[{"metric": m} for m in ("val/miou", "cost/hours", "val/mdice")]), "objectives: give 1 or 2 objectives, got 3"),
    # epochs and the scheduler
    (dict(scheduler__max_epochs=10), "scheduler.max_epochs: 10 differs from fixed.epochs 6"),
    (dict(scheduler__grace_period=7), "scheduler.grace_period: 7 is more than max_epochs 6"),
    (dict(scheduler__reduction_factor=1), "scheduler.reduction_factor: Input should be greater than 1"),
    (dict(scheduler__type="none", scheduler__front_order="hypervolume"), "scheduler.front_order: only for type pareto_asha"),
    (dict(scheduler__front_order="crowded"), "scheduler.front_order: Input should be 'hypervolume' or 'crowding'"),
    (dict(scheduler__brackets=5), "scheduler.brackets: 5 is more than one plus the 3 rung(s) below max_epochs 6 "
     "(grace_period 1, reduction_factor 2); at most 4"),
    (dict(scheduler__brackets=0), "scheduler.brackets: Input should be greater than or equal to 1"),
    (dict(scheduler__type="none", scheduler__brackets=2), "scheduler.brackets: only for type asha or pareto_asha (type is none)"),
    (dict(space__epochs={"int": [2, 4]}, fixed__epochs=DELETE), "space.epochs: cannot be searched with scheduler pareto_asha"),
    # counts and resources
    (dict(search__trials=0), "search.trials: Input should be greater than or equal to 1"),
    (dict(search__trials=DELETE), "search.trials: required for algorithm tpe"),
    (dict(search__concurrency=0), "search.concurrency: Input should be greater than or equal to 1"),
    (dict(search__population_size=8), "search.population_size: only for algorithm nsga2"),
    (dict(resources__cpus=-1), "resources.cpus: Input should be greater than or equal to 0"),
    (dict(resources__gpus=-0.5), "resources.gpus: Input should be greater than or equal to 0"),
    (dict(fixed__device="cuda"), "fixed.device: cuda needs resources.gpus > 0"),
    (dict(budget__max_hours=0), "budget.max_hours: Input should be greater than 0"),
    # bad values, caught by validating trial configs at check time
    (dict(fixed__ema_decay=2, space__ema_decay=DELETE), "fixed.ema_decay: must be in the open interval (0, 1)"),
    (dict(fixed__encoder=3), "fixed.encoder: Input should be a valid string"),
    (dict(space__ds_type={"choice": ["none", "deep"]}), "space.ds_type: Input should be 'none', 'standard' or 'multi_label'"),
    (dict(space__ema_decay={"uniform": [0.9, 1.0]}), "space.ema_decay: must be in the open interval (0, 1)"),
    (dict(space__batch_size={"uniform": [8, 32]}, fixed__batch_size=DELETE), "space.batch_size.uniform: samples fractional numbers"),
    (dict(space={"lr": 0.01}), "space: nothing is searched"),
]


@pytest.mark.parametrize("changes, message", INVALID, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(INVALID)])
def test_invalid_spec_names_the_field(changes, message):
    with pytest.raises(UserError) as info:
        parse_spec(spec_with(**changes))
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_load_spec_file_errors(tmp_path):
    with pytest.raises(UserError, match="nope.yaml: file not found"):
        load_spec(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match=r"bad.yaml: bad YAML at line \d+"):
        load_spec(str(bad))
    listy = tmp_path / "list.yaml"
    listy.write_text("- name: x\n")
    with pytest.raises(UserError, match="list.yaml: a study spec is a YAML mapping"):
        load_spec(str(listy))
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(UserError, match="an empty document"):
        load_spec(str(empty))


def test_load_spec_returns_source_and_names_the_file(tmp_path):
    path = tmp_path / "study.yaml"
    text = yaml.safe_dump(VALID, sort_keys=False)
    path.write_text(text)
    spec, source = load_spec(str(path))
    assert source == text and spec.name == "quickstart"
    path.write_text(yaml.safe_dump(spec_with(fixed__ema_decay=2, space__ema_decay=DELETE)))
    with pytest.raises(UserError) as info:
        load_spec(str(path))
    assert str(info.value).startswith(f"{path}: fixed.ema_decay: ")


def test_dumped_spec_reloads_unchanged():
    spec = parse_spec(VALID)
    again = parse_spec(yaml.safe_load(yaml.safe_dump(spec.model_dump(mode="json", by_alias=True), sort_keys=False)))
    assert again == spec and again.axes == spec.axes


def test_smoke_spec_shrinks():
    spec = parse_spec(VALID)
    smoke = smoke_spec(spec)
    assert smoke.name == spec.name
    assert smoke.search.trials == 2 and smoke.search.concurrency == 2
    assert smoke.fixed["epochs"] == 1 and smoke.scheduler.max_epochs == 1 and smoke.scheduler.grace_period == 1
    synthetic = smoke.dataset.synthetic
    assert (synthetic.volumes, synthetic.slices, synthetic.height, synthetic.width) == (4, 4, 64, 64)
    assert smoke.axes == spec.axes
    one = smoke_spec(parse_spec(spec_with(smoke__trials=1)))
    assert one.search.trials == 1 and one.search.concurrency == 1


def test_smoke_spec_keeps_brackets_within_its_rungs():
    spec = parse_spec(spec_with(scheduler__brackets=4))  # rungs 1, 2, 4 below 6 epochs
    assert spec.scheduler.brackets == 4
    assert smoke_spec(spec).scheduler.brackets == 1  # 1 epoch: no rung below it, one bracket


def test_smoke_spec_of_a_path_dataset_limits_images(tmp_path):
    store = tiny_store(tmp_path / "store.parquet")
    smoke = smoke_spec(parse_spec(spec_with(dataset={"path": str(store)})))
    assert smoke.dataset.path == str(store)
    assert smoke.dataset.max_train_images == 16 and smoke.dataset.max_eval_images == 16


def test_spec_hash_is_stable():
    text = yaml.safe_dump(VALID)
    assert spec_hash(text) == spec_hash(text) == spec_hash(text.replace("\n", "\r\n"))
    assert len(spec_hash(text)) == 16
    assert spec_hash(text) != spec_hash(text + "# comment\n")
