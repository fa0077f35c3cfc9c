"""The tracking callback's background writer against a recording stand-in for MlflowClient (no server, no Ray)."""

from types import SimpleNamespace

from labelmix.platform.tracking_writer import MAX_FAILURES, ChildRunWriter, EndChild, Metrics, StartChild, WriterThread


class RecordingClient:
    """The MlflowClient calls ChildRunWriter makes, as (name, run id, what) tuples."""

    def __init__(self, fail: bool = False):
        self.calls: list[tuple] = []
        self.fail = fail

    def create_run(self, experiment_id, tags, run_name):
        if self.fail:
            raise ConnectionError("server gone")
        self.calls.append(("create_run", run_name, tags["mlflow.parentRunId"]))
        return SimpleNamespace(info=SimpleNamespace(run_id=f"run-{run_name}"))

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.calls.append(("log_batch", run_id, sorted((m.key, m.step) for m in metrics) or sorted(p.key for p in params)))

    def set_tag(self, run_id, key, value):
        self.calls.append(("set_tag", run_id, key))

    def set_terminated(self, run_id, status):
        self.calls.append(("set_terminated", run_id, status))


def writer(client, child_ids=None):
    runs_file_writes = []
    runs = ChildRunWriter(client, "1", "parent", "demo", child_ids if child_ids is not None else {}, {},
                          lambda: runs_file_writes.append(1), "sqlite:///x.db")
    return runs, runs_file_writes


def test_a_trials_metrics_go_in_one_batch_between_its_other_records():
    client = RecordingClient()
    runs, runs_file_writes = writer(client)
    runs.apply([
        StartChild("t1", {"mix.full": "0.5"}, {"case": "a"}),
        Metrics("t1", {"val/miou": 0.4, "cost/hours": 1.0}, 1, 0),
        Metrics("t1", {"val/miou": 0.5}, 2, 0),
        EndChild("t1", "FAILED", "boom"),
        Metrics("t1", {"val/miou": 0.6}, 3, 0),  # after the end: written at the batch's end
    ])
    assert client.calls == [
        ("create_run", "t1", "parent"),
        ("log_batch", "run-t1", ["mix.full"]),
        ("log_batch", "run-t1", [("cost/hours", 1), ("val/miou", 1), ("val/miou", 2)]),
        ("set_tag", "run-t1", "labelmix.error"),
        ("set_terminated", "run-t1", "FAILED"),
        ("log_batch", "run-t1", [("val/miou", 3)]),
    ]
    assert runs.child_ids == {"t1": "run-t1"} and runs.known_params == {"t1": {"mix.full"}}
    assert runs_file_writes == [1]  # the callback rewrites mlflow_runs.json for the new run


def test_metrics_of_a_trial_without_a_run_are_dropped():
    client = RecordingClient()
    runs, _ = writer(client)
    runs.apply([Metrics("t9", {"val/miou": 0.4}, 1, 0), EndChild("t9", "FINISHED", None)])
    assert client.calls == [] and not runs.disabled


def test_after_max_failures_in_a_row_nothing_more_is_written():
    client = RecordingClient(fail=True)
    runs, _ = writer(client)
    runs.apply([StartChild(f"t{i}", {}, {}) for i in range(MAX_FAILURES)])
    assert runs.disabled and runs.failures == MAX_FAILURES
    client.fail = False
    runs.apply([StartChild("later", {}, {})])
    assert client.calls == []


def test_the_thread_applies_records_in_order_and_flush_waits_for_them():
    applied = []
    thread = WriterThread(applied.extend, interval_s=0.05)
    assert thread.flush(timeout_s=1)  # nothing started: nothing to wait for
    records = [StartChild("t1", {}, {}), Metrics("t1", {"val/miou": 0.1}, 1, 0), EndChild("t1", "FINISHED", None)]
    for record in records:
        thread.put(record)
    assert thread.flush(timeout_s=10)
    assert applied == records
