"""Fixtures shared across the test folders: free ports, a real MLflow server, a throwaway PostgreSQL."""

import socket

import pytest


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
