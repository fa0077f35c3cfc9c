"""A throwaway PostgreSQL server for tests and for trying the PostgreSQL backend store.

``temporary_postgres(port)`` creates a fresh cluster in a temporary directory, listening only on
127.0.0.1:port with password (SCRAM) authentication over TCP, creates the user ``labelmix`` and
the database ``mlflow``, yields the URI, and removes everything on exit::

    with temporary_postgres(5433) as uri:   # postgresql://labelmix:labelmix@127.0.0.1:5433/mlflow
        start(ServerSettings(backend_store_uri=uri, port=5001))

It needs the PostgreSQL server programs (``initdb``, ``pg_ctl``, ``postgres``, ``psql``; on
Debian/Ubuntu ``apt-get install postgresql``, which puts them in /usr/lib/postgresql/<N>/bin).
PostgreSQL refuses to run as root, so as root they run as the ``postgres`` user (``runuser``, or
``su`` where runuser is missing); as any other user they run as that user.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

PROGRAMS = ("initdb", "pg_ctl", "postgres", "psql")
RUN_AS = "postgres"  # the account the server programs run as when we are root


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server programs are missing, unusable here, or failed to start."""


def find_pg_bin() -> Path | None:
    """The directory holding initdb, pg_ctl, postgres and psql, or None.

    Looks at $LABELMIX_PG_BIN, then the PATH (following symlinks such as
    /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb), then the distribution layouts
    /usr/lib/postgresql/<N>/bin (Debian, Ubuntu) and /usr/pgsql-<N>/bin (RHEL), newest first.
    """
    candidates: list[Path] = []
    if os.environ.get("LABELMIX_PG_BIN"):
        candidates.append(Path(os.environ["LABELMIX_PG_BIN"]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    versioned = [*Path("/usr/lib/postgresql").glob("*/bin"), *Path("/usr").glob("pgsql-*/bin")]
    candidates += sorted(versioned, key=_version_key, reverse=True)
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in PROGRAMS):
            return directory
    return None


def unavailable_reason() -> str | None:
    """Why ``temporary_postgres`` cannot run here (a skip reason), or None when it can."""
    if find_pg_bin() is None:
        return (
            "PostgreSQL server programs (initdb, pg_ctl, postgres, psql) not found; "
            "install them with `apt-get install postgresql` or set LABELMIX_PG_BIN"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"running as root and there is no '{RUN_AS}' user to run PostgreSQL as"
        if not (shutil.which("runuser") or shutil.which("su")):
            return f"running as root and neither runuser nor su is available to become '{RUN_AS}'"
    return None


@contextmanager
def temporary_postgres(port: int, password: str = "labelmix") -> Iterator[str]:
    """Run a fresh PostgreSQL cluster on 127.0.0.1:port; yield
    ``postgresql://labelmix:PASSWORD@127.0.0.1:PORT/mlflow``; stop and delete it on exit."""
    reason = unavailable_reason()
    if reason:
        raise PostgresUnavailable(reason)
    bin_dir = find_pg_bin()
    assert bin_dir is not None
    root = Path(tempfile.mkdtemp(prefix="labelmix-pg-"))
    if os.geteuid() == 0:
        account = pwd.getpwnam(RUN_AS)
        os.chown(root, account.pw_uid, account.pw_gid)
    data, log = root / "data", root / "postgres.log"
    started = False
    try:
        _run(
            [
                str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                "--auth-local=trust",  # only through the socket in our private 0700 directory
                "--auth-host=scram-sha-256",  # TCP, which MLflow uses, needs the password
                "--no-locale", "-E", "UTF8", "--no-sync",
            ],  # fmt: skip
            root,
        )
        server_options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={int(port)}",
                f"-c unix_socket_directories={shlex.quote(str(root))}",
                "-c fsync=off -c full_page_writes=off",  # throwaway data: skip the disk syncs
            ]
        )
        try:
            _run(
                [
                    str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log),
                    "-w", "-t", "30", "-o", server_options, "start",
                ],  # fmt: skip
                root,
            )
        except PostgresUnavailable as e:
            raise PostgresUnavailable(f"{e}\nserver log:\n{_tail(log)}") from None
        started = True
        literal = "'" + password.replace("'", "''") + "'"
        # The password goes through stdin, never on a command line.
        _run(
            [
                str(bin_dir / "psql"), "-h", str(root), "-p", str(int(port)), "-U", "postgres",
                "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-f", "-",
            ],  # fmt: skip
            root,
            stdin=(
                f"CREATE ROLE labelmix LOGIN PASSWORD {literal};\n"
                "CREATE DATABASE mlflow OWNER labelmix;\n"
            ),
        )
        yield f"postgresql://labelmix:{quote(password, safe='')}@127.0.0.1:{int(port)}/mlflow"
    finally:
        if started:
            # immediate: no checkpoint, the data is deleted next anyway
            _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                 root, check=False)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _run(cmd: list[str], cwd: Path, stdin: str | None = None, check: bool = True) -> None:
    program = Path(cmd[0]).name
    if os.geteuid() == 0:
        if shutil.which("runuser"):
            cmd = ["runuser", "-u", RUN_AS, "--", *cmd]
        else:
            cmd = ["su", RUN_AS, "-s", "/bin/sh", "-c", shlex.join(cmd)]
    result = subprocess.run(
        cmd, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    if check and result.returncode != 0:
        output = (result.stderr or result.stdout).strip().splitlines()[-10:]
        raise PostgresUnavailable(
            f"{program} failed with status {result.returncode}:\n" + "\n".join(output)
        )


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", str(bin_dir.parent.name)))
