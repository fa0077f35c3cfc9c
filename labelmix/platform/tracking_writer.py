"""The tracking callback's background writer, Ray-free: records, the thread, and what writes them to MLflow.

Tune calls the callback's hooks on its driver loop, so a hook must not wait for the server. Hooks
only put a record (:class:`StartChild`, :class:`Metrics`, :class:`EndChild`) on a queue; one
background thread (:class:`WriterThread`) takes them, at most every ``interval_s`` seconds, and
:class:`ChildRunWriter` writes them in order: one ``log_batch`` of metrics per trial and batch. A hook
costs microseconds; :meth:`WriterThread.flush` waits until everything queued is written.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping, Optional, Union

from labelmix.chunks import chunks
from labelmix.platform.mlflow_runs import BATCH_METRICS, BATCH_PARAMS
from labelmix.platform.trial_table import TAG_ERROR, TAG_PARENT, TAG_STUDY, TAG_TRIAL

log = logging.getLogger(__name__)

MAX_FAILURES = 3


@dataclass(frozen=True)
class StartChild:
    """A trial started: its child run is created (or reopened), its params logged once, its tags set."""

    kind: ClassVar[str] = "start"  # as a log line names a failed write
    trial_id: str
    params: Mapping[str, str]
    tags: Mapping[str, str]


@dataclass(frozen=True)
class Metrics:
    """One report of a trial: metric name -> value at ``step`` (the epoch), stamped in ms since the epoch."""

    kind: ClassVar[str] = "metrics"
    trial_id: str
    values: Mapping[str, float]
    step: int
    timestamp_ms: int


@dataclass(frozen=True)
class EndChild:
    """A trial ended: ``status`` FINISHED or FAILED, with the error text (tag ``labelmix.error``)."""

    kind: ClassVar[str] = "end"
    trial_id: str
    status: str
    error: Optional[str]


Record = Union[StartChild, Metrics, EndChild]


@dataclass(frozen=True)
class _Flush:
    """Set ``done`` once every record queued before this one is written."""

    done: threading.Event


class WriterThread:
    """One background thread that applies queued records in order, at most every ``interval_s``."""

    def __init__(self, apply: Callable[[list], None], interval_s: float) -> None:
        self._apply = apply
        self.interval_s = interval_s
        self._queue: queue.Queue = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def put(self, record: Record) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="labelmix-mlflow", daemon=True)
                self._thread.start()
        self._queue.put(record)

    def flush(self, timeout_s: Optional[float] = None) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._queue.put(_Flush(done))
        return done.wait(timeout_s)

    def _run(self) -> None:
        while True:
            records = [self._queue.get()]
            deadline = time.monotonic() + self.interval_s
            while not isinstance(records[-1], _Flush):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    records.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            flushes = [r.done for r in records if isinstance(r, _Flush)]
            try:
                self._apply([r for r in records if not isinstance(r, _Flush)])
            except Exception:  # never kill the thread: the study goes on, the log says what was lost
                log.exception("MLflow logging failed; some records were not written")
            for event in flushes:
                event.set()


class ChildRunWriter:
    """Writes records into the child runs of one parent run (on the writer thread).

    ``child_ids`` (trial id -> run id) and ``known_params`` (trial id -> the param keys its run has)
    are the caller's dicts, updated in place; ``on_new_run()`` is called after a child run is created
    (the callback rewrites ``mlflow_runs.json``). ``shown_uri`` names the server in log lines. After
    MAX_FAILURES failed writes in a row, ``disabled`` is set and nothing more is written.
    """

    def __init__(self, client, experiment_id: str, parent_id: str, study_name: str, child_ids: dict[str, str],
                 known_params: dict[str, set], on_new_run: Callable[[], None], shown_uri: str) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.parent_id = parent_id
        self.study_name = study_name
        self.child_ids = child_ids
        self.known_params = known_params
        self.on_new_run = on_new_run
        self.shown_uri = shown_uri
        self.failures = 0  # consecutive write failures
        self.disabled = False

    def apply(self, records: list[Record]) -> None:
        """Write queued records in order; metrics of one trial are batched until its next other record."""
        from mlflow.entities import Metric

        pending: dict[str, list] = {}

        def write_metrics(trial_id: str) -> None:
            metrics = pending.pop(trial_id, [])
            run_id = self.child_ids.get(trial_id)
            if run_id is None or not metrics:
                return
            for chunk in chunks(metrics, BATCH_METRICS):
                self.client.log_batch(run_id, metrics=chunk)

        if self.disabled:
            return
        for record in records:
            trial_id = record.trial_id
            if self.disabled:
                return
            try:
                if isinstance(record, Metrics):
                    pending.setdefault(trial_id, []).extend(
                        Metric(k, v, record.timestamp_ms, record.step) for k, v in record.values.items())
                    continue
                write_metrics(trial_id)
                if isinstance(record, StartChild):
                    self._start_child(record)
                elif isinstance(record, EndChild):
                    self._end_child(record)
                self.failures = 0
            except Exception:
                self._failed(f"{record.kind} of trial {trial_id}")
        for trial_id in list(pending):
            if self.disabled:
                return
            try:
                write_metrics(trial_id)
                self.failures = 0
            except Exception:
                self._failed(f"metrics of trial {trial_id}")

    def _failed(self, what: str) -> None:
        """A failed write is logged; after MAX_FAILURES in a row the server is taken to be gone and
        the rest is dropped (each request would otherwise wait out MLflow's retries)."""
        self.failures += 1
        log.exception("MLflow (%s): could not write %s", self.shown_uri, what)
        if self.failures >= MAX_FAILURES:
            self.disabled = True
            log.error("MLflow (%s): %d writes failed in a row; tracking is off for the rest of this study "
                      "(the study folder still has every trial: trials.parquet)", self.shown_uri, self.failures)

    def _start_child(self, record: StartChild) -> None:
        from mlflow.entities import Param, RunTag

        client, trial_id = self.client, record.trial_id
        run_id = self.child_ids.get(trial_id)
        if run_id is None:
            tags = {**record.tags, TAG_PARENT: self.parent_id, TAG_TRIAL: trial_id, TAG_STUDY: self.study_name}
            run_id = client.create_run(self.experiment_id, tags=tags, run_name=trial_id).info.run_id
            self.child_ids[trial_id] = run_id
            self.known_params[trial_id] = set()
            self.on_new_run()
        else:  # a resumed or retried trial: the same run again
            run = client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            self.known_params[trial_id] = set(run.data.params)
            error = run.data.tags.get(TAG_ERROR)
            if error:  # a run that finishes after a retry must not read as failed
                client.set_tag(run_id, "labelmix.previous_error", error)
                client.delete_tag(run_id, TAG_ERROR)
            changed = [RunTag(k, v) for k, v in record.tags.items() if run.data.tags.get(k) != v]
            if changed:  # e.g. a run from before the tag
                client.log_batch(run_id, tags=changed)
        known = self.known_params[trial_id]
        new = [Param(k, v) for k, v in record.params.items() if k not in known]  # params are write-once
        for chunk in chunks(new, BATCH_PARAMS):
            client.log_batch(run_id, params=chunk)
        known.update(p.key for p in new)

    def _end_child(self, record: EndChild) -> None:
        run_id = self.child_ids.get(record.trial_id)
        if run_id is None:
            return
        if record.error:
            self.client.set_tag(run_id, TAG_ERROR, record.error)
        self.client.set_terminated(run_id, record.status)
