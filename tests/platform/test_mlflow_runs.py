"""The Ray-free MLflow helpers of a study: where to log, its runs record, what a result logs."""

import json
import math
import subprocess
import sys

import pytest

from labelmix.errors import UserError
from labelmix.platform.mlflow_runs import (
    check_reachable,
    metric_values,
    read_runs_record,
    resolve_tracking_uri,
    write_runs_record,
)
from labelmix.platform.trial_table import RUNS_FILE


def test_the_mlflow_modules_import_no_ray():
    """browse, report and the CLI's commands read a study back through these without starting Ray."""
    code = ("import sys\n"
            "import labelmix.platform.mlflow_runs, labelmix.platform.mlflow_links, labelmix.platform.tracking_writer\n"
            "print('ray' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False"]


def test_runs_record_round_trip(tmp_path):
    assert read_runs_record(tmp_path) == {}
    write_runs_record(tmp_path / "study", {"parent": "p1", "children": {"t1": "c1"}})
    assert read_runs_record(tmp_path / "study") == {"parent": "p1", "children": {"t1": "c1"}}
    assert [p.name for p in (tmp_path / "study").iterdir()] == [RUNS_FILE]  # no temporary file left
    (tmp_path / "study" / RUNS_FILE).write_text(json.dumps(["not", "a", "record"]))
    assert read_runs_record(tmp_path / "study") == {}


def test_check_reachable_closed_port(closed_port):
    with pytest.raises(UserError, match=r"not reachable .*labelmix server start"):
        check_reachable(f"http://127.0.0.1:{closed_port}")
    check_reachable("sqlite:///nowhere.db")  # only servers are checked


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    class Spec:
        class tracking:
            uri = None

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, Spec, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(None, Spec, tmp_path) == "http://env:5000"
    Spec.tracking.uri = "http://spec:5000"
    assert resolve_tracking_uri(None, Spec, tmp_path) == "http://spec:5000"
    assert resolve_tracking_uri("http://cli:5000", Spec, tmp_path) == "http://cli:5000"


def test_metric_values_keep_known_numeric_names():
    result = {"val/miou": 0.5, "test/miou": math.nan, "cost/hours": 3, "epoch": 2.0, "time/epoch_s": 1.0,
              "labels/full": 4, "train/loss": float("inf"), "time_total_s": 9.0, "status/over_budget": 1.0,
              "done": True, "val/name": "x", "config": {}}
    values = metric_values(result)
    assert set(values) == {"val/miou", "test/miou", "cost/hours", "epoch", "time/epoch_s", "labels/full"}
    assert math.isnan(values["test/miou"])
