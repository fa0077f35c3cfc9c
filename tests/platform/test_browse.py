"""Reading a study back from MLflow: frontier and budget recommendation over a hand-built experiment."""

import argparse
import io
import json

import pandas as pd
import pytest
from mlflow import MlflowClient

from labelmix.errors import UserError
from labelmix.platform import browse
from labelmix.platform.mlflow_runs import artifact_location
from labelmix.platform.trial_table import frontier_rows

# trial id -> (cost/hours, val/miou, MLflow status, mix full/box/global/none)
CHILDREN = {
    "a_cheap": (1.0, 0.50, "FINISHED", (0.1, 0.0, 0.3, 0.6)),
    "b_dominated": (2.0, 0.45, "FINISHED", (0.2, 0.2, 0.2, 0.4)),
    "c_best": (4.0, 0.70, "FINISHED", (0.5, 0.5, 0.0, 0.0)),
    "d_failed": (0.5, 0.90, "FAILED", (0.0, 1.0, 0.0, 0.0)),  # never counts, however good it looks
}


def add_study(client, experiment_id, name, children):
    parent = client.create_run(experiment_id, tags={"labelmix.study": name, "labelmix.role": "study"}, run_name=name)
    ids = {}
    for trial_id, (hours, miou, status, mix) in children.items():
        run = client.create_run(experiment_id, run_name=trial_id, tags={
            "mlflow.parentRunId": parent.info.run_id, "labelmix.trial_id": trial_id})
        for key, value in zip(("full", "box", "global", "none"), mix):
            client.log_param(run.info.run_id, f"mix.{key}", value)
        client.log_param(run.info.run_id, "ds_type", "multi_label")
        client.log_metric(run.info.run_id, "cost/hours", hours, step=2)
        client.log_metric(run.info.run_id, "val/miou", miou - 0.1, step=1)
        client.log_metric(run.info.run_id, "val/miou", miou, step=2)
        client.set_terminated(run.info.run_id, status)
        ids[trial_id] = run.info.run_id
    client.set_terminated(parent.info.run_id, "FINISHED")
    return parent.info.run_id, ids


@pytest.fixture
def study(mlflow_db):
    client = MlflowClient(mlflow_db)
    experiment_id = client.create_experiment("oct", artifact_location=artifact_location(mlflow_db))
    add_study(client, experiment_id, "older", {"z_old": (0.1, 0.99, "FINISHED", (0, 0, 0, 1))})
    parent_id, ids = add_study(client, experiment_id, "demo", CHILDREN)
    return mlflow_db, client, experiment_id, parent_id, ids


def cli(*argv):
    parser = argparse.ArgumentParser(prog="labelmix")
    browse.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_table_and_frontier(study):
    _uri, client, experiment_id, parent_id, ids = study
    table = browse.trials_table(client, experiment_id, parent_id)
    assert set(table["trial_id"]) == set(CHILDREN)
    assert table.set_index("trial_id").loc["c_best", "val/miou"] == 0.70  # the last value, not the first
    assert table.set_index("trial_id").loc["a_cheap", "config/mix.global"] == 0.3  # params parsed back
    front = frontier_rows(table)
    assert list(front["trial_id"]) == ["a_cheap", "c_best"]
    assert list(front["run_id"]) == [ids["a_cheap"], ids["c_best"]]


@pytest.mark.parametrize("budget, expected", [(0.5, None), (0.99, None), (1.0, "a_cheap"), (3.9, "a_cheap"),
                                              (4.0, "c_best"), (1000, "c_best")])
def test_recommend(study, budget, expected):
    _uri, client, experiment_id, parent_id, _ids = study
    best = browse.recommend_trial(browse.trials_table(client, experiment_id, parent_id), budget)
    assert (None if best is None else best["trial_id"]) == expected


def test_study_is_the_latest_unless_named(study):
    uri, client, *_ = study
    experiment = browse.find_experiment(client, "oct", uri)
    assert browse.find_study_run(client, experiment, None).data.tags["labelmix.study"] == "demo"
    assert browse.find_study_run(client, experiment, "older").data.tags["labelmix.study"] == "older"
    with pytest.raises(UserError, match="no study 'nope' in experiment 'oct'; studies there: demo, older"):
        browse.find_study_run(client, experiment, "nope")


def test_frontier_formats(study, tmp_path, capsys):
    uri = study[0]
    assert cli("frontier", "--experiment", "oct", "--tracking-uri", uri) == 0
    out = capsys.readouterr().out
    assert "study demo" in out and "3 of 4 trials finished, 2 on the frontier" in out
    assert "a_cheap" in out and "c_best" in out and "b_dominated" not in out and "d_failed" not in out

    assert cli("frontier", "--experiment", "oct", "--tracking-uri", uri, "--format", "csv") == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(frame["trial_id"]) == ["a_cheap", "c_best"] and "config/mix.full" in frame

    assert cli("frontier", "--experiment", "oct", "--tracking-uri", uri, "--format", "json") == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["trial_id"] for r in records] == ["a_cheap", "c_best"] and records[1]["cost/hours"] == 4.0

    out_file = tmp_path / "front.parquet"
    assert cli("frontier", "--experiment", "oct", "--tracking-uri", uri, "--format", "parquet", "--out", str(out_file)) == 0
    assert list(pd.read_parquet(out_file)["trial_id"]) == ["a_cheap", "c_best"]
    with pytest.raises(UserError, match="--out"):
        cli("frontier", "--experiment", "oct", "--tracking-uri", uri, "--format", "parquet")


def test_frontier_log(study, capsys):
    uri, client, _experiment_id, parent_id, ids = study
    assert cli("frontier", "--experiment", "oct", "--tracking-uri", uri, "--log", "--format", "json") == 0
    assert {"frontier.json", "frontier.png", "frontier.html"} <= {a.path for a in client.list_artifacts(parent_id)}
    tags = {trial: client.get_run(run_id).data.tags["pareto"] for trial, run_id in ids.items()}
    assert tags == {"a_cheap": "true", "b_dominated": "false", "c_best": "true", "d_failed": "false"}


def test_recommend_command(study, capsys):
    uri = study[0]
    assert cli("recommend", "--experiment", "oct", "--tracking-uri", uri, "--budget-hours", "3") == 0
    out = capsys.readouterr().out
    assert "a_cheap" in out and "F10% B0% G30% N60%" in out and "0.5000" in out and "ds_type" in out

    assert cli("recommend", "--experiment", "oct", "--tracking-uri", uri, "--budget-hours", "0.5") == 1
    err = capsys.readouterr().err
    assert "no finished trial fits 0.5 annotation hours" in err and "a_cheap" in err and "1.00 h" in err


def test_clear_errors(study, tmp_path, monkeypatch):
    uri = study[0]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UserError, match=r"experiment 'nope' not found at .*experiments there: .*oct"):
        cli("recommend", "--experiment", "nope", "--tracking-uri", uri, "--budget-hours", "3")
    with pytest.raises(UserError, match="no MLflow database"):
        cli("frontier", "--experiment", "oct", "--tracking-uri", f"sqlite:///{tmp_path}/missing.db")
    with pytest.raises(UserError, match="no tracking store"):
        cli("frontier", "--experiment", "oct", "--tracking-uri", "")


def test_run_url():
    assert browse.run_url("http://127.0.0.1:5000/", "3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc"
    assert browse.run_url("sqlite:///x.db", "3", "abc") is None


def test_a_study_read_back_on_its_own_objectives(mlflow_db, capsys):
    """The study run's labelmix.objectives tag: frontier, pareto tags and recommend follow val/mdice."""
    client = MlflowClient(mlflow_db)
    experiment_id = client.create_experiment("dice", artifact_location=artifact_location(mlflow_db))
    parent_id, ids = add_study(client, experiment_id, "by-dice", {
        "a_cheap": (1.0, 0.50, "FINISHED", (0.1, 0.0, 0.3, 0.6)),
        "b_dice": (2.0, 0.45, "FINISHED", (0.2, 0.2, 0.2, 0.4)),  # dominated on mIoU, on the Dice front
        "c_miou": (4.0, 0.70, "FINISHED", (0.5, 0.5, 0.0, 0.0)),  # on the mIoU front, dominated on Dice
    })
    for trial_id, dice in (("a_cheap", 0.60), ("b_dice", 0.72), ("c_miou", 0.68)):
        client.log_metric(ids[trial_id], "val/mdice", dice, step=2)
    client.set_tag(parent_id, "labelmix.objectives", json.dumps(
        [{"metric": "val/mdice", "mode": "max"}, {"metric": "cost/hours", "mode": "min"}]))

    assert list(frontier_rows(browse.trials_table(client, experiment_id, parent_id))["trial_id"]) == ["a_cheap", "c_miou"]
    assert cli("frontier", "--experiment", "dice", "--tracking-uri", mlflow_db, "--log") == 0
    out = capsys.readouterr().out
    assert "3 of 3 trials finished, 2 on the frontier of val/mdice vs cost/hours" in out
    assert "b_dice" in out and "c_miou" not in out
    tags = {trial: client.get_run(run_id).data.tags["pareto"] for trial, run_id in ids.items()}
    assert tags == {"a_cheap": "true", "b_dice": "true", "c_miou": "false"}

    assert cli("recommend", "--experiment", "dice", "--tracking-uri", mlflow_db, "--budget-hours", "5") == 0
    out = capsys.readouterr().out
    assert "within 5 annotation hours: b_dice" in out and "val/mdice       0.7200" in out
