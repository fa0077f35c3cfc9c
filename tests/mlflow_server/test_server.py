"""The tracking server: start, status and stop a real `mlflow server`, and refuse bad settings
with one clear message before anything starts."""

import json
import re
import socket
from pathlib import Path

import mlflow
import pytest

from labelmix.errors import UserError
from labelmix.mlflow_server import (
    ServerSettings,
    build_command,
    check_health,
    mask_password,
    preflight,
    server,
    start,
    status,
    stop,
)

# ---------------------------------------------------------------------------------------------
# One shared SQLite server (module fixture `mlflow_server`); the last of these tests stops it.


@pytest.mark.slow
def test_started_server_is_healthy_and_recorded(mlflow_server):
    assert check_health(mlflow_server.uri)
    now = status(mlflow_server.state_dir)
    assert (now.uri, now.pid, now.running, now.healthy) == (
        mlflow_server.uri, mlflow_server.pid, True, True
    )  # fmt: skip
    record = json.loads((mlflow_server.state_dir / "server.json").read_text())
    assert record == {
        "pid": mlflow_server.pid,
        "uri": mlflow_server.uri,
        "backend_store_uri": f"sqlite:///{(mlflow_server.state_dir / 'mlflow.db').resolve()}",
        "artifacts_destination": str((mlflow_server.state_dir / "artifacts").resolve()),
        "host": "127.0.0.1",
        "port": mlflow_server.port,
    }


@pytest.mark.slow
def test_runs_and_artifacts_round_trip_through_the_server(mlflow_server, tmp_path):
    client = mlflow.MlflowClient(tracking_uri=mlflow_server.uri)
    experiment_id = client.create_experiment("round-trip")
    # Artifacts go through the server (--serve-artifacts), not to a path the client must reach.
    assert client.get_experiment(experiment_id).artifact_location.startswith("mlflow-artifacts:")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_param(run_id, "budget_hours", 12)
    client.log_metric(run_id, "val/miou", 0.625, step=3)
    table = tmp_path / "frontier.csv"
    table.write_text("cost/hours,val/miou\n12,0.625\n")
    client.log_artifact(run_id, str(table))
    client.set_terminated(run_id)

    run = client.get_run(run_id)
    assert run.data.metrics["val/miou"] == 0.625
    assert run.data.params["budget_hours"] == "12"
    downloaded = client.download_artifacts(run_id, "frontier.csv", dst_path=str(tmp_path / "down"))
    assert Path(downloaded).read_text() == table.read_text()
    stored = list(Path(mlflow_server.artifacts_destination).rglob("frontier.csv"))
    assert len(stored) == 1 and run_id in stored[0].parts


@pytest.mark.slow
def test_starting_twice_names_the_running_server(mlflow_server):
    again = ServerSettings(state_dir=mlflow_server.state_dir, port=mlflow_server.port)
    with pytest.raises(UserError, match=f"already running at {re.escape(mlflow_server.uri)}"):
        start(again)
    assert status(mlflow_server.state_dir).healthy  # left alone


@pytest.mark.slow
def test_stop_ends_the_server_and_forgets_it(mlflow_server):
    # Runs last in this module: it stops the shared server.
    assert stop(mlflow_server.state_dir) is True
    after = status(mlflow_server.state_dir)
    assert (after.uri, after.running, after.healthy) == (None, False, False)
    assert not (mlflow_server.state_dir / "server.json").exists()
    assert not check_health(mlflow_server.uri)
    assert stop(mlflow_server.state_dir) is False


# ---------------------------------------------------------------------------------------------
# Refused before any process starts


def test_port_in_use_is_refused(tmp_path, free_port):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port))
        taken.listen()
        with pytest.raises(UserError) as error:
            start(ServerSettings(state_dir=tmp_path, port=free_port))
    assert str(error.value) == (
        f"port {free_port} on 127.0.0.1 is already in use; choose another with --port"
    )
    assert not (tmp_path / "server.json").exists() and not (tmp_path / "server.log").exists()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org"])
def test_non_loopback_host_needs_basic_auth(host):
    with pytest.raises(UserError, match=f"^host {re.escape(host)} is not loopback: .*--basic-auth"):
        ServerSettings(host=host)
    with_auth = ServerSettings(host=host, basic_auth=True)
    assert build_command(with_auth)[-2:] == ["--app-name", "basic-auth"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_need_no_auth(host):
    assert "--app-name" not in build_command(ServerSettings(host=host))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("port", 0, "port: must be an integer from 1 to 65535"), ("workers", 0, "workers: must be")],
)
def test_settings_name_the_bad_field(field, value, message):
    with pytest.raises(UserError, match=message):
        ServerSettings(**{field: value})


def test_command_runs_this_interpreters_mlflow_with_served_artifacts(tmp_path):
    cmd = build_command(ServerSettings(state_dir=tmp_path, port=5123, workers=2))
    assert cmd[:4] == [server.sys.executable, "-m", "mlflow", "server"]
    assert cmd[4:] == [
        "--serve-artifacts", "--artifacts-destination", str((tmp_path / "artifacts").resolve()),
        "--host", "127.0.0.1", "--port", "5123", "--workers", "2",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("given", "resolved"),
    [
        # SQLAlchemy 2.1 would pick psycopg 3 for a bare postgresql://; labelmix ships psycopg2.
        ("postgresql://u:p@db/mlflow", "postgresql+psycopg2://u:p@db/mlflow"),
        ("postgresql+psycopg://u:p@db/mlflow", "postgresql+psycopg://u:p@db/mlflow"),
        ("sqlite:///rel/mlflow.db", f"sqlite:///{Path('rel/mlflow.db').resolve()}"),
        ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
    ],
)
def test_backend_store_uri_is_made_explicit(given, resolved):
    assert ServerSettings(backend_store_uri=given).resolved_backend_store_uri == resolved


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("postgresql://u:secret@db:5432/mlflow", "postgresql://u:***@db:5432/mlflow"),
        ("postgresql+psycopg2://u:p@ss@db/mlflow", "postgresql+psycopg2://u:***@db/mlflow"),
        ("postgresql://u@db/mlflow", "postgresql://u@db/mlflow"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        (
            "see postgresql://a:b@h/d and mysql://c:d@h/e",
            "see postgresql://a:***@h/d and mysql://c:***@h/e",
        ),
    ],
)
def test_passwords_are_masked(uri, masked):
    assert mask_password(uri) == masked


def test_basic_auth_needs_the_auth_extra(tmp_path, free_port, monkeypatch):
    monkeypatch.setattr(preflight, "_flask_wtf_available", lambda: False)
    settings = ServerSettings(state_dir=tmp_path, port=free_port, basic_auth=True)
    with pytest.raises(UserError, match=re.escape("pip install 'mlflow[auth]'")):
        start(settings)


def test_basic_auth_needs_an_admin_password_on_first_start(tmp_path, free_port, monkeypatch):
    monkeypatch.setattr(preflight, "_flask_wtf_available", lambda: True)
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_AUTH_CONFIG_PATH", raising=False)
    settings = ServerSettings(state_dir=tmp_path, port=free_port, basic_auth=True)
    with pytest.raises(UserError, match="export MLFLOW_AUTH_ADMIN_PASSWORD="):
        start(settings)
    assert not (tmp_path / "server.log").exists()


def test_missing_postgres_driver_gives_the_install_hint(tmp_path, free_port, monkeypatch):
    monkeypatch.setattr(preflight, "_psycopg2_available", lambda: False)
    uri = "postgresql://labelmix:hunter2@127.0.0.1:5432/mlflow"
    with pytest.raises(UserError) as error:
        start(ServerSettings(state_dir=tmp_path, port=free_port, backend_store_uri=uri))
    assert str(error.value) == (
        "backend store postgresql://labelmix:***@127.0.0.1:5432/mlflow needs the PostgreSQL "
        "driver: pip install 'labelmix[postgres]' (psycopg2-binary)"
    )


def test_unreachable_postgres_is_reported_without_the_password(tmp_path, free_port):
    pytest.importorskip("psycopg2")
    uri = f"postgresql://labelmix:hunter2@127.0.0.1:{free_port}/mlflow"  # nothing listens there
    with pytest.raises(UserError) as error:
        start(ServerSettings(state_dir=tmp_path, port=free_port, backend_store_uri=uri))
    message = str(error.value)
    assert message.startswith(
        f"cannot connect to PostgreSQL at 127.0.0.1:{free_port}/mlflow as labelmix: "
    )
    assert "hunter2" not in message and "\n" not in message
    assert not (tmp_path / "server.log").exists()


# ---------------------------------------------------------------------------------------------
# Failures only the server sees: read back from its log


@pytest.mark.slow
def test_server_that_exits_early_reports_its_log(tmp_path, free_port):
    uri = "bogus://labelmix:hunter2@nowhere/db"  # MLflow knows no such store
    with pytest.raises(UserError) as error:
        start(ServerSettings(state_dir=tmp_path, port=free_port, backend_store_uri=uri))
    message = str(error.value)
    assert message.startswith("mlflow server exited with status 1: ")
    assert f"last lines of {(tmp_path / 'server.log').resolve()}:" in message
    assert "bogus://labelmix:***@nowhere/db" in message and "hunter2" not in message
    assert not status(tmp_path).running and not (tmp_path / "server.json").exists()


@pytest.mark.slow
def test_server_that_never_answers_is_stopped(tmp_path, free_port):
    settings = ServerSettings(state_dir=tmp_path, port=free_port)
    never = r"did not answer http://127\.0\.0\.1:\d+/health within 0\.5 s"
    with pytest.raises(UserError, match=never):
        start(settings, timeout_s=0.5)  # MLflow needs seconds just to import
    assert not (tmp_path / "server.json").exists()
    preflight.check_port_free("127.0.0.1", free_port)  # nothing half-started holds the port


# ---------------------------------------------------------------------------------------------
# PostgreSQL backend store (skipped where the PostgreSQL server programs are missing)


@pytest.mark.slow
def test_postgres_backend_logs_runs(postgres_uri, tmp_path, free_port):
    info = start(ServerSettings(state_dir=tmp_path, port=free_port, backend_store_uri=postgres_uri))
    try:
        assert info.backend_store_uri == mask_password(
            postgres_uri.replace("postgresql://", "postgresql+psycopg2://")
        )
        described = status(tmp_path).describe()
        assert "labelmix:***@" in described and ":labelmix@" not in described
        assert ":labelmix@" not in (tmp_path / "server.json").read_text()
        client = mlflow.MlflowClient(tracking_uri=info.uri)
        experiment_id = client.create_experiment("postgres")
        run_id = client.create_run(experiment_id).info.run_id
        client.log_metric(run_id, "val/miou", 0.5)
        client.log_text(run_id, "ok", "note.txt")
        client.set_terminated(run_id)
        assert client.get_run(run_id).data.metrics["val/miou"] == 0.5
    finally:
        assert stop(tmp_path) is True
    assert not status(tmp_path).running


@pytest.mark.slow
def test_wrong_postgres_password_is_reported_before_starting(postgres_uri, tmp_path, free_port):
    wrong = postgres_uri.replace("labelmix:labelmix@", "labelmix:not-the-password@")
    with pytest.raises(UserError) as error:
        start(ServerSettings(state_dir=tmp_path, port=free_port, backend_store_uri=wrong))
    message = str(error.value)
    host_port_db = postgres_uri.rsplit("@", 1)[1]
    assert message.startswith(f"cannot connect to PostgreSQL at {host_port_db} as labelmix: ")
    assert "password authentication failed" in message
    assert "not-the-password" not in message
    assert not (tmp_path / "server.log").exists()  # refused before mlflow started
