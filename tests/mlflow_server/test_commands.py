"""`labelmix server start|status|stop` as a user runs it: a separate process per command."""

import urllib.request

import pytest

from labelmix.mlflow_server import stop
from tests.conftest import cli


def labelmix(*args):
    return cli(*args, timeout=120)


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "server"
    yield path
    stop(path)  # never leave a server behind, whatever the test did


@pytest.mark.slow  # starts a server: 5-15 s on 2 cores
def test_start_status_stop(state_dir, free_port):
    where = ("--state-dir", str(state_dir))
    result = labelmix("server", "status", *where)
    assert result.returncode == 1 and "no server recorded" in result.stdout

    result = labelmix("server", "start", *where, "--port", str(free_port))
    assert result.returncode == 0, result.stderr
    uri = f"http://127.0.0.1:{free_port}"
    assert f"MLflow server running at {uri}" in result.stdout and "healthy" in result.stdout
    assert f"--tracking-uri {uri}" in result.stdout
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{uri}/health", timeout=5) as response:
        assert response.status == 200

    result = labelmix("server", "status", *where)
    assert result.returncode == 0 and f"{uri}: running, healthy" in result.stdout

    result = labelmix("server", "start", *where, "--port", str(free_port))
    assert result.returncode == 2 and "already running" in result.stderr and "Traceback" not in result.stderr

    result = labelmix("server", "stop", *where)
    assert result.returncode == 0 and f"stopped the MLflow server at {uri}" in result.stdout
    result = labelmix("server", "status", *where)
    assert result.returncode == 1
    assert "no MLflow server running" in labelmix("server", "stop", *where).stdout


def test_bad_settings_are_one_line(state_dir):
    result = labelmix("server", "start", "--state-dir", str(state_dir), "--host", "0.0.0.0")
    assert result.returncode == 2 and "--basic-auth" in result.stderr and "Traceback" not in result.stderr
    result = labelmix("server", "start", "--state-dir", str(state_dir), "--port", "70000")
    assert result.returncode == 2 and "port: must be an integer from 1 to 65535" in result.stderr
