"""`labelmix check SPEC` refuses everything `submit` would fail on: exit status 2, one line naming
the field path, no traceback, nothing created.

Each case is VALID (tests/platform/test_spec.py) with changes, or a whole file's text. Paths in a
case use {data} (a folder of prepared dataset stores) and {tmp} (the test's own folder); every
case writes its study folders to {tmp}/studies, which must not appear.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from labelmix.cli import main
from tests.conftest import cli
from tests.platform.test_spec import DELETE, VALID, spec_with

INF, NAN = math.inf, math.nan

# (case id, changes to VALID or the file's text, the message after "labelmix: error: FILE: ")
CASES = [
    # unknown keys and wrong types
    ("unknown-key", dict(colour="red"), "colour: unknown key; allowed here: budget, cost, dataset, description"),
    ("unknown-nested-key", dict(search__sampler="tpe"), "search.sampler: unknown key; allowed here: algorithm"),
    ("wrong-type", dict(search__trials="many"),
     "search.trials: Input should be a valid integer, unable to parse string as an integer (got 'many')"),
    ("wrong-type-union", dict(space__ds_depth=DELETE, fixed__ds_depth="deep"),
     "fixed.ds_depth: Input should be a valid integer, unable to parse string as an integer or Input should be "
     "'max' (got 'deep')"),
    ("every-problem-named", dict(name="Bad Name", search__trials="many", resources__cpus=-1),
     "name: String should match pattern '^[a-z0-9_-]+$' (got 'Bad Name'); search.trials: Input should be a valid "
     "integer, unable to parse string as an integer (got 'many'); resources.cpus: Input should be greater than or "
     "equal to 0 (got -1)"),
    # empty spaces and out-of-range values
    ("empty-space", dict(space={}), "space: nothing is searched"),
    ("empty-choice", dict(space__ds_type={"choice": []}), "space.ds_type.choice: List should have at least 1 item"),
    ("bad-bounds", dict(space__ema_decay={"loguniform": [0.999, 0.9]}), "space.ema_decay.loguniform: low 0.999 > high 0.9"),
    ("out-of-range", dict(fixed__ema_decay=2, space__ema_decay=DELETE), "fixed.ema_decay: must be in the open interval (0, 1)"),
    # impossible combinations
    ("asha-two-objectives", dict(scheduler__type="asha"),
     "scheduler.type: asha optimises one metric; with 2 objectives use pareto_asha or none"),
    ("cuda-without-gpus", dict(fixed__device="cuda"), "fixed.device: cuda needs resources.gpus > 0"),
    ("concurrency-above-trials", dict(search__concurrency=9),
     "search.concurrency: 9 is more than search.trials 8; at most 8 trials can run at once"),
    ("level-weights-vs-depth", dict(space__ds_depth=DELETE, fixed__ds_depth=3, fixed__ds_level_weights=[1, 1]),
     "fixed.ds_level_weights: 2 weights for 3 supervised levels (encoder 'resnet18', ds_depth 3)"),
    ("tightness-class-not-in-the-dataset", dict(fixed__tightness_class_weights={"CNV": 0.5}),
     "fixed.tightness_class_weights: ['CNV'] are not foreground classes of the dataset; its classes with boxes: "
     "['IRF', 'SRF', 'PED']"),
    ("tightness-class-in-a-case", dict(space__cases={"choice": [{"name": "a", "tightness_class_weights": {"irf": 0.3}}]}),
     "space.cases.choice.0.tightness_class_weights: ['irf'] are not foreground classes of the dataset"),
    # encoders and their levels
    ("unknown-encoder", dict(fixed__encoder="resnet9000"),
     "fixed.encoder: unknown encoder 'resnet9000'; use unet or a timm model name (timm.list_models()); did you "
     "mean resnet200 or resnet200d or resnet50?"),
    ("unknown-encoder-searched", dict(fixed__encoder=DELETE, space__encoder={"choice": ["unet", "resnet18x"]}),
     "space.encoder.choice.1: unknown encoder 'resnet18x'"),
    ("unknown-encoder-in-a-case", dict(fixed__encoder=DELETE, space__cases={"choice": [{"name": "a", "encoder": "resnt18"}]}),
     "space.cases.choice.0.encoder: unknown encoder 'resnt18'; use unet or a timm model name (timm.list_models()); "
     "did you mean resnet18"),
    ("ds-depth-beyond-levels", dict(space__ds_depth=DELETE, fixed__ds_depth=12),
     "fixed.ds_depth: 12 is more than the 5 decoder levels of encoder 'resnet18' (allowed 0..5 or max)"),
    ("ds-depth-range-beyond-levels", dict(space__ds_depth={"int": [0, 7]}, fixed__encoder="unet"),
     "space.ds_depth.int: 7 is more than the 5 decoder levels of encoder 'unet' (allowed 0..5 or max)"),
    # enormous numbers
    ("trials-1e30", dict(search__trials=1e30), "search.trials: must be at most 100000 (got 1e+30)"),
    ("concurrency-huge", dict(search__trials=100000, search__concurrency=100000),
     "search.concurrency: must be at most 4096 (got 100000)"),
    ("epochs-huge", dict(fixed__epochs=10**6, scheduler__max_epochs=DELETE),
     "fixed.epochs: 1000000 is more than the limit of 10000 epochs"),
    ("epochs-searched-huge", dict(fixed__epochs=DELETE, scheduler={"type": "none"}, space__epochs={"choice": [5, 20000]}),
     "space.epochs: 20000 is more than the limit of 10000 epochs"),
    ("max-epochs-huge", dict(fixed__epochs=50000, scheduler__max_epochs=50000),
     "scheduler.max_epochs: must be at most 10000 (got 50000)"),
    ("cpus-huge", dict(resources__cpus=1e9), "resources.cpus: Input should be less than or equal to 1024 (got 1000000000.0)"),
    # NaN and infinity
    ("lr-inf", dict(fixed__lr=INF), "fixed.lr: must be a finite number, got inf"),
    ("lr-nan", dict(fixed__lr=NAN), "fixed.lr: must be a finite number, got nan"),
    ("lr-inf-string", dict(fixed__lr="inf"), "fixed.lr: must be a finite number, got inf"),
    ("bound-inf", dict(space__ema_decay={"uniform": [0.9, INF]}), "space.ema_decay.uniform.1: must be a finite number, got inf"),
    ("choice-nan", dict(space__lr={"choice": [0.001, NAN]}), "space.lr.choice.1: must be a finite number, got nan"),
    ("cost-inf", dict(cost__box_seconds=INF), "cost.box_seconds: must be a finite number, got inf"),
    ("budget-inf", dict(budget__max_hours=INF), "budget.max_hours: Input should be a finite number (got inf)"),
    # dataset paths
    ("dataset-missing", dict(dataset={"path": "{tmp}/nope.parquet"}), "dataset.path: file not found: {tmp}/nope.parquet"),
    ("dataset-folder", dict(dataset={"path": "{data}"}),
     "dataset.path: {data} is a folder; give a dataset store file made by `labelmix data ...`"),
    ("dataset-text-file", dict(dataset={"path": "{data}/notes.txt"}), "dataset.path: {data}/notes.txt: not a Parquet dataset store"),
    ("dataset-plain-parquet", dict(dataset={"path": "{data}/plain.parquet"}),
     "dataset.path: {data}/plain.parquet: Parquet file without labelmix metadata; create stores with `labelmix data ...`"),
    ("dataset-no-train-images", dict(dataset={"path": "{data}/no-train.parquet"}),
     "dataset.path: {data}/no-train.parquet: the store has no training images (split train)"),
    ("dataset-mixed-sizes", dict(dataset={"path": "{data}/mixed.parquet"}),
     "dataset.path: {data}/mixed.parquet: images of 2 sizes (32x32, 40x40, height x width); trials batch one size"),
    # storage paths
    ("storage-proc", dict(storage={"path": "/proc/labelmix-studies"}),
     "storage.path: /proc/labelmix-studies is under /proc, a virtual filesystem"),
    ("storage-sys", dict(storage={"path": "/sys/kernel/studies"}), "storage.path: /sys/kernel/studies is under /sys"),
    ("storage-under-a-file", dict(storage={"path": "{data}/notes.txt/studies"}),
     "storage.path: {data}/notes.txt/studies cannot be created: {data}/notes.txt is a file, not a folder"),
    ("storage-is-a-file", dict(storage={"path": "{data}/notes.txt"}), "storage.path: {data}/notes.txt is a file, not a folder"),
    # files that are no spec
    ("duplicate-key", "name: a\nname: b\n",
     "bad YAML at line 2, column 1: key 'name' appears twice (lines 1 and 2); keys of a mapping are unique"),
    ("duplicate-nested-key", yaml.safe_dump(VALID, sort_keys=False).replace("  trials: 8\n", "  trials: 8\n  trials: 9\n"),
     "key 'trials' appears twice"),
    ("malformed-yaml", "name: [unclosed\n", "bad YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'"),
    ("not-a-mapping", "- name: x\n", "a study spec is a YAML mapping (name:, space:, ...), got list"),
    ("a-scalar", "42\n", "a study spec is a YAML mapping (name:, space:, ...), got int"),
    ("empty-file", "", "a study spec is a YAML mapping (name:, space:, ...), got an empty document"),
]
# These also run as real `labelmix check` processes (slow: a process pays the imports); every case
# runs through main(), in this process.
SUBPROCESS = {"duplicate-key", "lr-inf", "unknown-encoder", "storage-proc", "dataset-text-file", "every-problem-named"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Dataset files: a note, a Parquet file that is no store, a store without training images and
    one whose images have two sizes."""
    from labelmix.trainables.data.store import Record, write_store
    from labelmix.trainables.data.synth import SynthSettings
    from labelmix.trainables.data.synth_store import write_synthetic_store

    folder = tmp_path_factory.mktemp("data")
    (folder / "notes.txt").write_text("not a store\n")
    pq.write_table(pa.table({"x": [1, 2]}), folder / "plain.parquet")
    write_synthetic_store(SynthSettings(4, 2, 32, 32, 0), folder / "no-train.parquet", split_fractions=(0, 0.5, 0.5))
    records, volumes = [], [f"v{i}" for i in range(5)]
    for i, volume in enumerate(volumes):
        size = 32 if i % 2 else 40
        records.append(Record(f"{volume}/0", volume, "test", 0, np.zeros((size, size), np.uint8), np.zeros((size, size), np.uint8)))
    write_store(records, folder / "mixed.parquet", ["background", "fluid"], {}, volumes)
    return folder


def _spec_file(tmp_path: Path, data_dir: Path, case) -> tuple[Path, str]:
    changes = case[1]
    if isinstance(changes, str):
        text = changes
    else:
        data = spec_with(**changes)
        data.setdefault("storage", {}).setdefault("path", "{tmp}/studies")
        if data["storage"]["path"] == "studies":
            data["storage"]["path"] = "{tmp}/studies"
        text = yaml.safe_dump(data, sort_keys=False)
    path = tmp_path / "spec.yaml"
    path.write_text(text.replace("{data}", str(data_dir)).replace("{tmp}", str(tmp_path)))
    message = case[2].replace("{data}", str(data_dir)).replace("{tmp}", str(tmp_path))
    return path, message


def _files(*folders: Path) -> set[str]:
    return {str(p) for folder in folders for p in folder.rglob("*")}


def _refuses(case, tmp_path, data_dir, run) -> None:
    path, message = _spec_file(tmp_path, data_dir, case)
    before = _files(tmp_path, data_dir)
    status, out, err = run(path)
    assert status == 2, out + err
    assert "Traceback" not in out + err
    assert err.startswith(f"labelmix: error: {path}: ") and err.count("\n") == 1, err
    assert message in err, err
    assert _files(tmp_path, data_dir) == before  # nothing created: no study folder, no cache
    assert not (tmp_path / "studies").exists()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_check_refuses(case, tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def in_this_process(path):
        status = main(["check", str(path)])
        return (status, *capsys.readouterr())

    _refuses(case, tmp_path, data_dir, in_this_process)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in SUBPROCESS], ids=[c[0] for c in CASES if c[0] in SUBPROCESS])
def test_check_refuses_as_its_own_process(case, tmp_path, data_dir):
    def as_a_process(path):
        proc = cli("check", str(path), timeout=120, cwd=tmp_path)
        return proc.returncode, proc.stdout, proc.stderr

    _refuses(case, tmp_path, data_dir, as_a_process)


def test_the_valid_spec_and_every_builtin_pass(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**VALID, "storage": {"path": str(tmp_path / "studies")}}))
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: valid study spec 'quickstart'")
    from labelmix.search_spaces import builtin_specs

    for name in builtin_specs():
        assert main(["check", name]) == 0, capsys.readouterr().err
        assert main(["check", "--smoke", name]) == 0, capsys.readouterr().err
    assert _files(tmp_path) == {str(path)}


def test_check_says_when_a_finite_space_holds_fewer_configurations_than_trials(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "spec.yaml"
    space = {"ds_type": {"choice": ["none", "multi_label"]}, "lr": {"choice": [0.001, 0.01]}}
    path.write_text(yaml.safe_dump(spec_with(space=space, search={"algorithm": "random", "trials": 10},
                                             storage={"path": str(tmp_path / "studies")})))
    assert main(["check", str(path)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"{path}: the search space holds 4 distinct configurations and none runs twice: the search ends after 4 "
        "of its 10 trials")


def test_a_store_that_fits_passes(tmp_path, capsys, monkeypatch):
    from tests.platform.test_spec import tiny_store

    monkeypatch.chdir(tmp_path)
    store = tiny_store(tmp_path / "store.parquet")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_with(dataset={"path": str(store)}, storage={"path": str(tmp_path / "studies")})))
    assert main(["check", str(path)]) == 0, capsys.readouterr().err


def test_submit_refuses_unwritable_storage_before_ray_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(VALID))
    assert main(["submit", str(path), "--storage", str(tmp_path / "file" / "studies")]) == 2
    err = capsys.readouterr().err
    assert err == (f"labelmix: error: --storage: {tmp_path}/file/studies cannot be created: {tmp_path}/file "
                   "is a file, not a folder\n")
    assert _files(tmp_path) == {str(path), str(tmp_path / "file")}


def test_train_configs_refuse_duplicate_keys_too(tmp_path, capsys):
    path = tmp_path / "train.yaml"
    path.write_text("epochs: 1\nlr: 0.1\nepochs: 2\n")
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (
        f"labelmix: error: {path}: bad YAML at line 3, column 1: key 'epochs' appears twice (lines 1 and 3); "
        "keys of a mapping are unique\n"
    )
    assert not (tmp_path / "run").exists()
