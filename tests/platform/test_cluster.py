"""Running on a cluster: the cluster-launcher files, addresses, the node-local store cache, Ray Jobs
submission, and real multi-node / GPU-packing studies on Ray nodes started here with `ray start`.

The slow tests start their own Ray nodes, each `ray start --block` in a session of its own, and
end exactly those sessions' processes afterwards (never `ray stop`, which would stop every Ray on
the machine, other tests' included).
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pandas as pd
import pytest
import yaml

from labelmix.errors import UserError
from labelmix.platform import cluster
from labelmix.platform.storage import SHARED_ENV
from tests.conftest import TINY_STUDY, cli, write_spec

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_FILES = ["cluster.yaml", "cluster.local.yaml"]

# The tiny study, one epoch, random search, the mix alone searched.
SPEC = {
    **TINY_STUDY,
    "name": "nodes",
    "space": {"mix": TINY_STUDY["space"]["mix"]},
    "fixed": {**TINY_STUDY["fixed"], "epochs": 1},
    "search": {**TINY_STUDY["search"], "algorithm": "random"},
}


# --- cluster-launcher files ----------------------------------------------------------------------


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_file_passes_rays_validation(name):
    prepared = cluster.validate_cluster_file(ROOT / name)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_cluster_yaml_has_a_cpu_head_and_gpu_workers_from_zero_and_no_open_ports():
    config = _load("cluster.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    (worker,) = [t for name, t in types.items() if name != config["head_node_type"]]
    assert worker["min_workers"] == 0 and worker["resources"]["GPU"] >= 1
    start = " ".join(config["head_start_ray_commands"])
    assert "--num-cpus=0" in start and "--dashboard-host=127.0.0.1" in start
    assert "labelmix server start" in start and "--host 127.0.0.1" in start
    assert any("labelmix" in c for c in config["setup_commands"])
    assert "security_group" not in config["provider"]  # no rule opening 8265 or 5000
    text = (ROOT / "cluster.yaml").read_text()
    assert "EDIT" in text and "YOUR-ORG" in text  # the install line is a marked placeholder


def test_local_cluster_file_names_the_machines():
    provider = _load("cluster.local.yaml")["provider"]
    assert provider["type"] == "local" and provider["head_ip"] and provider["worker_ips"]


@pytest.mark.parametrize("name", CLUSTER_FILES)
@pytest.mark.parametrize("key, value", [("min_workers", 0), ("head_node", {"InstanceType": "m5.large"}),
                                        ("worker_nodes", {"InstanceType": "g5.xlarge"})])
def test_a_legacy_key_fails_validation(name, key, value):
    config = {**_load(name), key: value}
    with pytest.raises(jsonschema.ValidationError, match=key):
        cluster.validate_cluster_config(config)


def test_an_unknown_head_node_type_fails_validation():
    config = copy.deepcopy(_load("cluster.yaml"))
    config["head_node_type"] = "ray.head.missing"
    with pytest.raises(ValueError, match="head_node_type"):
        cluster.validate_cluster_config(config)


# --- addresses -----------------------------------------------------------------------------------


def test_an_address_nobody_listens_on_is_one_user_error(closed_port):
    with pytest.raises(UserError, match=f"--address 127.0.0.1:{closed_port}: no Ray cluster answers"):
        cluster.check_gcs_reachable(f"127.0.0.1:{closed_port}", timeout_s=2)
    with pytest.raises(UserError, match="expected auto, HOST:PORT"):
        cluster.check_gcs_reachable("nonsense")


# --- the node-local store cache ------------------------------------------------------------------


def test_a_store_from_a_uri_is_fetched_once_per_node(tmp_path, monkeypatch):
    from labelmix.platform.storage import store_fingerprint
    from labelmix.platform.trainable import DatasetSource, node_local_store
    from labelmix.trainables.data.synth import SynthSettings
    from labelmix.trainables.data.synth_store import write_synthetic_store

    (tmp_path / "data").mkdir()
    summary = write_synthetic_store(SynthSettings(2, 2, 32, 32, 0), tmp_path / "data" / "store.parquet")
    uri = f"file://{tmp_path}/data/store.parquet"
    assert store_fingerprint(uri) == summary.fingerprint == store_fingerprint(str(summary.path))
    monkeypatch.setenv("LABELMIX_STORE_CACHE", str(tmp_path / "cache"))
    source = DatasetSource(fingerprint=summary.fingerprint, uri=uri)
    local = node_local_store(source)
    assert local == tmp_path / "cache" / f"{summary.fingerprint}.parquet"
    assert local.read_bytes() == summary.path.read_bytes()
    (tmp_path / "data" / "store.parquet").unlink()  # the second trial on this node does not fetch again
    assert node_local_store(source) == local


# --- Ray Jobs submission, with a stand-in for JobSubmissionClient --------------------------------


class FakeJobs:
    def __init__(self, status="RUNNING"):
        self.submitted = []
        self.status = status

    def submit_job(self, *, entrypoint, runtime_env=None, metadata=None):
        files = {}
        if runtime_env and "working_dir" in runtime_env:
            files = {p.name: p.read_text() for p in Path(runtime_env["working_dir"]).iterdir()}
        self.submitted.append({"entrypoint": entrypoint, "runtime_env": runtime_env, "files": files,
                               "metadata": metadata})
        return "raysubmit_TEST123"

    def get_job_info(self, job_id):
        if job_id != "raysubmit_TEST123":
            raise RuntimeError(f"Job {job_id} does not exist")
        return SimpleNamespace(submission_id=job_id, job_id=None, status=self.status, entrypoint="labelmix submit ...",
                               start_time=1_700_000_000_000, end_time=None, message="Job is running")

    def get_job_logs(self, job_id):
        return "[nodes] running 2 | pending 2\n"

    async def tail_job_logs(self, job_id):
        for line in ("line 1\n", "line 2\n"):
            yield line


@pytest.fixture
def fake_jobs(monkeypatch):
    jobs = FakeJobs()
    monkeypatch.setattr(cluster, "job_client", lambda address: jobs)
    return jobs


def _main(*argv):
    from labelmix.cli import main

    return main(list(argv))


def test_submit_to_a_jobs_address_sends_the_effective_spec(tmp_path, fake_jobs, capsys, monkeypatch):
    monkeypatch.setenv(SHARED_ENV, "1")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    assert _main("submit", str(path), "--smoke", "--address", "http://127.0.0.1:8265") == 0
    (job,) = fake_jobs.submitted
    assert job["entrypoint"] == "labelmix submit spec.yaml --address auto"
    assert list(job["files"]) == ["spec.yaml"]
    assert job["runtime_env"]["env_vars"] == {SHARED_ENV: "1"}
    sent = yaml.safe_load(job["files"]["spec.yaml"])
    assert sent["name"] == "nodes-smoke" and sent["search"]["trials"] == 2  # the effective (smoke) spec
    assert sent["storage"]["path"] == "~/studies"  # not the job's temporary working directory
    out = capsys.readouterr().out
    assert "raysubmit_TEST123" in out
    assert "labelmix logs raysubmit_TEST123 --address http://127.0.0.1:8265 --follow" in out


def test_submit_to_a_jobs_address_refuses_a_dataset_on_this_machine(tmp_path, fake_jobs, capsys, monkeypatch):
    from labelmix.trainables.data.synth import SynthSettings
    from labelmix.trainables.data.synth_store import write_synthetic_store

    monkeypatch.delenv(SHARED_ENV, raising=False)
    store = write_synthetic_store(SynthSettings(4, 2, 32, 32, 0), tmp_path / "store.parquet").path
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "dataset": {"path": str(store)}}))
    assert _main("submit", str(path), "--address", "http://127.0.0.1:8265") == 2
    assert "dataset.path:" in capsys.readouterr().err and not fake_jobs.submitted


def test_resume_through_jobs_and_status_and_logs(fake_jobs, capsys):
    assert _main("resume", "s3://bucket/studies/my study", "--address", "http://127.0.0.1:8265") == 0
    assert fake_jobs.submitted[0]["entrypoint"] == "labelmix resume 's3://bucket/studies/my study' --address auto"
    assert _main("status", "raysubmit_TEST123", "--address", "http://127.0.0.1:8265") == 0
    assert "raysubmit_TEST123: RUNNING" in capsys.readouterr().out
    assert _main("logs", "raysubmit_TEST123", "--address", "http://127.0.0.1:8265") == 0
    assert "[nodes] running 2" in capsys.readouterr().out
    fake_jobs.status = "FAILED"
    assert _main("logs", "raysubmit_TEST123", "--follow", "--address", "http://127.0.0.1:8265") == 1
    assert capsys.readouterr().out.endswith("line 1\nline 2\n\njob raysubmit_TEST123: FAILED\n")
    assert _main("status", "raysubmit_nope", "--address", "http://127.0.0.1:8265") == 2
    assert "raysubmit_nope: not known" in capsys.readouterr().err
    assert _main("status", "raysubmit_TEST123", "--address", "127.0.0.1:6379") == 2


def test_jobs_address_without_a_dashboard_is_one_user_error(closed_port, capsys):
    assert _main("status", "raysubmit_x", "--address", f"http://127.0.0.1:{closed_port}") == 2
    err = capsys.readouterr().err
    assert "no Ray Jobs API answers" in err and "Traceback" not in err


# --- real Ray nodes on this machine --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state ppid pgrp session ...
    return fields[0], int(fields[3])


def _processes_in(sessions: set[int]) -> list[int]:
    """Live (not zombie) processes of the given sessions."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat and stat[1] in sessions and stat[0] != "Z":
                pids.append(int(entry.name))
    return pids


class LocalRayCluster:
    """Ray nodes started here with `ray start --block`, each in its own session; stop() ends exactly those."""

    def __init__(self, root: Path):
        self.root = root
        # Ray's socket paths must stay under 108 bytes: pytest's tmp_path is too deep for them.
        self.temp = Path(tempfile.mkdtemp(prefix="lm-ray-"))
        self.token = secrets.token_hex(32)
        self.sessions: set[int] = set()
        self.procs: list[subprocess.Popen] = []
        self.port: int | None = None
        self.dashboard_port: int | None = None

    def env(self, **extra) -> dict:
        """Environment of the nodes and of every driver that attaches: the cluster's own auth token."""
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_DEDUP_LOGS": "0",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("RAY_ADDRESS", None)
        return {**env, **extra}

    def _start(self, label: str, args: list[str], env: dict) -> None:
        log = self.root / f"{label}.log"
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--block", "--disable-usage-stats",
             "--node-ip-address", "127.0.0.1", "--temp-dir", str(self.temp / label),
             "--dashboard-agent-listen-port", str(_free_port()), "--object-store-memory", str(200 * 2**20), *args],
            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        self.procs.append(proc)
        self.sessions.add(proc.pid)
        deadline = time.time() + 120
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray start ({label}) did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def start_head(self, *args: str, dashboard: bool = False, env: dict | None = None) -> str:
        self.port = _free_port()
        flags = ["--head", "--port", str(self.port)]
        if dashboard:
            self.dashboard_port = _free_port()
            flags += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                      "--dashboard-port", str(self.dashboard_port)]
        else:
            flags += ["--include-dashboard", "false"]
        self._start("head", [*flags, *args], env or self.env())
        return f"127.0.0.1:{self.port}"

    def add_node(self, label: str, *args: str, env: dict | None = None) -> None:
        self._start(label, ["--address", f"127.0.0.1:{self.port}", *args], env or self.env())

    def stop(self) -> list[int]:
        """SIGTERM, then SIGKILL, to every process of the nodes' sessions; returns any that survived."""
        for pid in _processes_in(self.sessions):
            _signal(pid, signal.SIGTERM)
        deadline = time.time() + 15
        while _processes_in(self.sessions) and time.time() < deadline:
            time.sleep(0.5)
        for pid in _processes_in(self.sessions):
            _signal(pid, signal.SIGKILL)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.time() + 10
        while _processes_in(self.sessions) and time.time() < deadline:
            time.sleep(0.5)
        left = _processes_in(self.sessions)
        if not left:
            shutil.rmtree(self.temp, ignore_errors=True)
        return left


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def ray_cluster(tmp_path):
    local = LocalRayCluster(tmp_path / "ray")
    local.root.mkdir()
    yield local
    left = local.stop()
    assert not left, f"Ray processes left running: {left}"


def _trial_results(study: Path) -> dict[str, list[dict]]:
    """Tune's result.json of every trial folder: trial id -> the reported results, one per epoch."""
    out = {}
    for result_file in study.glob("*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        out[rows[-1]["trial_id"]] = rows
    return out


@pytest.mark.slow
def test_a_study_spreads_over_two_nodes(tmp_path, ray_cluster):
    """Head and a second node, one CPU each; 4 one-CPU trials, 2 at a time: both nodes must work."""
    caches = {"head": tmp_path / "cache-head", "second": tmp_path / "cache-second"}
    address = ray_cluster.start_head("--num-cpus", "1", env=ray_cluster.env(LABELMIX_STORE_CACHE=str(caches["head"])))
    ray_cluster.add_node("second", "--num-cpus", "1", "--resources", '{"second": 1}',
                         env=ray_cluster.env(LABELMIX_STORE_CACHE=str(caches["second"])))
    # Trials long enough (a few seconds) that the second node's trial actor, slower to start than a
    # one-second trial, gets trials of its own instead of the head's reused actor running them all.
    spec = write_spec(tmp_path, SPEC, fixed={**SPEC["fixed"], "epochs": 2, "steps_per_epoch": 12})

    # Two nodes and a study folder on this machine's disk: refused before anything is written.
    refused = cli("submit", str(spec), "--address", address, env=ray_cluster.env(), cwd=tmp_path, timeout=300)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "storage.path:" in refused.stderr and "s3://" in refused.stderr and "2 nodes" in refused.stderr
    assert not (tmp_path / "studies").exists()

    # Both nodes are this machine, so the folder is shared: say so.
    started = time.time()
    proc = cli("submit", str(spec), "--address", address, env=ray_cluster.env(LABELMIX_SHARED_STORAGE="1"),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    elapsed = time.time() - started
    study = tmp_path / "studies" / "nodes"
    table = pd.read_parquet(study / "trials.parquet")
    assert len(table) == 4 and set(table["status"]) == {"TERMINATED"}
    results = _trial_results(study)
    assert set(results) == set(table["trial_id"])  # every trial's results reached the storage
    nodes = {trial: rows[-1]["node/id"] for trial, rows in results.items()}
    per_node = pd.Series(nodes).value_counts()
    print(f"\ntwo-node study: {len(table)} trials in {elapsed:.1f} s; trials per node: "
          f"{ {node[:8]: int(n) for node, n in per_node.items()} }")
    assert len(per_node) == 2, f"all trials ran on one node: {nodes}"
    # The synthetic store went through the object store: each node wrote its cache copy once.
    fingerprints = {p.name for c in caches.values() for p in c.glob("*.parquet")}
    assert len(fingerprints) == 1
    assert all(len(list(c.glob("*.parquet"))) == 1 for c in caches.values())


@pytest.mark.slow
def test_four_trials_share_one_gpu(tmp_path, ray_cluster):
    """One logical GPU (a CPU machine), 0.25 GPU and 0.5 CPU per trial: four trials run at once, on the CPU."""
    address = ray_cluster.start_head("--num-cpus", "2", "--num-gpus", "1",
                                     env=ray_cluster.env(LABELMIX_STORE_CACHE=str(tmp_path / "cache")))
    spec = write_spec(
        tmp_path, SPEC, name="packed",
        fixed={**SPEC["fixed"], "epochs": 2, "steps_per_epoch": 20},
        search={"algorithm": "random", "trials": 4, "concurrency": 4, "seed": 0},
        resources={"cpus": 0.5, "gpus": 0.25},
    )
    proc = cli("submit", str(spec), "--address", address, env=ray_cluster.env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = tmp_path / "studies" / "packed"
    table = pd.read_parquet(study / "trials.parquet").sort_values("started_at")
    assert len(table) == 4 and set(table["status"]) == {"TERMINATED"}
    t0 = table["started_at"].min()
    intervals = [(round(float(s - t0), 1), round(float(e - t0), 1)) for s, e in zip(table["started_at"], table["ended_at"])]
    overlap = table["ended_at"].min() - table["started_at"].max()
    print(f"\nGPU-packed trials (s from the first start): {intervals}; all four overlap for {overlap:.1f} s")
    assert overlap > 0, f"the four trials did not all run at once: {intervals}"
    for rows in _trial_results(study).values():  # no CUDA device here: trained on the CPU, no GPU metric
        assert "gpu/peak_memory_mb" not in rows[-1] and rows[-1]["epoch"] == 2


def _dashboard_deps() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("aiohttp_cors", "opencensus", "prometheus_client"))


@pytest.mark.slow
@pytest.mark.skipif(not _dashboard_deps(), reason="Ray Jobs needs the dashboard: pip install 'ray[default]'")
def test_a_study_runs_as_a_ray_job(tmp_path, ray_cluster):
    ray_cluster.start_head("--num-cpus", "2", dashboard=True,
                           env=ray_cluster.env(LABELMIX_STORE_CACHE=str(tmp_path / "cache")))
    jobs = f"http://127.0.0.1:{ray_cluster.dashboard_port}"
    spec = write_spec(tmp_path, SPEC, name="as-job")
    env = ray_cluster.env()
    proc = cli("submit", str(spec), "--address", jobs, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print("\n" + proc.stdout)
    job_id = next(w for w in proc.stdout.split() if w.startswith("raysubmit_"))
    logs = cli("logs", job_id, "--follow", "--address", jobs, env=env, cwd=tmp_path)
    assert logs.returncode == 0, logs.stdout[-3000:] + logs.stderr[-3000:]
    print("\n".join(logs.stdout.strip().splitlines()[-4:]))
    assert f"job {job_id}: SUCCEEDED" in logs.stdout and "Frontier" in logs.stdout
    status = cli("status", job_id, "--address", jobs, env=env, cwd=tmp_path, timeout=120)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    table = pd.read_parquet(tmp_path / "studies" / "as-job" / "trials.parquet")
    assert len(table) == 4 and set(table["status"]) == {"TERMINATED"}


@pytest.mark.slow
def test_a_study_on_uri_storage_with_a_uri_dataset_runs_and_resumes(tmp_path):
    """file:// goes through the same pyarrow-filesystem path as s3:// and gs:// (mirror, uploads, Tune URIs)."""
    from labelmix.trainables.data.synth import SynthSettings
    from labelmix.trainables.data.synth_store import write_synthetic_store

    (tmp_path / "bucket" / "data").mkdir(parents=True)
    store = write_synthetic_store(SynthSettings(5, 4, 64, 64, 3), tmp_path / "bucket" / "data" / "store.parquet")
    spec = write_spec(tmp_path, SPEC, name="on-uri", dataset={"path": f"file://{store.path}"})
    storage = f"file://{tmp_path}/bucket/studies"
    env = {**os.environ, "LABELMIX_MIRROR_DIR": str(tmp_path / "mirror"), "LABELMIX_STORE_CACHE": str(tmp_path / "cache")}
    proc = cli("submit", str(spec), "--storage", storage, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"study folder: {storage}/on-uri" in proc.stdout
    remote = tmp_path / "bucket" / "studies" / "on-uri"
    table = pd.read_parquet(remote / "trials.parquet")  # uploaded by the driver
    assert len(table) == 4 and set(table["status"]) == {"TERMINATED"}
    assert (remote / "spec.yaml").is_file() and (remote / "frontier.parquet").is_file()
    assert len(_trial_results(remote)) == 4  # Tune wrote the trials through the URI
    assert [p.name for p in (tmp_path / "cache").glob("*.parquet")] == [f"{store.fingerprint}.parquet"]

    resumed = cli("resume", f"{storage}/on-uri", env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "4 of 4 trials finished" in resumed.stdout
