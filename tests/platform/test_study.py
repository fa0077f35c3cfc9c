"""Integration: real Ray, real files. A 4-trial study runs; a study whose driver is killed resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import TINY_STUDY, cli, write_spec

pytestmark = pytest.mark.slow


def test_four_trial_study_completes(tmp_path, mlflow_server):
    proc = cli("submit", str(write_spec(tmp_path)), "--tracking-uri", mlflow_server.uri, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = tmp_path / "studies" / "tiny"
    table = pd.read_parquet(study / "trials.parquet")
    assert len(table) == 4
    assert set(table["status"]) == {"TERMINATED"}
    assert (table["epoch"] == 2).all()
    frontier = pd.read_parquet(study / "frontier.parquet")
    assert len(frontier) >= 1 and frontier["pareto"].all()
    assert (study / "spec.yaml").is_file()
    assert "Frontier (val/miou vs cost/hours)" in proc.stdout
    assert "frontier" in proc.stdout and "finished" in proc.stdout  # the progress line

    # MLflow on a real server: one parent, exactly 4 children linked to it with per-epoch
    # metrics, pareto tags on the frontier trials, the frontier on the parent, their models
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert [m.step for m in client.get_metric_history(children[0].info.run_id, "val/miou")] == [1, 2]
    on_front = {r.data.tags["labelmix.trial_id"] for r in children if r.data.tags.get("pareto") == "true"}
    assert on_front == set(frontier["trial_id"])
    parent_files = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"frontier.json", "frontier.png", "frontier.html"} <= parent_files
    for run in children:
        if run.data.tags.get("pareto") == "true":
            assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/state.pt"]


def _terminated(study: Path) -> pd.DataFrame:
    try:
        table = pd.read_parquet(study / "trials.parquet")
    except (FileNotFoundError, OSError, ValueError):
        return pd.DataFrame()
    return table[table["status"] == "TERMINATED"] if len(table) else table


def _lose_searcher(study: Path, how: str) -> None:
    """What a driver killed while Tune copied its state can leave: the searcher's files missing or cut short."""
    from labelmix.platform.searcher import SAVED_STATE

    for pattern in SAVED_STATE:
        for path in study.glob(pattern):
            if how == "missing":
                path.unlink()
            else:
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# nsga2: Tune pickles the searcher at the start and at every save (Optuna 5.1's NSGA-II sampler did not pickle)
@pytest.mark.parametrize("searcher_state, algorithm", [("saved", "tpe"), ("missing", "tpe"), ("cut short", "tpe"),
                                                       ("saved", "nsga2")])
def test_resume_after_the_driver_is_killed(tmp_path, searcher_state, algorithm):
    spec = write_spec(tmp_path, search={"algorithm": algorithm, "trials": 4, "concurrency": 1, "seed": 0},
                      fixed={**TINY_STUDY["fixed"], "epochs": 3, "steps_per_epoch": 4})
    study = tmp_path / "studies" / "tiny"
    driver = subprocess.Popen([sys.executable, "-m", "labelmix.cli", "submit", str(spec)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(_terminated(study)) < 1:
        time.sleep(0.5)
    done_before = _terminated(study)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert 1 <= len(done_before) < 4, "the driver must be killed mid-study"
    if searcher_state != "saved":
        _lose_searcher(study, searcher_state)

    proc = cli("resume", str(study), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = pd.read_parquet(study / "trials.parquet")
    assert len(table) == 4 and set(table["status"]) == {"TERMINATED"}, proc.stdout + proc.stderr
    # the searcher went on where it was (or was rebuilt from the restored trials): 4 distinct configs
    assert len(table.filter(like="config/").astype(str).drop_duplicates()) == 4
    # finished trials were not rerun: same end time, and Tune's result log holds one line per epoch
    after = table.set_index("trial_id").loc[done_before["trial_id"]]
    assert list(after["ended_at"]) == list(done_before["ended_at"])
    for trial_id in done_before["trial_id"]:
        (result_file,) = [p for p in study.glob(f"*{trial_id}*/result.json")]
        assert len(result_file.read_text().splitlines()) == 3
    # MLflow (the default store in the study folder): one parent, exactly one child per trial
    client = MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    assert sorted(r.data.tags["labelmix.trial_id"] for r in children) == sorted(table["trial_id"])
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    # the restored tracking callback logged the restored results table's frontier (one pickle, one table)
    on_front = {r.data.tags["labelmix.trial_id"] for r in children if r.data.tags.get("pareto") == "true"}
    assert on_front == set(pd.read_parquet(study / "frontier.parquet")["trial_id"]) and on_front


def test_a_study_searched_on_dice_has_a_dice_frontier(tmp_path, mlflow_db):
    """spec.objectives [val/mdice max, cost/hours min]: frontier.parquet, the pareto tags in MLflow and
    `labelmix recommend` all use val/mdice."""
    from labelmix.platform.frontier import pareto_mask, recommend

    objectives = [{"metric": "val/mdice", "mode": "max"}, {"metric": "cost/hours", "mode": "min"}]
    proc = cli("submit", str(write_spec(tmp_path, name="dice", objectives=objectives)), "--tracking-uri", mlflow_db,
               cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "best val/mdice" in proc.stdout  # the progress line
    assert any(line.split()[:3] == ["trial_id", "cost/hours", "val/mdice"] for line in proc.stdout.splitlines())
    study = tmp_path / "studies" / "dice"
    done = pd.read_parquet(study / "trials.parquet").query("status == 'TERMINATED'").reset_index(drop=True)
    assert len(done) == 4
    hours, dice = done["cost/hours"].to_numpy(float), done["val/mdice"].to_numpy(float)
    expected = set(done["trial_id"][pareto_mask(hours, dice)])
    frontier = pd.read_parquet(study / "frontier.parquet")
    assert set(frontier["trial_id"]) == expected
    assert list(frontier["cost/hours"]) == sorted(frontier["cost/hours"])  # cheapest first
    assert frontier.attrs["objectives"] == [["val/mdice", "max"], ["cost/hours", "min"]]

    client = MlflowClient(mlflow_db)
    runs = client.search_runs([client.get_experiment_by_name("dice").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("labelmix.role") == "study"]
    assert json.loads(parent.data.tags["labelmix.objectives"]) == objectives
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["labelmix.trial_id"] for r in children if r.data.tags["pareto"] == "true"} == expected

    budget = float(np.median(hours))
    best = done["trial_id"][recommend(hours, dice, budget)]
    proc = cli("recommend", "--study-dir", str(study), "--budget-hours", str(budget), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"annotation hours: {best}" in proc.stdout and "val/mdice" in proc.stdout
    proc = cli("frontier", "--study-dir", str(study), "--format", "json", cwd=tmp_path, timeout=300)
    assert {r["trial_id"] for r in json.loads(proc.stdout)} == expected


def test_invalid_spec_exits_2_without_starting_ray(tmp_path):
    path = write_spec(tmp_path, scheduler={"type": "asha"})
    proc = cli("submit", str(path), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("labelmix: error: ") and "scheduler" in proc.stderr
    assert "Traceback" not in proc.stderr and "Ray" not in proc.stdout
