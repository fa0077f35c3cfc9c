"""Start, check and stop a local MLflow tracking server.

One server per state directory. ``start`` runs ``python -m mlflow server`` in its own process
group with stdout and stderr appended to ``<state_dir>/server.log``, waits until ``GET /health``
answers 200 and records the server in ``<state_dir>/server.json``. ``status`` and ``stop`` read
that file, so they work from any later process.

Every check that can fail is made before the server process starts (settings, port, database
driver, database login), so a mistake gives one clear :class:`UserError` and never a half-started
server. Failures only the server can see are read back from its log.

Passwords in backend store URIs never appear in a message, in ``server.json`` or on the server's
command line (which any user can read with ``ps``): the URI reaches MLflow through the
``MLFLOW_BACKEND_STORE_URI`` environment variable, which ``mlflow server`` reads for
``--backend-store-uri``.

MLflow 3's security middleware (Host-header and CORS checks) is left on with its defaults:
they accept localhost, 127.0.0.1 and [::1] on any port, which is all a loopback server needs.
A server bound to 0.0.0.0 (basic auth required) that clients reach by a public name would
need MLflow's ``--allowed-hosts``, which these settings do not expose.

MLflow 3 also starts a job runner for GenAI jobs (scorers, prompt optimisation), about eight
extra processes; labelmix uses none, so ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` defaults to
false here (set it in the environment to override).

POSIX only (process groups, ``/proc`` where present).

This module holds the settings, the records and ``start`` / ``status`` / ``stop``; the checks
made before a start are in ``preflight``, the process mechanics (``server.json``, waiting for
``/health``, the log, process groups) in ``process``, and the URI helpers in ``uris``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from labelmix.errors import UserError
from labelmix.mlflow_server.preflight import check_backend, check_basic_auth, check_port_free, refuse_if_running
from labelmix.mlflow_server.process import (CHILDREN, LOG_FILE, STATE_FILE, is_our_server, kill_group, read_state,
                                            secret_key, wait_healthy, write_state)
# probe_health: labelmix.platform.mlflow_runs imports it from here.
from labelmix.mlflow_server.uris import check_health, client_host, is_loopback, mask_password, probe_health

__all__ = ["ServerInfo", "ServerSettings", "ServerStatus", "build_command", "probe_health", "start", "status", "stop"]


@dataclass(frozen=True)
class ServerSettings:
    """How to run the tracking server. Checked at construction; nothing starts here."""

    state_dir: Path = Path(".labelmix/server")  # server.json, server.log, default db and artifacts
    backend_store_uri: str | None = None  # default: sqlite:///<state_dir>/mlflow.db
    artifacts_destination: str | None = None  # default: <state_dir>/artifacts
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 1
    basic_auth: bool = False  # MLflow's built-in basic auth (--app-name basic-auth)

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        port_ok = isinstance(self.port, int) and not isinstance(self.port, bool)
        if not port_ok or not 1 <= self.port <= 65535:
            raise UserError(f"port: must be an integer from 1 to 65535, got {self.port!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise UserError(f"workers: must be an integer >= 1, got {self.workers!r}")
        if not isinstance(self.host, str) or not self.host.strip():
            raise UserError(
                f"host: must be an interface address such as 127.0.0.1, got {self.host!r}"
            )
        # An MLflow server without auth lets anyone who reaches it read and delete every run.
        if not self.basic_auth and not is_loopback(self.host):
            raise UserError(
                f"host {self.host} is not loopback: anyone who can reach this machine on port "
                f"{self.port} could read and delete every experiment; enable basic auth "
                "(--basic-auth) or bind 127.0.0.1 and use an SSH tunnel "
                f"(ssh -L {self.port}:127.0.0.1:{self.port} THIS_HOST)"
            )

    @property
    def resolved_backend_store_uri(self) -> str:
        """The backend store URI MLflow gets: defaults filled in, relative SQLite paths made
        absolute, the PostgreSQL driver named."""
        if self.backend_store_uri is None:
            return f"sqlite:///{(self.state_dir / 'mlflow.db').resolve()}"
        uri = self.backend_store_uri
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which labelmix[postgres] does not
        # install; name the driver we check for and ship (psycopg2).
        for bare in ("postgresql://", "postgres://"):
            if uri.startswith(bare):
                return "postgresql+psycopg2://" + uri[len(bare):]
        # The server runs with the state directory as working directory, so a relative path
        # would silently move; anchor it where the user typed it.
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            path = uri[len("sqlite:///"):]
            if path and path != ":memory:":
                return f"sqlite:///{Path(path).resolve()}"
        return uri

    @property
    def resolved_artifacts_destination(self) -> str:
        dest = self.artifacts_destination
        if dest is None:
            return str((self.state_dir / "artifacts").resolve())
        if "://" in dest or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", dest):
            return dest  # s3://..., gs://..., file:/...
        return str(Path(dest).resolve())

    @property
    def uri(self) -> str:
        """The URI clients on this machine use (a wildcard bind is reached through loopback)."""
        return f"http://{client_host(self.host)}:{self.port}"


@dataclass(frozen=True)
class ServerInfo:
    """A started server. ``backend_store_uri`` has its password masked."""

    uri: str
    pid: int
    backend_store_uri: str
    artifacts_destination: str
    host: str
    port: int
    state_dir: Path
    log_path: Path


@dataclass(frozen=True)
class ServerStatus:
    """What ``server.json`` says and whether it still holds; ``uri`` is None if none was started."""

    state_dir: Path
    uri: str | None = None
    pid: int | None = None
    running: bool = False  # the recorded process is alive
    healthy: bool = False  # GET /health answered 200
    backend_store_uri: str | None = None  # password masked
    artifacts_destination: str | None = None
    log_path: Path | None = field(default=None)

    def describe(self) -> str:
        """A few lines for the CLI."""
        if self.uri is None:
            return f"no server recorded in {self.state_dir}"
        state = "running" if self.running else "not running"
        health = "healthy" if self.healthy else "not answering /health"
        lines = [
            f"{self.uri}: {state}, {health} (pid {self.pid})",
            f"backend store: {self.backend_store_uri}",
            f"artifacts: {self.artifacts_destination}",
            f"log: {self.log_path}",
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Public API


def build_command(settings: ServerSettings) -> list[str]:
    """The ``mlflow server`` command line (the backend store URI travels in the environment)."""
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--serve-artifacts",
        "--artifacts-destination", settings.resolved_artifacts_destination,
        "--host", settings.host,
        "--port", str(settings.port),
        "--workers", str(settings.workers),
    ]  # fmt: skip
    if settings.basic_auth:
        cmd += ["--app-name", "basic-auth"]
    return cmd


def start(settings: ServerSettings, timeout_s: float = 60) -> ServerInfo:
    """Start a tracking server in the background and wait until it answers ``/health``."""
    state_dir = settings.state_dir
    backend = settings.resolved_backend_store_uri
    masked_backend = mask_password(backend)

    refuse_if_running(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)  # holds the default SQLite database
    check_backend(settings.backend_store_uri or backend, backend)
    if settings.basic_auth:
        check_basic_auth(state_dir)
    check_port_free(settings.host, settings.port)

    artifacts = settings.resolved_artifacts_destination
    if "://" not in artifacts and not artifacts.startswith("file:"):
        Path(artifacts).mkdir(parents=True, exist_ok=True)
    log_path = (state_dir / LOG_FILE).resolve()

    env = dict(os.environ)
    # `mlflow server` reads these as flags; each would contradict the settings (artifacts-only
    # serves no runs, a static prefix moves /health, a default artifact root bypasses the
    # artifact proxy), so a stray one in the caller's shell must not reach it.
    for name in ("MLFLOW_ARTIFACTS_ONLY", "MLFLOW_STATIC_PREFIX", "MLFLOW_DEFAULT_ARTIFACT_ROOT"):
        env.pop(name, None)
    env["MLFLOW_BACKEND_STORE_URI"] = backend  # not on argv: `ps` shows argv to every user
    env["PYTHONUNBUFFERED"] = "1"  # the log is read back on failure; flush as it happens
    # No GenAI job runner (see the module docstring); the caller's environment may turn it on.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if settings.basic_auth and not env.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        # The auth app's CSRF protection refuses to start without a static key; keep one per
        # state directory so sessions survive restarts and all workers agree.
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret_key(state_dir)

    with open(log_path, "ab") as log:
        log_offset = log.tell()
        log.write(f"--- labelmix: starting {settings.uri} at {time.ctime()} ---\n".encode())
        log.flush()
        proc = subprocess.Popen(
            build_command(settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=state_dir,  # MLflow's relative defaults (basic_auth.db, ./mlruns) land here
            env=env,
            start_new_session=True,  # own process group: stop() signals the server and its workers
        )
    info = ServerInfo(
        uri=settings.uri,
        pid=proc.pid,
        backend_store_uri=masked_backend,
        artifacts_destination=artifacts,
        host=settings.host,
        port=settings.port,
        state_dir=state_dir,
        log_path=log_path,
    )
    CHILDREN[proc.pid] = proc
    # Recorded before the wait: a server left starting by a killed caller can still be stopped.
    write_state(info)

    try:
        wait_healthy(proc, info, backend, log_offset, timeout_s)
    except BaseException:
        kill_group(proc.pid, timeout_s=10)
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        raise
    return info


def status(state_dir: Path | str = ServerSettings.state_dir) -> ServerStatus:
    """Whether the server recorded in ``state_dir`` is alive and answering."""
    state_dir = Path(state_dir)
    record = read_state(state_dir)
    if record is None:
        return ServerStatus(state_dir=state_dir)
    pid, uri = record["pid"], record["uri"]
    running = is_our_server(pid)
    return ServerStatus(
        state_dir=state_dir,
        uri=uri,
        pid=pid,
        running=running,
        healthy=running and check_health(uri),
        backend_store_uri=mask_password(record.get("backend_store_uri", "")),
        artifacts_destination=record.get("artifacts_destination"),
        log_path=state_dir / LOG_FILE,
    )


def stop(state_dir: Path | str = ServerSettings.state_dir, timeout_s: float = 20) -> bool:
    """Stop the server recorded in ``state_dir``: SIGTERM its process group, SIGKILL after
    ``timeout_s``. Returns False when nothing was running (a stale ``server.json`` is removed)."""
    state_dir = Path(state_dir)
    record = read_state(state_dir)
    if record is None:
        return False
    pid = record["pid"]
    was_running = is_our_server(pid)
    if was_running:
        kill_group(pid, timeout_s=timeout_s)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return was_running
