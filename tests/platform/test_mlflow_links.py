"""What a user clicks in MLflow's UI for a study: the runs-table views and the links (Ray-free)."""

import json

import pytest

from labelmix.platform.mlflow_links import (
    artifact_url,
    browse_command,
    experiment_url,
    frontier_runs_url,
    parent_run_url,
    runs_view,
    study_links,
    trials_runs_url,
)
from labelmix.platform.trial_table import RUNS_FILE

UI = "http://127.0.0.1:5000"


def test_frontier_runs_url_filters_on_the_pareto_tag_in_the_training_runs_view():
    # workflowType=machine_learning: MLflow 3.17 opens the model-training side, not the GenAI overview
    assert frontier_runs_url(UI + "/", "3") == (
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
        "&searchFilter=tags.pareto%20%3D%20%22true%22&orderByKey=metrics.%60cost%2Fhours%60&orderByAsc=true")
    # a study's shared view (filter, order and columns in the experiment tag)
    assert frontier_runs_url(UI, "3", "quickstart") == (
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
        "&viewStateShareKey=labelmix-quickstart-frontier")
    assert trials_runs_url(UI, "3", "quickstart") == (
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
        "&viewStateShareKey=labelmix-quickstart-trials")
    assert experiment_url(UI, "3") == "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
    for url in (frontier_runs_url("sqlite:///x.db", "3"), trials_runs_url("file:///m", "3", "q"),
                experiment_url("databricks", "3")):
        assert url is None  # a file store has no UI to link to


def test_parent_run_and_artifact_urls():
    assert parent_run_url(UI, "3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert artifact_url(UI, "3", "abc", "frontier.html") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc/artifacts/frontier.html?workflowType=machine_learning")
    assert artifact_url(UI, "3", "abc", "model/state pt") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc/artifacts/model/state%20pt?workflowType=machine_learning")
    assert parent_run_url("sqlite:///x.db", "3", "abc") is None and artifact_url("sqlite:///x.db", "3", "a", "f") is None


def test_runs_views_show_mix_cost_and_quality():
    frontier = runs_view("quickstart", "frontier", settings=("mix.full", "ds_type"))
    assert frontier == {
        "searchFilter": 'tags.`labelmix.study` = "quickstart" and tags.pareto = "true"',
        "orderByKey": "metrics.`cost/hours`", "orderByAsc": True,
        "selectedColumns": ["params.`mix.full`", "params.`mix.box`", "params.`mix.global`", "params.`mix.none`",
                            "params.`ds_type`", "metrics.`cost/hours`", "metrics.`val/miou`",
                            "metrics.`cost/reduction`", "tags.`case`", "tags.`pareto`"],
    }
    trials = runs_view("quickstart", "trials", settings=("mix.full", "ds_type"))
    assert trials == {**frontier, "searchFilter": 'tags.`labelmix.study` = "quickstart" and tags.`labelmix.trial_id` != ""',
                      "orderByKey": "metrics.`val/miou`", "orderByAsc": False}
    # the frontier axes follow the objectives: Dice against the cost reduction (higher is cheaper)
    dice = runs_view("s", "frontier", [("val/mdice", "max"), ("cost/reduction", "max")])
    assert (dice["orderByKey"], dice["orderByAsc"]) == ("metrics.`cost/reduction`", False)
    assert dice["selectedColumns"][4:8] == ["metrics.`cost/reduction`", "metrics.`val/mdice`", "metrics.`cost/hours`",
                                            "metrics.`val/miou`"]
    with pytest.raises(ValueError, match="view"):
        runs_view("s", "best")


def test_study_links_from_the_runs_file(tmp_path):
    record = {"uri": "http://user:***@127.0.0.1:5000/", "experiment": "quickstart", "experiment_id": "4",
              "study": "quickstart", "parent": "p1", "children": {"t1": "c1"}}
    (tmp_path / RUNS_FILE).write_text(json.dumps(record))
    ml = "?workflowType=machine_learning"
    assert study_links(tmp_path) == {
        "frontier": f"http://127.0.0.1:5000/#/experiments/4/runs{ml}&viewStateShareKey=labelmix-quickstart-frontier",
        "trials": f"http://127.0.0.1:5000/#/experiments/4/runs{ml}&viewStateShareKey=labelmix-quickstart-trials",
        "study run": f"http://127.0.0.1:5000/#/experiments/4/runs/p1{ml}",
        "frontier plot": f"http://127.0.0.1:5000/#/experiments/4/runs/p1/artifacts/frontier.html{ml}",
    }
    (tmp_path / "report.html").write_text("<html></html>")
    assert study_links(tmp_path)["report"] == f"http://127.0.0.1:5000/#/experiments/4/runs/p1/artifacts/report.html{ml}"
    assert browse_command(tmp_path) is None

    # a SQLite store in the study folder: no links, a command that serves it; then the links of that server
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / RUNS_FILE).write_text(json.dumps({**record, "uri": db}))
    assert study_links(tmp_path) == {}
    assert browse_command(tmp_path, port=5001) == (
        f"labelmix server start --backend-store-uri {db} --state-dir {tmp_path.resolve() / 'mlflow-server'} --port 5001")
    assert study_links(tmp_path, server="http://127.0.0.1:5001")["study run"] == f"http://127.0.0.1:5001/#/experiments/4/runs/p1{ml}"
    assert study_links(tmp_path / "nowhere") == {} and browse_command(tmp_path / "nowhere") is None
