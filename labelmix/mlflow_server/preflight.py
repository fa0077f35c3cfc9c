"""Checks made before the tracking server starts, each refusing with one clear UserError: a server
already recorded in the state directory, the backend store (SQLite folder; PostgreSQL driver and
login), basic auth's extra and admin password, and the port.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import socket
from pathlib import Path
from urllib.parse import unquote, urlsplit

from labelmix.errors import UserError
from labelmix.mlflow_server.process import LOG_FILE, STATE_FILE, is_our_server, read_state
from labelmix.mlflow_server.uris import check_health, mask_password

__all__ = ["check_backend", "check_basic_auth", "check_port_free", "refuse_if_running"]


def refuse_if_running(state_dir: Path) -> None:
    record = read_state(state_dir)
    if record is None:
        return
    pid, uri = record["pid"], record["uri"]
    if not is_our_server(pid):
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


def check_backend(given: str, resolved: str) -> None:
    """``given`` is the URI as the user wrote it (for messages), ``resolved`` what MLflow gets."""
    scheme = resolved.split("://", 1)[0].lower() if "://" in resolved else ""
    if scheme == "sqlite":
        path = resolved[len("sqlite:///"):] if resolved.startswith("sqlite:///") else ""
        if path and path != ":memory:" and not Path(path).parent.is_dir():
            raise UserError(f"backend store {given}: directory {Path(path).parent} does not exist")
    elif scheme == "postgresql+psycopg2":
        _check_postgres(given, resolved)
    # Other stores (mysql, mssql, plugins) are left to MLflow; its log explains failures.


def check_basic_auth(state_dir: Path) -> None:
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


def check_port_free(host: str, port: int) -> None:
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
