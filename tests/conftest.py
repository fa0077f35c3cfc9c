"""Shared across the test folders: the tiny study, `labelmix` as a separate process, free ports, a
real MLflow server, a throwaway PostgreSQL, a local Ray.

Tests that start a server or a Ray (the ``mlflow_server``, ``postgres_uri`` and ``local_ray``
fixtures) take seconds each on 2 cores: they are marked ``slow`` here, wherever they are, so that
``pytest -m "not slow"`` is the quick suite. Helpers are plain functions: ``from tests.conftest
import cli, write_spec, TINY_STUDY``.
"""

from __future__ import annotations

import copy
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import pytest
import yaml

# The integration tests' study: 5 synthetic volumes of 4 64x64 B-scans, the tiny timm ResNet, 2 epochs
# of 2 steps, 4 trials 2 at a time; a trial takes a few seconds on one core. Tests change what
# they need at the top level ({**TINY_STUDY, "search": {...}}) or with write_spec's keywords.
TINY_STUDY: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"synthetic": {"volumes": 5, "slices": 4, "height": 64, "width": 64, "seed": 3}},
    "objectives": [{"metric": "val/miou", "mode": "max"}, {"metric": "cost/hours", "mode": "min"}],
    "space": {
        "mix": {"full": {"uniform": [0.1, 1.0]}, "box": {"uniform": [0, 1]}, "none": {"uniform": [0, 1]}},
        "ema_decay": {"loguniform": [0.9, 0.999]},
    },
    "fixed": {"encoder": "test_resnet", "epochs": 2, "batch_size": 4, "steps_per_epoch": 2, "threads": 1, "box_shape_steps": 5},
    "search": {"algorithm": "tpe", "trials": 4, "concurrency": 2, "seed": 0},
    "scheduler": {"type": "none"},
}


def write_spec(tmp_path: Path, spec: Mapping[str, Any] = TINY_STUDY, **changes: Any) -> Path:
    """``spec`` with top-level ``changes`` and its studies under ``tmp_path/studies``, written to
    ``tmp_path/spec.yaml``."""
    data = {**copy.deepcopy(dict(spec)), **changes, "storage": {"path": str(tmp_path / "studies")}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args: str, timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess:
    """``labelmix ARGS`` as a user runs it: a process of its own (``python -m labelmix.cli``), its
    output captured as text; ``kwargs`` go to subprocess.run (cwd, env). A process pays the imports
    (torch, Ray, MLflow: 3-10 s on 2 cores), so tests that only need the exit status and the
    message call ``labelmix.cli.main([...])`` in the test's process instead."""
    return subprocess.run([sys.executable, "-m", "labelmix.cli", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


# --- slow fixtures are slow tests -----------------------------------------------------------------

SLOW_FIXTURES = ("mlflow_server", "postgres_uri", "local_ray")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in SLOW_FIXTURES):
            item.add_marker(pytest.mark.slow)


# --- ports, servers, Ray --------------------------------------------------------------------------


def _free_port() -> int:
    """A port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    return _free_port()


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on right now."""
    return _free_port()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """One SQLite-backed tracking server per test module: starting one takes 8-13 s on 2 cores."""
    from labelmix.mlflow_server import ServerSettings, start, stop

    state_dir = tmp_path_factory.mktemp("mlflow-server")
    info = start(ServerSettings(state_dir=state_dir, port=_free_port()))
    yield info
    stop(state_dir)


@pytest.fixture(scope="module")
def postgres_uri():
    """postgresql://labelmix:labelmix@127.0.0.1:PORT/mlflow on a fresh cluster (about 2 s)."""
    from labelmix.mlflow_server.postgres import temporary_postgres, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with temporary_postgres(_free_port()) as uri:
        yield uri


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A Ray of 2 CPUs started in this process for one test module (5-15 s on 2 cores), never one
    already running on the machine; its workers cache dataset stores in ``store_cache``."""
    import ray

    if ray.is_initialized():
        raise RuntimeError("local_ray: a Ray is already initialised in this process")
    cache = tmp_path_factory.mktemp("store-cache")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"LABELMIX_STORE_CACHE": str(cache)}})
    try:
        yield SimpleNamespace(store_cache=cache)
    finally:
        ray.shutdown()
