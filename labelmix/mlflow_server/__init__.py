"""Start, check and stop an MLflow tracking server (SQLite by default, PostgreSQL for teams)."""

from labelmix.mlflow_server.server import (
    ServerInfo,
    ServerSettings,
    ServerStatus,
    build_command,
    check_health,
    is_loopback,
    mask_password,
    split_credentials,
    start,
    status,
    stop,
)

__all__ = [
    "ServerInfo",
    "ServerSettings",
    "ServerStatus",
    "build_command",
    "check_health",
    "is_loopback",
    "mask_password",
    "split_credentials",
    "start",
    "status",
    "stop",
]
