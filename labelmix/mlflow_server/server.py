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
"""

from __future__ import annotations

import errno
import importlib.util
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from labelmix.errors import UserError

STATE_FILE = "server.json"
LOG_FILE = "server.log"
LOG_TAIL_LINES = 15
_HAVE_PROC = Path("/proc/self/stat").exists()
# Servers started by this process, kept so they can be reaped when stopped (no zombies, no
# "subprocess still running" warnings when a Popen goes out of scope).
_CHILDREN: dict[int, subprocess.Popen] = {}


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
        return f"http://{_client_host(self.host)}:{self.port}"


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

    _refuse_if_running(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)  # holds the default SQLite database
    _check_backend(settings.backend_store_uri or backend, backend)
    if settings.basic_auth:
        _check_basic_auth(state_dir)
    _check_port_free(settings.host, settings.port)

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
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = _secret_key(state_dir)

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
    _CHILDREN[proc.pid] = proc
    # Recorded before the wait: a server left starting by a killed caller can still be stopped.
    _write_state(info)

    try:
        _wait_healthy(proc, info, backend, log_offset, timeout_s)
    except BaseException:
        _kill_group(proc.pid, timeout_s=10)
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        raise
    return info


def status(state_dir: Path | str = ServerSettings.state_dir) -> ServerStatus:
    """Whether the server recorded in ``state_dir`` is alive and answering."""
    state_dir = Path(state_dir)
    record = _read_state(state_dir)
    if record is None:
        return ServerStatus(state_dir=state_dir)
    pid, uri = record["pid"], record["uri"]
    running = _is_our_server(pid)
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
    record = _read_state(state_dir)
    if record is None:
        return False
    pid = record["pid"]
    was_running = _is_our_server(pid)
    if was_running:
        _kill_group(pid, timeout_s=timeout_s)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return was_running


def probe_health(uri: str, timeout_s: float = 2, user: str | None = None, password: str | None = None) -> str | None:
    """None when ``GET <uri>/health`` answers 200 within ``timeout_s``, else why not (one line).

    ``user`` and ``password`` go in a basic-auth header; loopback addresses bypass any HTTP(S)_PROXY.
    The one health check: ``check_health`` and the tracking callback's pre-flight check use it."""
    import base64

    handlers = []
    if is_loopback(urlsplit(uri).hostname or ""):
        handlers.append(urllib.request.ProxyHandler({}))  # an HTTP(S)_PROXY must not see loopback
    request = urllib.request.Request(uri.rstrip("/") + "/health")
    if user and password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout_s) as response:
            return None if response.status == 200 else f"GET /health answered {response.status}"
    except urllib.error.HTTPError as e:
        return f"GET /health answered {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return str(getattr(e, "reason", None) or e)


def check_health(uri: str, timeout_s: float = 2) -> bool:
    """True when ``GET <uri>/health`` answers 200 within ``timeout_s``."""
    return probe_health(uri, timeout_s) is None


def mask_password(text: str) -> str:
    """``postgresql://u:secret@host/db`` -> ``postgresql://u:***@host/db``, anywhere in text."""
    # Greedy up to the last "@" before the path, so a raw "@" in a password is masked too.
    return re.sub(r"(://[^:/@\s]*:)[^/\s]*@", r"\1***@", text)


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``http://user:secret@host:5000/`` -> (``http://host:5000/``, ``user``, ``secret``).

    Only http(s) URIs lose their user info (a database URI keeps its login). A password written
    ``***`` (a redacted URI, as labelmix records them) counts as not given.
    """
    parts = urlsplit(uri) if "://" in uri else None
    if parts is None or parts.scheme.lower() not in ("http", "https") or "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")  # rpartition: a raw "@" in the password stays in it
    user, sep, password = userinfo.partition(":")
    password = unquote(password) if sep and password not in ("", "***") else None
    return urlunsplit(parts._replace(netloc=hostport)), unquote(user) or None, password


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# Checks made before the server starts


def _refuse_if_running(state_dir: Path) -> None:
    record = _read_state(state_dir)
    if record is None:
        return
    pid, uri = record["pid"], record["uri"]
    if not _is_our_server(pid):
        (state_dir / STATE_FILE).unlink(missing_ok=True)  # left by a server that died
        return
    if check_health(uri):
        raise UserError(
            f"an MLflow server is already running at {uri} (pid {pid}, state in {state_dir}); "
            "use it, or stop it first with `labelmix server stop`"
        )
    raise UserError(
        f"an MLflow server started from {state_dir} (pid {pid}) is still running but not answering "
        f"{uri}/health; stop it first with `labelmix server stop` (log: {state_dir / LOG_FILE})"
    )


def _check_backend(given: str, resolved: str) -> None:
    """``given`` is the URI as the user wrote it (for messages), ``resolved`` what MLflow gets."""
    scheme = resolved.split("://", 1)[0].lower() if "://" in resolved else ""
    if scheme == "sqlite":
        path = resolved[len("sqlite:///"):] if resolved.startswith("sqlite:///") else ""
        if path and path != ":memory:" and not Path(path).parent.is_dir():
            raise UserError(f"backend store {given}: directory {Path(path).parent} does not exist")
    elif scheme == "postgresql+psycopg2":
        _check_postgres(given, resolved)
    # Other stores (mysql, mssql, plugins) are left to MLflow; its log explains failures.


def _check_basic_auth(state_dir: Path) -> None:
    if not _flask_wtf_available():
        raise UserError(
            "basic auth needs MLflow's auth extra (Flask-WTF, for CSRF checks): "
            "pip install 'mlflow[auth]'"
        )
    # MLflow ships no default admin password: on the first start (no user database yet, which
    # basic_auth.ini puts at ./basic_auth.db, i.e. in the state directory) it refuses to start
    # unless it is told one. A custom MLFLOW_AUTH_CONFIG_PATH may set it in the file instead.
    if (
        os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD")
        or os.environ.get("MLFLOW_AUTH_CONFIG_PATH")
        or (state_dir / "basic_auth.db").exists()
    ):
        return
    raise UserError(
        "basic auth: MLflow creates the admin user 'admin' on the first start and needs its "
        "password; export MLFLOW_AUTH_ADMIN_PASSWORD='<a strong password>' and start again"
    )


def _flask_wtf_available() -> bool:
    return importlib.util.find_spec("flask_wtf") is not None


def _psycopg2_available() -> bool:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return False
    return True


def _check_postgres(given: str, uri: str) -> None:
    masked = mask_password(given)
    if not _psycopg2_available():
        raise UserError(
            f"backend store {masked} needs the PostgreSQL driver: "
            "pip install 'labelmix[postgres]' (psycopg2-binary)"
        )
    import psycopg2

    parts = urlsplit(uri)
    user = unquote(parts.username or "") or None
    password = unquote(parts.password or "") or None
    dbname = unquote(parts.path.lstrip("/")) or None
    try:
        port = parts.port
    except ValueError:
        raise UserError(f"backend store {masked}: the port is not a number") from None
    query = dict(
        pair.split("=", 1) for pair in parts.query.split("&") if "=" in pair
    )  # libpq options such as sslmode=require
    query = {key: unquote(value) for key, value in query.items()}
    host = unquote(parts.hostname or "") or None
    where = f"{host or 'localhost'}:{port or 5432}/{dbname or user or ''}"
    try:
        conn = psycopg2.connect(
            host=host, port=port, dbname=dbname, user=user, password=password,
            connect_timeout=5, **query,
        )  # fmt: skip
    except psycopg2.Error as e:
        first = _driver_first_line(str(e))
        if password:
            first = first.replace(password, "***")
        raise UserError(
            f"cannot connect to PostgreSQL at {where} as {user or 'the default user'}: {first}"
        ) from None
    conn.close()


def _driver_first_line(message: str) -> str:
    """libpq: 'connection to server at "h", port 1 failed: FATAL:  reason' -> 'reason'."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    first = lines[0] if lines else "unknown error"
    first = re.sub(r'^connection to server (at|on) .*? failed: ', "", first)
    first = re.sub(r"^FATAL:\s+", "", first)
    return first


def _check_port_free(host: str, port: int) -> None:
    bind_host = host.strip("[]")
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    # Like uvicorn: a port in TIME_WAIT is free, one with a listener (or a bound socket) is not.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((bind_host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} on {host} is already in use; choose another with --port"
            ) from None
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    finally:
        probe.close()


# ---------------------------------------------------------------------------------------------
# Waiting, reading the log, process groups


def _wait_healthy(
    proc: subprocess.Popen, info: ServerInfo, backend: str, log_offset: int, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise UserError(
                _explain_failure(
                    info, backend, log_offset, f"mlflow server exited with status {code}"
                )
            )
        if check_health(info.uri, timeout_s=1):
            return
        if time.monotonic() > deadline:
            raise UserError(
                _explain_failure(
                    info, backend, log_offset,
                    f"mlflow server did not answer {info.uri}/health within {timeout_s:g} s",
                )  # fmt: skip
            )
        time.sleep(0.25)


def _explain_failure(info: ServerInfo, backend: str, log_offset: int, what: str) -> str:
    tail = _log_tail(info.log_path, log_offset, backend)
    text = "\n".join(tail)
    masked = mask_password(backend)
    if "address already in use" in text.lower():
        return f"port {info.port} on {info.host} is already in use; choose another with --port"
    if "password authentication failed" in text:
        return f"backend store {masked}: password authentication failed (log: {info.log_path})"
    missing = re.search(r"No module named '([\w.]+)'", text)
    if missing:
        return (
            f"{what}: backend store {masked} needs the Python module "
            f"'{missing.group(1)}', which is not installed (log: {info.log_path})"
        )
    # A Python traceback ends in "module.SomeError: reason": lead with that line.
    errors = [line for line in tail if re.match(r"^[\w.]*(Error|Exception)\b.*:", line)]
    if errors:
        what = f"{what}: {errors[-1].strip()}"
    return f"{what}\nlast lines of {info.log_path}:\n" + "\n".join(tail[-8:])


def _log_tail(log_path: Path, offset: int, backend: str) -> list[str]:
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    password = unquote(urlsplit(backend).password or "") if "://" in backend else ""
    lines = []
    for line in text.splitlines()[-LOG_TAIL_LINES:]:
        line = mask_password(line)
        if password:
            line = line.replace(password, "***")
        lines.append(line)
    return lines


def _secret_key(state_dir: Path) -> str:
    path = state_dir / "flask_secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # owner-only from the start
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def _write_state(info: ServerInfo) -> None:
    record = {
        "pid": info.pid,
        "uri": info.uri,
        "backend_store_uri": info.backend_store_uri,  # already masked
        "artifacts_destination": info.artifacts_destination,
        "host": info.host,
        "port": info.port,
    }
    path = info.state_dir / STATE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def _read_state(state_dir: Path) -> dict | None:
    path = state_dir / STATE_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a labelmix server record ({e}); delete it") from None
    if not (isinstance(record, dict) and isinstance(record.get("pid"), int) and "uri" in record):
        raise UserError(f"{path} is not a labelmix server record (needs pid and uri); delete it")
    return record


def _is_our_server(pid: int) -> bool:
    """Alive, not a zombie, and (where /proc tells) an mlflow process: a pid reused by an
    unrelated program must never be signalled."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user; /proc still tells what it is
    if not _HAVE_PROC:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]  # after comm, which may hold spaces and ")"
    return state != "Z" and b"mlflow" in cmdline


def _group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process left in the group. Zombies count as gone: in containers
    PID 1 may never reap the orphans."""
    proc = Path("/proc")
    if not _HAVE_PROC:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields after comm: state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _kill_group(pgid: int, timeout_s: float) -> None:
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        if _wait_group_gone(pgid, wait_s):
            break
    _reap(pgid)


def _wait_group_gone(pgid: int, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        _reap(pgid)
        if not _group_alive(pgid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _reap(pid: int) -> None:
    """Collect the exit status when the server is this process's child (else it stays a zombie)."""
    proc = _CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        del _CHILDREN[pid]


def _client_host(host: str) -> str:
    host = host.strip("[]")
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    if ":" in host:
        return f"[{host}]"
    return host
