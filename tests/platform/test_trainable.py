"""The Tune adapter: the dataset store fetched once per node (the first trial fetches, the others wait
for it and never see half a file), and a trial over the budget cap reporting NaN objectives in a
real Tuner."""

from __future__ import annotations

import math
import shutil
import threading
from pathlib import Path

import pytest

from labelmix.platform.trainable import STORE_CACHE_ENV, DatasetSource, node_local_store, store_cache_dir
from labelmix.trainables.data.synth import SynthSettings
from labelmix.trainables.data.synth_store import write_synthetic_store


@pytest.fixture
def store(tmp_path):
    """A real store: 5 synthetic volumes of 2 32x32 B-scans (6 training images)."""
    (tmp_path / "data").mkdir()
    return write_synthetic_store(SynthSettings(5, 2, 32, 32, 0), tmp_path / "data" / "store.parquet")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(STORE_CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_cache_folder_is_the_environments_or_a_temporary_one(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setenv(STORE_CACHE_ENV, str(tmp_path / "here"))
    assert store_cache_dir() == tmp_path / "here"
    monkeypatch.setenv(STORE_CACHE_ENV, "")
    assert store_cache_dir() == Path(tempfile.gettempdir()) / "labelmix-stores"


def test_the_store_is_fetched_once_while_other_trials_wait_and_never_see_half_of_it(store, cache, monkeypatch):
    """Two trials on one node ask for the store at once; the first one's copy is held halfway."""
    source = DatasetSource(fingerprint=store.fingerprint, uri=f"file://{store.path}")
    final = cache / f"{store.fingerprint}.parquet"
    expected = store.path.read_bytes()
    half_written, go_on, copies = threading.Event(), threading.Event(), []
    copy = shutil.copyfileobj

    def held_halfway(src, dst, length=0):
        copies.append(threading.current_thread().name)
        dst.write(src.read(len(expected) // 2))
        dst.flush()
        half_written.set()
        assert go_on.wait(60), "the test never let the copy finish"
        copy(src, dst, length)

    monkeypatch.setattr(shutil, "copyfileobj", held_halfway)
    got = {}

    def trial(name):
        got[name] = node_local_store(source)

    first = threading.Thread(target=trial, args=("first",), name="first", daemon=True)
    second = threading.Thread(target=trial, args=("second",), name="second", daemon=True)
    first.start()
    try:
        assert half_written.wait(60), "the first trial never started its copy"
        second.start()
        second.join(timeout=0.5)
        assert second.is_alive() and "second" not in got  # it waits for the first trial's lock
        # halfway: only a hidden temporary holds bytes; the store's own name does not exist yet
        assert not final.exists()
        (partial,) = [p for p in cache.iterdir() if p.suffix != ".lock"]
        assert partial.name.startswith(f".{final.name}.tmp-") and partial.stat().st_size == len(expected) // 2
    finally:
        go_on.set()
        first.join(timeout=60)
        second.join(timeout=60)
    assert got == {"first": final, "second": final}
    assert copies == ["first"]  # fetched once: the second trial found the file under the lock
    assert final.read_bytes() == expected
    assert sorted(p.name for p in cache.iterdir()) == [f"{store.fingerprint}.lock", final.name]

    store.path.unlink()  # later trials on this node read the cached file, whatever became of the source
    assert node_local_store(source) == final and copies == ["first"]


def test_a_store_of_another_fingerprint_is_another_file(store, cache):
    one = node_local_store(DatasetSource(fingerprint="aaaa", uri=f"file://{store.path}"))
    two = node_local_store(DatasetSource(fingerprint="bbbb", uri=f"file://{store.path}"))
    assert (one.name, two.name) == ("aaaa.parquet", "bbbb.parquet") and one.read_bytes() == two.read_bytes()


# --- a real Tuner ---------------------------------------------------------------------------------


def test_a_trial_over_the_budget_cap_reports_nan_objectives_and_trains_nothing(tmp_path, store, local_ray):
    """Two trials of a spec whose fixed mix costs more than budget.max_hours, the store shipped
    through the object store (as for a cluster); each trial reports once and is not trained."""
    import ray
    from ray import tune

    from labelmix.platform.space import tune_param_space
    from labelmix.platform.spec import parse_spec
    from labelmix.platform.trainable import run_trial

    spec = parse_spec({
        "name": "capped",
        "dataset": {"path": str(store.path)},
        "objectives": [{"metric": "val/mdice", "mode": "max"}, {"metric": "cost/hours", "mode": "min"}],
        "space": {"ema_decay": {"loguniform": [0.9, 0.999]}},
        "fixed": {"encoder": "test_resnet", "epochs": 3, "batch_size": 2, "threads": 1,
                  "mix": {"full": 0.5, "global": 0.5}},
        "budget": {"max_hours": 0.2},
        "search": {"algorithm": "random", "trials": 2, "seed": 0},
    })
    data = store.path.read_bytes()
    source = DatasetSource(fingerprint=store.fingerprint, ref=ray.put(data), size=len(data))
    tuner = tune.Tuner(
        tune.with_parameters(run_trial, spec=spec, dataset=source),
        param_space=tune_param_space(spec),
        tune_config=tune.TuneConfig(num_samples=2),
        run_config=tune.RunConfig(name="capped", storage_path=str(tmp_path / "tune"), verbose=0),
    )
    results = tuner.fit()
    assert len(results) == 2 and not results.errors
    node = ray.get_runtime_context().get_node_id()  # one local node: the driver's
    # 6 training images, 3 with masks (240 s each) and 3 with global labels (3 foreground classes
    # asked, 1 s each): 729 s = 0.2025 h > 0.2 h; all masks would be 1440 s, so the reduction is
    # 1 - 729 / 1440 = 0.49375
    for result in results:
        history = result.metrics_dataframe
        assert len(history) == 1  # one report, no epochs
        metrics = result.metrics
        assert metrics["cost/hours"] == pytest.approx(0.2025)
        assert metrics["cost/reduction"] == pytest.approx(0.49375)
        assert (metrics["labels/full"], metrics["labels/global"], metrics["labels/box"]) == (3.0, 3.0, 0.0)
        assert metrics["status/over_budget"] == 1.0 and metrics["epoch"] == 0.0
        assert math.isnan(metrics["val/mdice"]) and math.isnan(metrics["val/miou"])
        assert metrics["node/id"] == node
        assert result.checkpoint is None
    # the store reached the workers through the object store: one cached copy on this node
    assert [p.name for p in local_ray.store_cache.glob("*.parquet")] == [f"{store.fingerprint}.parquet"]
    assert (local_ray.store_cache / f"{store.fingerprint}.parquet").read_bytes() == data
