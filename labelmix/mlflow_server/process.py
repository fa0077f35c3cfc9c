"""The server process: its record (``<state_dir>/server.json``), waiting until it answers
``/health``, reading its log back when it fails, and ending its process group.

POSIX only (process groups, ``/proc`` where present).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from labelmix.errors import UserError
from labelmix.mlflow_server.uris import check_health, mask_password

if TYPE_CHECKING:
    from labelmix.mlflow_server.server import ServerInfo

__all__ = ["CHILDREN", "LOG_FILE", "STATE_FILE", "is_our_server", "kill_group", "read_state", "secret_key",
           "wait_healthy", "write_state"]

STATE_FILE = "server.json"
LOG_FILE = "server.log"
LOG_TAIL_LINES = 15
_HAVE_PROC = Path("/proc/self/stat").exists()
# Servers started by this process, kept so they can be reaped when stopped (no zombies, no
# "subprocess still running" warnings when a Popen goes out of scope).
CHILDREN: dict[int, subprocess.Popen] = {}


def wait_healthy(
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


def secret_key(state_dir: Path) -> str:
    path = state_dir / "flask_secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # owner-only from the start
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def write_state(info: ServerInfo) -> None:
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


def read_state(state_dir: Path) -> dict | None:
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


def is_our_server(pid: int) -> bool:
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


def kill_group(pgid: int, timeout_s: float) -> None:
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
    proc = CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        del CHILDREN[pid]
