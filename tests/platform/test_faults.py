"""Faults a study survives, and storage it refuses, with real processes (issue 13 items 1, 3, 4, 5, 9).

- a trial's Ray worker killed after its first checkpoint: the trial resumes from that checkpoint and
  ends with the metrics of an uninterrupted run of the same spec (exactly, on the CPU);
- the tracking server stopped for 30 s mid-study and started again: no trial fails, no metric is lost;
- a trial whose loss becomes NaN (a searched lr of 1e12): it fails with the reason in the trial
  table and MLflow, the other trial finishes, the study exits 0;
- storage that is read-only, under a missing parent on a read-only filesystem, or full, and a
  dataset store changed after it was written: refused before Ray starts, exit status 2, one line;
- a study of 200 one-step trials: every trial in the trial table and in MLflow exactly once, and the
  driver's memory at the start and the end (benchmarks/study_load.py runs it and saves the numbers).

Each study is tiny (test_resnet, 64x64, 5 volumes x 4 slices, a few steps per epoch).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

BASE = {
    "name": "faults",
    "dataset": {"synthetic": {"volumes": 5, "slices": 4, "height": 64, "width": 64, "seed": 3}},
    "objectives": [{"metric": "val/miou", "mode": "max"}, {"metric": "cost/hours", "mode": "min"}],
    "space": {"ema_decay": {"loguniform": [0.9, 0.999]}},
    "fixed": {"encoder": "test_resnet", "epochs": 2, "batch_size": 4, "steps_per_epoch": 2, "threads": 1, "box_shape_steps": 5},
    "search": {"algorithm": "random", "trials": 1, "concurrency": 1, "seed": 0},
    "scheduler": {"type": "none"},
}
COMPARED = ("train/", "val/", "test/", "cost/", "labels/")  # what fit computes (time/ and Tune's own fields differ)


# --- helpers --------------------------------------------------------------------------------------


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labelmix.cli", *args], capture_output=True, text=True, **kw)


def background(folder: Path, *args) -> tuple[subprocess.Popen, Path]:
    """`labelmix ARGS` in its own session (stdout and stderr to driver.log), and the log's path."""
    log_path = folder / "driver.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "labelmix.cli", *args], cwd=folder, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    return driver, log_path


def write_spec(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {**BASE, **changes}
    spec.setdefault("storage", {"path": str(folder / "studies")})
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def wait_for(predicate, timeout_s: float, what: str, driver: subprocess.Popen | None = None):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if driver is not None and driver.poll() is not None:
            raise AssertionError(f"the driver exited ({driver.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def results(trial_dir: Path) -> list[dict]:
    """Tune's result log of one trial: one dict per report (a line being written is skipped)."""
    rows = []
    try:
        text = (trial_dir / "result.json").read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def trial_dirs(study: Path) -> list[Path]:
    return sorted(p.parent for p in study.glob("*/result.json"))


def trial_dir(study: Path, trial_id: str) -> Path:
    (found,) = [p for p in trial_dirs(study) if trial_id in p.name]
    return found


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc: the driver -> raylet -> Ray workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def mlflow_runs(uri: str, experiment: str) -> tuple[list, list]:
    """(parents, children) of an experiment."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=5000)
    return ([r for r in runs if "mlflow.parentRunId" not in r.data.tags],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


def fitted(result: dict) -> dict:
    """What fit computed in a report, NaN as the string "nan" (NaN != NaN would fail any comparison)."""
    return {k: _comparable(v) for k, v in result.items() if k.startswith(COMPARED)}


def _comparable(value):
    return "nan" if isinstance(value, float) and value != value else value


# --- 1. a trial's worker killed mid-trial -----------------------------------------------------------

KILLED_EPOCHS = 6


def test_a_killed_worker_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_trial(tmp_path):
    changes = dict(name="worker-killed", fixed={**BASE["fixed"], "epochs": KILLED_EPOCHS, "steps_per_epoch": 4},
                   failure={"max_failures": 1})
    folder = tmp_path / "killed"
    driver, log = background(folder, "submit", str(write_spec(folder, **changes)))
    study = folder / "studies" / "worker-killed"

    def first_checkpoint():
        for path in trial_dirs(study):
            rows = results(path)
            if rows and list(path.glob("checkpoint_*")):
                return path, rows[0]
        return None

    try:
        path, first = wait_for(first_checkpoint, 400, "the trial's first checkpoint", driver)
        worker = first["pid"]  # Tune records the reporting process in every result
        assert worker in descendants(driver.pid) and cmdline(worker).startswith("ray::"), cmdline(worker)
        os.kill(worker, signal.SIGKILL)
        epochs_at_kill = len(results(path))
        assert driver.wait(timeout=600) == 0, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert epochs_at_kill < KILLED_EPOCHS, "the trial finished before its worker was killed"

    table = pd.read_parquet(study / "trials.parquet")
    assert len(table) == 1 and list(table["status"]) == ["TERMINATED"] and list(table["epoch"]) == [KILLED_EPOCHS]
    history = results(path)
    # every epoch reported once: the trial went on from its checkpoint, not from the first epoch
    assert [r["training_iteration"] for r in history] == list(range(1, KILLED_EPOCHS + 1))
    restarted = [r for r in history if r["pid"] != worker]
    assert restarted and restarted[0]["iterations_since_restore"] == 1 and restarted[0]["training_iteration"] > 1

    # still one MLflow child run, finished, with one point per epoch
    uri = f"sqlite:///{study / 'mlflow.db'}"
    parents, children = mlflow_runs(uri, "worker-killed")
    assert len(parents) == 1 and len(children) == 1
    (child,) = children
    assert child.info.status == "FINISHED" and "labelmix.error" not in child.data.tags
    points = MlflowClient(uri).get_metric_history(child.info.run_id, "val/miou")
    assert sorted((m.step, _comparable(m.value)) for m in points) == [
        (r["training_iteration"], _comparable(r["val/miou"])) for r in history]

    # the same spec and seed without the kill: the same metrics, epoch by epoch, exactly
    folder = tmp_path / "straight"
    proc = cli("submit", str(write_spec(folder, **changes)), cwd=folder, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    straight_study = folder / "studies" / "worker-killed"
    straight_table = pd.read_parquet(straight_study / "trials.parquet")
    assert straight_table["config/ema_decay"].tolist() == table["config/ema_decay"].tolist()
    (straight_path,) = trial_dirs(straight_study)
    straight = results(straight_path)
    assert len(straight) == KILLED_EPOCHS
    for killed_row, straight_row in zip(history, straight):
        assert fitted(killed_row) == fitted(straight_row), killed_row["training_iteration"]
    assert {"train/loss", "val/miou", "test/miou", "val/student/miou"} <= set(fitted(history[-1]))
    print(f"worker {worker} killed after {epochs_at_kill} of {KILLED_EPOCHS} epochs; epochs "
          f"{[r['training_iteration'] for r in restarted]} ran in worker {restarted[0]['pid']}; "
          f"{len(fitted(history[-1]))} metrics per epoch equal to the uninterrupted run's")
    assert history[-1]["val/miou"] == straight_table["val/miou"].item() == table["val/miou"].item()


# --- 3. the tracking server down for 30 s mid-study ------------------------------------------------

OUTAGE_S = 30


def test_a_tracking_server_down_for_30_s_loses_no_trial_and_no_metric(tmp_path, free_port):
    from labelmix.mlflow_server import ServerSettings, start, stop
    from labelmix.platform.mlflow_runs import metric_values

    settings = ServerSettings(state_dir=tmp_path / "server", port=free_port)
    info = start(settings)
    changes = dict(name="tracking-outage", fixed={**BASE["fixed"], "epochs": 12, "steps_per_epoch": 4},
                   search={"algorithm": "random", "trials": 4, "concurrency": 2, "seed": 0})
    folder = tmp_path / "study"
    driver, log = background(folder, "submit", str(write_spec(folder, **changes)), "--tracking-uri", info.uri)
    study = folder / "studies" / "tracking-outage"
    try:
        wait_for(lambda: any(results(p) for p in trial_dirs(study)), 400, "the first result", driver)
        down_at = time.time()
        stop(settings.state_dir)
        stopped_at = time.time()
        time.sleep(OUTAGE_S)
        restart_at = time.time()
        start(settings)  # the same port, backend store and artifact folder
        up_at = time.time()
        assert driver.poll() is None, "the study ended during the outage; make its trials longer"
        assert driver.wait(timeout=900) == 0, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        stop(settings.state_dir)
    output = log.read_text()
    assert "tracking is off" not in output, output[-4000:]

    table = pd.read_parquet(study / "trials.parquet")
    assert len(table) == 4 and set(table["status"]) == {"TERMINATED"}
    start(settings)  # read back what the server kept
    try:
        client = MlflowClient(info.uri)
        parents, children = mlflow_runs(info.uri, "tracking-outage")
        assert len(parents) == 1 and len(children) == 4
        run_of = {r.data.tags["labelmix.trial_id"]: r.info.run_id for r in children}
        assert set(run_of) == set(table["trial_id"])
        during = down = 0
        for trial_id in table["trial_id"]:
            reports = results(trial_dir(study, trial_id))
            assert len(reports) == 12
            during += sum(down_at <= r["timestamp"] <= up_at for r in reports)
            down += sum(stopped_at < r["timestamp"] < restart_at for r in reports)  # the server surely gone
            logged = {}
            for report in reports:
                for key, value in metric_values(report).items():
                    logged.setdefault(key, []).append((report["training_iteration"], _comparable(value)))
            for key, points in logged.items():
                kept = [(m.step, _comparable(m.value)) for m in client.get_metric_history(run_of[trial_id], key)]
                assert sorted(kept, key=str) == sorted(points, key=str), (trial_id, key)
        assert down >= 2, f"only {down} reports fell in the outage"
        print(f"server stopping at +0 s, stopped +{stopped_at - down_at:.1f} s, restarted +{restart_at - down_at:.1f} s, "
              f"answering +{up_at - down_at:.1f} s; of {12 * len(table)} reports {during} were made in that time, "
              f"{down} while it was surely down; every one is in MLflow")
    finally:
        stop(settings.state_dir)


# --- 4. a trial whose loss becomes NaN -------------------------------------------------------------


def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path):
    cases = [{"name": "stable", "lr": 0.002}, {"name": "diverging", "lr": 1e12}]  # lr 1e12: NaN at step 2
    changes = dict(name="diverging", space={"cases": {"grid": cases}},
                   search={"algorithm": "grid", "concurrency": 2, "seed": 0})
    folder = tmp_path / "study"
    proc = cli("submit", str(write_spec(folder, **changes)), cwd=folder, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # some trials finished
    study = folder / "studies" / "diverging"
    table = pd.read_parquet(study / "trials.parquet").set_index("case")
    assert table.loc["stable", "status"] == "TERMINATED"
    assert table.loc["diverging", "status"] == "ERROR"
    reason = "NonFiniteLossError: non-finite loss at epoch 1, step"
    assert reason in table.loc["diverging", "error"]
    assert "1 of 2 trials failed" in proc.stderr
    assert f"  {table.loc['diverging', 'trial_id']}: labelmix.trainables.fit.{reason}" in proc.stderr, proc.stderr

    parents, children = mlflow_runs(f"sqlite:///{study / 'mlflow.db'}", "diverging")
    assert len(parents) == 1 and len(children) == 2
    by_case = {r.data.tags["case"]: r for r in children}
    assert by_case["diverging"].info.status == "FAILED"
    assert reason in by_case["diverging"].data.tags["labelmix.error"]
    assert by_case["stable"].info.status == "FINISHED" and "labelmix.error" not in by_case["stable"].data.tags


def test_a_diverging_train_run_stops_with_one_line(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({**BASE["fixed"], "lr": 1e12, "dataset": BASE["dataset"]}))
    proc = cli("train", str(config), "--out", str(tmp_path / "run"), cwd=tmp_path, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("labelmix:")]
    assert line.startswith("labelmix: training stopped: non-finite loss at epoch 1, step ")
    assert line.endswith(f"a lower lr (now 1e+12) or loss weights usually help; the epochs before are in "
                         f"{tmp_path / 'run' / 'metrics.jsonl'}")


# --- 5. storage that cannot hold a study; a dataset store changed after it was written ---------------


@pytest.fixture
def tmpfs(tmp_path):
    """mount(name, options) -> a tmpfs mounted at tmp_path/name (unmounted afterwards); needs root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", str(where)], check=False)


def _refused(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.startswith("labelmix: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "Ray" not in proc.stdout


# (case, mount options, storage path under the mount, the message after "storage.path: ")
UNWRITABLE = [
    ("read-only", "ro,size=1m", "studies", "{path} cannot be created: {mount} is on a read-only filesystem"),
    ("read-only-itself", "ro,size=1m", "", "{path} cannot be written: {mount} is on a read-only filesystem"),
    ("missing-parents-on-read-only", "ro,size=1m", "no/such/parent/studies",
     "{path} cannot be created: {mount} is on a read-only filesystem"),
]


@pytest.mark.parametrize("case", UNWRITABLE, ids=[c[0] for c in UNWRITABLE])
def test_unwritable_storage_is_refused_by_check_and_submit(case, tmp_path, tmpfs):
    _, options, under, expected = case
    mount = tmpfs("mnt", options)
    path = str(mount / under) if under else str(mount)
    spec = write_spec(tmp_path / "spec", storage={"path": path})
    message = f"storage.path: {expected.format(path=path, mount=mount)}"
    _refused(cli("check", str(spec), cwd=tmp_path, timeout=300), message)
    _refused(cli("submit", str(spec), cwd=tmp_path, timeout=300), message)
    assert list(mount.iterdir()) == []


def test_full_storage_is_refused_by_check_and_submit(tmp_path, tmpfs):
    mount = tmpfs("full", "size=64k")
    spec = write_spec(tmp_path / "spec", storage={"path": str(mount / "studies")})
    for command in ("check", "submit"):
        proc = cli(command, str(spec), cwd=tmp_path, timeout=300)
        _refused(proc, f"labelmix: error: storage.path: {mount}/studies/faults: only 0.1 MiB free on the filesystem "
                       f"of {mount}; a study needs at least 64 MiB there")
        assert list(mount.iterdir()) == []


def test_a_store_changed_after_it_was_written_is_refused_before_training(tmp_path):
    store = tmp_path / "store.parquet"
    proc = cli("data", "synth", "--out", str(store), "--volumes", "5", "--slices", "4", "--size", "64", "64",
               cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    original = pq.read_table(store)
    masks = original.column("mask").to_pylist()
    changed = bytearray(masks[3])
    changed[len(changed) // 2] ^= 1  # one pixel of one mask relabelled
    masks[3] = bytes(changed)
    altered = tmp_path / "altered.parquet"
    table = original.set_column(original.schema.get_field_index("mask"), "mask", [masks])
    with pq.ParquetWriter(altered, table.schema) as writer:  # the labelmix metadata kept as it was written
        writer.write_table(table)
        writer.add_key_value_metadata({b"labelmix": pq.read_metadata(store).metadata[b"labelmix"]})
    assert pq.read_metadata(altered).metadata[b"labelmix"] == pq.read_metadata(store).metadata[b"labelmix"]
    message = (f"{altered}: the store's content does not match the fingerprint recorded when it was written (")

    spec = write_spec(tmp_path / "spec", dataset={"path": str(altered)})
    for command in ("check", "submit"):
        _refused(cli(command, str(spec), cwd=tmp_path, timeout=300), f"labelmix: error: dataset.path: {message}")
    assert not (tmp_path / "spec" / "studies").exists()

    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({**BASE["fixed"], "dataset": {"path": str(altered)}}))
    _refused(cli("train", str(config), "--out", str(tmp_path / "run"), cwd=tmp_path, timeout=300),
             f"labelmix: error: {message}")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no epoch trained
    assert cli("data", "info", str(store), cwd=tmp_path, timeout=300).returncode == 0  # the original still loads
    _refused(cli("data", "info", str(altered), cwd=tmp_path, timeout=300), f"labelmix: error: {message}")


# --- 9. many short trials --------------------------------------------------------------------------


def run_load_study(folder: Path, trials: int, concurrency: int = 2, sample_s: float = 0.5) -> dict:
    """A study of ``trials`` one-step trials (32x32, one epoch) tracked into SQLite in the study folder,
    with the RSS of the driver (the `labelmix submit` process) and of its Ray GCS server sampled from
    /proc; returns what was measured and checked (benchmarks/study_load.py runs it with 200 trials)."""
    spec = {
        **BASE, "name": "load",
        "dataset": {"synthetic": {"volumes": 5, "slices": 2, "height": 32, "width": 32, "seed": 0}},
        "fixed": {**BASE["fixed"], "epochs": 1, "steps_per_epoch": 1},
        "search": {"algorithm": "random", "trials": trials, "concurrency": concurrency, "seed": 0},
    }
    started = time.time()
    driver, log = background(folder, "submit", str(write_spec(folder, **spec)))
    study = folder / "studies" / "load"
    samples: list[tuple[float, int, float, float | None]] = []  # (s since start, trials with a result, driver MiB, GCS MiB)

    def sample():
        gcs = None
        while driver.poll() is None:
            rss = rss_mb(driver.pid)
            if gcs is None:
                gcs = next((p for p in descendants(driver.pid) if "gcs_server" in cmdline(p)), None)
            if rss is not None:
                samples.append((time.time() - started, len(trial_dirs(study)), rss, rss_mb(gcs) if gcs else None))
            time.sleep(sample_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        status = driver.wait(timeout=3600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    sampler.join()
    wall = time.time() - started
    assert status == 0, log.read_text()[-4000:]

    table = pd.read_parquet(study / "trials.parquet")
    parents, children = mlflow_runs(f"sqlite:///{study / 'mlflow.db'}", "load")
    child_trials = [r.data.tags["labelmix.trial_id"] for r in children]
    # RSS when the first trial had reported, at each quarter of the trials, and at the last sample
    milestones = {}
    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        count = max(1, round(share * trials))
        first = next((s for s in samples if s[1] >= count), None)
        if first:
            milestones[str(count)] = {"at_s": round(first[0], 1), "driver_mb": round(first[2], 1),
                                      "gcs_mb": None if first[3] is None else round(first[3], 1)}
    running = [s for s in samples if s[1] >= 1]
    return {
        "trials": trials,
        "concurrency": concurrency,
        "wall_s": round(wall, 1),
        "table_rows": len(table),
        "table_unique_trials": int(table["trial_id"].nunique()),
        "table_terminated": int((table["status"] == "TERMINATED").sum()),
        "mlflow_parents": len(parents),
        "mlflow_children": len(children),
        "mlflow_unique_children": len(set(child_trials)),
        "mlflow_children_match_table": sorted(child_trials) == sorted(table["trial_id"]),
        "mlflow_finished_children": sum(r.info.status == "FINISHED" for r in children),
        "driver_rss_mb_first_trial": round(running[0][2], 1) if running else None,
        "driver_rss_mb_end": round(samples[-1][2], 1) if samples else None,
        "driver_rss_mb_peak": round(max(s[2] for s in samples), 1) if samples else None,
        "gcs_rss_mb_first_trial": round(running[0][3], 1) if running and running[0][3] else None,
        "gcs_rss_mb_end": next((round(s[3], 1) for s in reversed(samples) if s[3]), None),  # before Ray stops
        "rss_by_trials_done": milestones,
        "rss_samples": len(samples),
    }


def test_a_study_of_200_short_trials_records_each_once(tmp_path):
    try:
        found = run_load_study(tmp_path, trials=200)  # about 3 minutes on the 2 loaded cores here
    finally:  # 200 trial checkpoints are 5 GB: a full disk failed a whole CI run (OSError 28)
        shutil.rmtree(tmp_path / "studies", ignore_errors=True)
    print(json.dumps(found, indent=1))
    assert found["table_rows"] == found["table_unique_trials"] == found["table_terminated"] == 200
    assert found["mlflow_parents"] == 1
    assert found["mlflow_children"] == found["mlflow_unique_children"] == found["mlflow_finished_children"] == 200
    assert found["mlflow_children_match_table"]
    assert found["driver_rss_mb_first_trial"] and found["driver_rss_mb_end"]
