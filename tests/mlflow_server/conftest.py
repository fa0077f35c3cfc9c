"""Tracking-server fixtures: a free port, one shared MLflow server, a throwaway PostgreSQL."""

import socket

import pytest

from labelmix.mlflow_server import ServerSettings, start, stop
from labelmix.mlflow_server.postgres import temporary_postgres, unavailable_reason


def _free_port() -> int:
    """A port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    return _free_port()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """One SQLite-backed server per test module: starting one takes 8-13 s on 2 cores."""
    state_dir = tmp_path_factory.mktemp("mlflow-server")
    info = start(ServerSettings(state_dir=state_dir, port=_free_port()))
    yield info
    stop(state_dir)


@pytest.fixture(scope="module")
def postgres_uri():
    """postgresql://labelmix:labelmix@127.0.0.1:PORT/mlflow on a fresh cluster (about 2 s)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with temporary_postgres(_free_port()) as uri:
        yield uri
