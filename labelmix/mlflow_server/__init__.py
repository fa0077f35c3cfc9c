"""Start, check and stop an MLflow tracking server (SQLite by default, PostgreSQL for teams)."""

from labelmix.mlflow_server.server import (
    ServerInfo,
    ServerSettings,
    ServerStatus,
    build_command,
    start,
    status,
    stop,
)
from labelmix.mlflow_server.uris import (
    check_health,
    is_loopback,
    mask_password,
    probe_health,
    split_credentials,
)

__all__ = [
    "ServerInfo",
    "ServerSettings",
    "ServerStatus",
    "build_command",
    "check_health",
    "is_loopback",
    "mask_password",
    "probe_health",
    "split_credentials",
    "start",
    "status",
    "stop",
]
