"""CLI: ``labelmix server start|status|stop``, a thin shell over ``labelmix.mlflow_server``.

The server runs in the background (its own process group) and outlives the command; ``status`` and
``stop`` find it again through ``<state dir>/server.json``.
"""

from __future__ import annotations

from pathlib import Path

from labelmix.mlflow_server.server import ServerSettings, start, status, stop

DEFAULT_STATE_DIR = ServerSettings.state_dir


def cmd_start(args) -> int:
    settings = ServerSettings(
        state_dir=Path(args.state_dir), backend_store_uri=args.backend_store_uri,
        artifacts_destination=args.artifacts_destination, host=args.host, port=args.port, basic_auth=args.basic_auth,
    )
    info = start(settings, timeout_s=args.timeout)
    print(f"MLflow server running at {info.uri} (pid {info.pid}, healthy)")
    print(f"backend store: {info.backend_store_uri}")
    print(f"artifacts: {info.artifacts_destination}")
    print(f"log: {info.log_path}")
    print(f"use it: labelmix submit SPEC --tracking-uri {info.uri}   (or export MLFLOW_TRACKING_URI={info.uri})")
    print(f"stop it: labelmix server stop --state-dir {args.state_dir}")
    return 0


def cmd_status(args) -> int:
    """Exit status 0 when the recorded server answers /health, 1 otherwise (for scripts)."""
    state = status(Path(args.state_dir))
    print(state.describe())
    return 0 if state.healthy else 1


def cmd_stop(args) -> int:
    state = status(Path(args.state_dir))
    if stop(Path(args.state_dir)):
        print(f"stopped the MLflow server at {state.uri} (pid {state.pid})")
    else:
        print(f"no MLflow server running from {args.state_dir}")
    return 0


def register(sub) -> None:
    server = sub.add_parser("server", help="start, check or stop a local MLflow tracking server")
    actions = server.add_subparsers(dest="server_command", required=True, metavar="ACTION")

    def state_dir(p):
        p.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR),
                       help=f"server.json, server.log and the default database live here (default {DEFAULT_STATE_DIR})")

    p = actions.add_parser("start", help="start a server in the background and wait until it answers /health")
    state_dir(p)
    p.add_argument("--backend-store-uri", default=None,
                   help="sqlite:///path.db or postgresql://user:password@host/db (default: SQLite in the state dir)")
    p.add_argument("--artifacts-destination", default=None,
                   help="folder or s3://... for artifacts, served through the server (default: <state dir>/artifacts)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; others need --basic-auth)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--basic-auth", action="store_true",
                   help="MLflow's basic auth (needs mlflow[auth]; first start: export MLFLOW_AUTH_ADMIN_PASSWORD)")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for /health (default 60)")
    p.set_defaults(func=cmd_start)

    p = actions.add_parser("status", help="whether the recorded server runs and answers /health (exit 1 if not)")
    state_dir(p)
    p.set_defaults(func=cmd_status)

    p = actions.add_parser("stop", help="stop the recorded server (SIGTERM, then SIGKILL)")
    state_dir(p)
    p.set_defaults(func=cmd_stop)
