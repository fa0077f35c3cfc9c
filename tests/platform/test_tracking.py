"""MlflowTracking against real MLflow stores: hooks driven with stub Tune trials, as Tune calls them."""

import json
import math
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from ray.tune import Checkpoint
from ray.tune.experiment import Trial

from labelmix.platform.mlflow_links import runs_view
from labelmix.platform.mlflow_runs import check_reachable
from labelmix.platform.tracking import MlflowTracking
from labelmix.platform.trial_table import RUNS_FILE

# trial id -> (mix, ds_type, cost/hours, val/miou at epochs 1 and 2, outcome)
TRIALS = {
    "t_cheap": ({"full": 0.1, "box": 0.0, "global": 0.3, "none": 0.6}, "none", 1.0, (0.40, 0.50), "ok"),
    "t_worse": ({"full": 0.2, "box": 0.2, "global": 0.2, "none": 0.4}, "standard", 2.0, (0.35, 0.45), "ok"),
    "t_best": ({"full": 0.5, "box": 0.5, "global": 0.0, "none": 0.0}, "multi_label", 3.0, (0.60, 0.70), "ok"),
    "t_broken": ({"full": 0.0, "box": 1.0, "global": 0.0, "none": 0.0}, "none", 1.5, (0.30, math.nan), "error"),
}
FRONTIER = {"t_cheap", "t_best"}
SPEC_TEXT = "name: demo\nsearch: {algorithm: random, trials: 4}\n"


def stub_trials():
    trials = []
    for trial_id, (mix, ds_type, *_rest) in TRIALS.items():
        trial = Trial("__fake", trial_id=trial_id, stub=True)
        trial.config = {"mix": mix, "ds_type": ds_type}
        trials.append(trial)
    return trials


def config_of(trial):
    return {**trial.config, "epochs": 2}


def make_callback(uri, study_dir, **kwargs):
    return MlflowTracking(uri, "demo-exp", "demo", SPEC_TEXT, {"labelmix.dataset_fingerprint": "abc123"}, study_dir,
                          config_of=config_of, flush_s=0.2, **kwargs)


def fake_checkpoint(root, trial_id):
    """A checkpoint folder like Tune's: <trial>/checkpoint_000001/state.pt."""
    folder = root / "ckpt" / trial_id / "checkpoint_000001"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.pt").write_bytes(b"weights of " + trial_id.encode())
    return Checkpoint.from_directory(str(folder))


def drive(callback, trials, root, epochs=(1, 2), all_trials=None):
    """The hook order Tune uses: start, results (checkpoint each), complete or error, experiment end."""
    for trial in trials:
        trial.set_status(Trial.RUNNING)
        callback.on_trial_start(0, trials, trial)
    for epoch in epochs:
        for trial in trials:
            _mix, _ds, hours, mious, _outcome = TRIALS[trial.trial_id]
            result = {"epoch": float(epoch), "val/miou": mious[epoch - 1], "cost/hours": hours, "train/loss": 1.0 / epoch,
                      "time/epoch_s": 0.5, "training_iteration": epoch, "node_ip": "10.0.0.1", "done": False,
                      "val/iou/IRF": math.inf, "config": {"x": 1}}
            trial.update_last_result(result)  # as Tune does before it calls the callbacks
            callback.on_trial_result(0, trials, trial, result)
    for trial in trials:
        if TRIALS[trial.trial_id][4] == "error":
            trial.set_status(Trial.ERROR)
            callback.on_trial_error(0, trials, trial)
        else:
            callback.on_checkpoint(0, trials, trial, fake_checkpoint(root, trial.trial_id))
            trial.set_status(Trial.TERMINATED)
            callback.on_trial_complete(0, trials, trial)
    callback.on_experiment_end(all_trials or trials)


def study_runs(client):
    experiment = client.get_experiment_by_name("demo-exp")
    parents = client.search_runs([experiment.experiment_id], "tags.`labelmix.role` = 'study'")
    children = client.search_runs([experiment.experiment_id], "tags.`labelmix.trial_id` != ''")
    return experiment, parents, children


def frontier_rows(client, run_id, tmp_path):
    """frontier.json as records (client.load_table would search the global tracking URI, not the client's)."""
    path = client.download_artifacts(run_id, "frontier.json", str(tmp_path))
    table = json.loads(Path(path).read_text())  # pandas orient="split", as log_table writes it
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def check_study(client, tmp_path):
    experiment, parents, children = study_runs(client)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["labelmix.study"] == "demo"
    assert parent.data.tags["labelmix.dataset_fingerprint"] == "abc123"
    assert len(parent.data.tags["labelmix.spec_hash"]) == 16
    assert parent.data.tags["labelmix.code_version"].startswith("0.")
    assert parent.info.status == "FINISHED"
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"spec.yaml", "frontier.json", "frontier.png", "frontier.html"} <= parent_files

    assert len(children) == len(TRIALS)
    by_trial = {run.data.tags["labelmix.trial_id"]: run for run in children}
    assert set(by_trial) == set(TRIALS)
    for trial_id, run in by_trial.items():
        mix, ds_type, hours, mious, outcome = TRIALS[trial_id]
        assert run.info.run_name == trial_id
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["ds_type"] == ds_type
        assert float(run.data.params["mix.full"]) == mix["full"]
        assert run.data.params["epochs"] == "2"
        history = client.get_metric_history(run.info.run_id, "val/miou")
        assert [m.step for m in history] == [1, 2]
        assert history[0].value == pytest.approx(mious[0])
        assert run.data.metrics["cost/hours"] == hours
        assert "val/iou/IRF" not in run.data.metrics  # inf is not logged
        assert "training_iteration" not in run.data.metrics and "done" not in run.data.metrics
        assert run.data.tags["pareto"] == ("true" if trial_id in FRONTIER else "false")
        models = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
        if trial_id in FRONTIER:
            assert run.info.status == "FINISHED"
            assert models == {"model/state.pt"}
        else:
            assert not models
    assert by_trial["t_broken"].info.status == "FAILED"
    assert by_trial["t_broken"].data.tags["labelmix.error"]
    assert by_trial["t_worse"].info.status == "FINISHED"

    frontier = frontier_rows(client, parent.info.run_id, tmp_path)
    assert [row["trial_id"] for row in frontier] == ["t_cheap", "t_best"]  # by cost, each once
    assert frontier[0]["config/mix.global"] == 0.3 and frontier[1]["val/miou"] == 0.7
    saved = json.loads((tmp_path / "study" / RUNS_FILE).read_text())
    assert saved["parent"] == parent.info.run_id and set(saved["children"]) == set(TRIALS)
    return parent, by_trial


def test_study_logged_once_and_resumed_without_duplicates(mlflow_db, tmp_path):
    client = MlflowClient(mlflow_db)
    trials = stub_trials()
    callback = make_callback(mlflow_db, tmp_path / "study")
    drive(callback, trials, tmp_path)
    parent, children = check_study(client, tmp_path)

    # Resume with the runs file, as Tune does it: finished trials come back restored (status and last
    # result, no hooks); the broken one is retried and starts again.
    again = make_callback(mlflow_db, tmp_path / "study")
    trials = stub_trials()
    for trial in trials[:3]:
        _mix, _ds, hours, mious, _ = TRIALS[trial.trial_id]
        trial.set_status(Trial.TERMINATED)
        trial.run_metadata.last_result = {"epoch": 2.0, "val/miou": mious[1], "cost/hours": hours}
    drive(again, trials[3:], tmp_path, epochs=(2,), all_trials=trials)
    _, parents, runs = study_runs(client)
    assert [p.info.run_id for p in parents] == [parent.info.run_id]
    assert {r.info.run_id for r in runs} == {r.info.run_id for r in children.values()}
    assert {r.data.tags["labelmix.trial_id"] for r in runs if r.data.tags["pareto"] == "true"} == FRONTIER
    broken = client.get_run(children["t_broken"].info.run_id)
    assert [m.step for m in client.get_metric_history(broken.info.run_id, "cost/hours")] == [1, 2, 2]
    assert broken.info.status == "FAILED" and "labelmix.previous_error" in broken.data.tags

    # Resume without it (another machine, a deleted file): found again by tag.
    (tmp_path / "study" / RUNS_FILE).unlink()
    third = make_callback(mlflow_db, tmp_path / "study")
    drive(third, stub_trials(), tmp_path)
    _, parents, runs = study_runs(client)
    assert len(parents) == 1 and len(runs) == len(TRIALS)
    assert third.child_ids == {t: r.info.run_id for t, r in children.items()}
    # the frontier of the resumed study is computed over every trial, old and new
    assert {r.data.tags["labelmix.trial_id"] for r in runs if r.data.tags["pareto"] == "true"} == FRONTIER
    # frontier.json was replaced, not appended to (log_table appends)
    assert [r["trial_id"] for r in frontier_rows(client, parent.info.run_id, tmp_path)] == ["t_cheap", "t_best"]


def test_a_trial_the_finished_study_lost_has_its_run_deleted_and_a_replayed_step_is_logged_once(mlflow_db, tmp_path):
    """A driver killed after a trial's run was created, before Tune's snapshot held the trial: the
    resumed study ends without that trial, and its run goes. A worker killed between a result and
    its checkpoint: the trial reports that epoch again, and MLflow keeps one point per epoch."""
    client = MlflowClient(mlflow_db)
    trials = stub_trials()
    callback = make_callback(mlflow_db, tmp_path / "study")
    lost = next(t for t in trials if t.trial_id == "t_cheap")
    kept = [t for t in trials if t is not lost]
    callback.on_trial_start(0, trials, lost)
    callback.on_trial_result(0, trials, kept[0], {"epoch": 1.0, "val/miou": 0.25, "training_iteration": 1})
    callback.on_trial_result(0, trials, kept[0], {"epoch": 1.0, "val/miou": 0.75, "training_iteration": 1})
    callback.flush()
    lost_run = callback.child_ids["t_cheap"]
    drive(callback, kept, tmp_path)
    _, _, children = study_runs(client)
    assert sorted(r.data.tags["labelmix.trial_id"] for r in children) == sorted(t.trial_id for t in kept)
    assert client.get_run(lost_run).info.lifecycle_stage == "deleted"
    assert "t_cheap" not in json.loads((tmp_path / "study" / "mlflow_runs.json").read_text())["children"]
    first = callback.child_ids[kept[0].trial_id]
    assert [(m.step, m.value) for m in client.get_metric_history(first, "val/miou")] == [
        (1, 0.25), (2, TRIALS[kept[0].trial_id][3][1])]


def test_a_trial_in_the_table_keeps_its_run_though_tune_lost_it(mlflow_db, tmp_path):
    """A trial that finished before a killed driver's last snapshot is in the trial table, not in the
    resumed Tune's trials: its run stays."""
    client = MlflowClient(mlflow_db)
    trials = stub_trials()
    callback = make_callback(mlflow_db, tmp_path / "study", table_of=lambda: callback.table(trials))
    finished = next(t for t in trials if t.trial_id == "t_cheap")
    callback.on_trial_start(0, trials, finished)
    callback.flush()
    drive(callback, [t for t in trials if t is not finished], tmp_path)
    _, _, children = study_runs(client)
    assert sorted(r.data.tags["labelmix.trial_id"] for r in children) == sorted(t.trial_id for t in trials)


def test_a_finished_trial_no_hook_saw_gets_its_run_at_the_end(mlflow_db, tmp_path):
    """A driver killed after a trial ended, before the writer sent its run: the resumed study restores
    the trial as finished and no hook sees it; its run is written at the end, from its last result."""
    client = MlflowClient(mlflow_db)
    trials = stub_trials()
    callback = make_callback(mlflow_db, tmp_path / "study")
    restored = next(t for t in trials if t.trial_id == "t_cheap")
    restored.update_last_result({"epoch": 2.0, "val/miou": 0.4, "cost/hours": 0.5, "training_iteration": 2})
    restored.set_status(Trial.TERMINATED)
    drive(callback, [t for t in trials if t is not restored], tmp_path, all_trials=trials)
    _, _, children = study_runs(client)
    assert sorted(r.data.tags["labelmix.trial_id"] for r in children) == sorted(t.trial_id for t in trials)
    run = client.get_run(callback.child_ids["t_cheap"])
    assert run.info.status == "FINISHED" and run.data.metrics["val/miou"] == 0.4
    assert run.data.params["ds_type"] == "none"


def test_callback_survives_pickling(mlflow_db, tmp_path):
    """Tune pickles its RunConfig, callbacks included, into tuner.pkl (ray.cloudpickle)."""
    from ray import cloudpickle

    callback = make_callback(mlflow_db, tmp_path / "study")
    callback.open()
    callback.on_trial_start(0, [], stub_trials()[0])
    copy = cloudpickle.loads(cloudpickle.dumps(callback))
    assert copy.parent_id == callback.parent_id and copy._writer is None
    callback.flush()


def test_a_callback_pickled_before_the_writer_kept_the_failures_restores(mlflow_db, tmp_path, monkeypatch):
    """A study started before tracking_writer.py has its callback in tuner.pkl with ``failures`` and
    ``disabled`` on it and no ``_child_runs``: it restores, reattaches its runs and logs."""
    from ray import cloudpickle

    callback = make_callback(mlflow_db, tmp_path / "study")
    trial = stub_trials()[0]
    callback.on_trial_start(0, [trial], trial)
    assert callback.flush(timeout_s=60)

    def old_getstate(self):
        state = {k: v for k, v in self.__dict__.items() if k != "_child_runs"}
        state.update(_client=None, _writer=None, checkpoints={}, _started=set(), failures=0, disabled=False)
        return state

    monkeypatch.setattr(MlflowTracking, "__getstate__", old_getstate)
    pickled = cloudpickle.dumps(callback)
    monkeypatch.undo()
    copy = cloudpickle.loads(pickled)
    assert not {"failures", "disabled", "_child_runs"} & set(vars(copy)) and not copy.disabled
    copy.on_trial_result(0, [trial], trial, {"epoch": 1.0, "val/miou": 0.5})
    assert copy.flush(timeout_s=60)
    assert copy.child_ids == callback.child_ids
    history = MlflowClient(mlflow_db).get_metric_history(callback.child_ids[trial.trial_id], "val/miou")
    assert [(m.step, m.value) for m in history] == [(1, 0.5)]


def test_server_study_and_ui(mlflow_server, tmp_path):
    uri = mlflow_server.uri
    check_reachable(uri)
    callback = make_callback(uri, tmp_path / "study")
    drive(callback, stub_trials(), tmp_path)
    client = MlflowClient(uri)
    parent, children = check_study(client, tmp_path)

    with urllib.request.urlopen(f"{uri}/api/2.0/mlflow/runs/get?run_id={parent.info.run_id}", timeout=10) as r:
        assert r.status == 200 and json.loads(r.read())["run"]["info"]["run_id"] == parent.info.run_id
    with urllib.request.urlopen(f"{uri}/", timeout=10) as r:
        assert r.status == 200
    experiment = client.get_experiment_by_name("demo-exp")
    front = client.search_runs([experiment.experiment_id], 'tags.pareto = "true"')
    assert {r.data.tags["labelmix.trial_id"] for r in front} == FRONTIER
    # artifacts went through the server's proxy, not a client-side path
    assert client.list_artifacts(children["t_best"].info.run_id, "model")[0].file_size > 0


def test_hooks_cost_microseconds(mlflow_db, tmp_path):
    """The overhead budget (2 % of trial time): hooks on Tune's driver loop only queue records."""
    callback = make_callback(mlflow_db, tmp_path / "study")
    callback.flush_s = 5.0
    trial = stub_trials()[0]
    callback.on_trial_start(0, [trial], trial)
    started = time.perf_counter()
    for epoch in range(1, 201):
        callback.on_trial_result(0, [trial], trial, {"epoch": float(epoch), "val/miou": 0.5, "cost/hours": 1.0,
                                                     **{f"val/iou/c{i}": 0.1 for i in range(20)}})
    per_call = (time.perf_counter() - started) / 200
    assert per_call < 2e-3, per_call
    assert callback.flush(timeout_s=60)
    run_id = callback.child_ids["t_cheap"]
    assert len(MlflowClient(mlflow_db).get_metric_history(run_id, "val/iou/c7")) == 200


def test_frontier_pictures(tmp_path):
    """frontier.png is a picture; frontier.html is one offline page (inline SVG, no fetched resources)."""
    import xml.etree.ElementTree as ET

    import pandas as pd

    from labelmix.platform.plots import frontier_html, frontier_png, mix_label

    table = pd.DataFrame([
        {"trial_id": tid, "status": "TERMINATED" if outcome == "ok" else "ERROR", "cost/hours": hours,
         "val/miou": mious[1], "config/ds_type": ds, **{f"config/mix.{k}": v for k, v in mix.items()},
         "pareto": tid in FRONTIER}
        for tid, (mix, ds, hours, mious, outcome) in TRIALS.items()
    ])
    png = frontier_png(table, tmp_path / "f.png", title="demo")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = frontier_html(table, tmp_path / "f.html", title="demo").read_text()
    assert "src=" not in page and "href=" not in page and "@import" not in page
    assert page.count("http") == 1  # the SVG namespace only
    svg = ET.fromstring(page[page.index("<svg"):page.index("</svg>") + 6])
    circles = svg.findall("{http://www.w3.org/2000/svg}circle")
    assert len(circles) == 3  # t_broken has no mIoU: not drawn
    infos = [json.loads(c.get("data-info")) for c in circles if c.get("class") == "front"]
    assert {i["trial"] for i in infos} == FRONTIER
    assert {i["mix"] for i in infos} == {"F10% B0% G30% N60%", "F50% B50% G0% N0%"}
    assert "annotation cost (hours)" in page and "foreground mIoU (val)" in page
    assert mix_label({"config/ds_type": "none"}) == "?"
    assert mix_label({"config/mix.full": 0.05, "config/mix.global": 0.95, "config/mix_selection": "classes"}) \
        == "F5% B0% G95% N0% by class"
    assert mix_label({"config/mix.full": 0.05, "config/mix.none": 0.95, "config/mix_selection": "random"}) == "F5% B0% G0% N95%"
    frontier_html(table.iloc[:0], tmp_path / "empty.html")  # an empty study still gives a page
    frontier_png(table.iloc[:0], tmp_path / "empty.png")


def test_study_tracking_for_a_builtin_spec(mlflow_db, tmp_path):
    """The one call study.py makes: the parent exists before Ray starts; params are the decoded config."""
    from labelmix.platform.spec import load_spec
    from labelmix.platform.tracking import decoded_config, study_tracking

    spec, text = load_spec("quickstart")
    tracking = study_tracking(spec, text, tmp_path / "quickstart", cli_uri=mlflow_db,
                              tags={"labelmix.dataset_fingerprint": "f00"})
    client = MlflowClient(mlflow_db)
    parent = client.get_run(tracking.parent_id)
    assert parent.data.tags["labelmix.study"] == "quickstart"
    assert client.get_experiment(parent.info.experiment_id).name == spec.tracking.experiment
    trial = Trial("__fake", trial_id="q1", stub=True)
    trial.config = {"mix.full": 1.0, "mix.box": 1.0, "mix.global": 0.0, "mix.none": 2.0, "ds_type": "none",
                    "ema_decay": 0.99}
    tracking.on_trial_start(0, [trial], trial)
    tracking.flush()
    params = client.get_run(tracking.child_ids["q1"]).data.params
    assert params["mix.full"] == "0.25" and params["mix.none"] == "0.5"  # weights normalised to fractions
    assert params["ds_type"] == "none" and params["epochs"] == str(decoded_config(spec, trial)["epochs"])


def test_experiment_is_tagged_for_training_with_the_study_views(mlflow_db, tmp_path):
    callback = make_callback(mlflow_db, tmp_path / "study", settings=("ds_type",),
                             tags_of=lambda trial: {"case": f"case of {trial.trial_id}"})
    drive(callback, stub_trials(), tmp_path)
    client = MlflowClient(mlflow_db)
    experiment, _, children = study_runs(client)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for view in ("frontier", "trials"):
        state = json.loads(experiment.tags[f"mlflow.sharedViewState.labelmix-demo-{view}"])
        assert state == runs_view("demo", view, settings=("ds_type",))
        # the view's filter is a search the server runs
        found = {r.data.tags["labelmix.trial_id"] for r in client.search_runs([experiment.experiment_id], state["searchFilter"])}
        assert found == (FRONTIER if view == "frontier" else set(TRIALS))
    for run in children:
        assert run.data.tags["case"] == f"case of {run.data.tags['labelmix.trial_id']}"
        assert set(run.data.params) >= {"mix.full", "mix.box", "mix.global", "mix.none", "ds_type"}
        assert {"val/miou", "cost/hours"} <= set(run.data.metrics)

    # someone chose another kind: kept; a resumed run from before the case tag gets it
    client.set_experiment_tag(experiment.experiment_id, "mlflow.experimentKind", "finetuning")
    run_id = callback.child_ids["t_cheap"]
    client.delete_tag(run_id, "case")
    again = make_callback(mlflow_db, tmp_path / "study", tags_of=lambda trial: {"case": "later"})
    trial = stub_trials()[0]
    again.on_trial_start(0, [trial], trial)
    assert again.flush(timeout_s=60)
    assert client.get_experiment(experiment.experiment_id).tags["mlflow.experimentKind"] == "finetuning"
    assert client.get_run(run_id).data.tags["case"] == "later"
    assert again.frontier_url is None and again.run_url is None  # a SQLite store: no UI links


def test_trial_tags_name_the_case():
    from labelmix.platform.spec import load_spec
    from labelmix.platform.tracking import trial_tags

    spec, _ = load_spec("annotation-types")
    trial = Trial("__fake", trial_id="a1", stub=True)
    trial.config = {"seed": 0, "cases": 3}
    assert trial_tags(spec, trial) == {"case": "5% + boxes"}
    trial.config = {"mix.full": 1.0, "ds_type": "none"}
    assert trial_tags(load_spec("quickstart")[0], trial) == {}
