"""Studies on a Ray cluster: where the driver runs, what the cluster holds, Ray Jobs, launcher files.

``labelmix submit SPEC --address ADDR`` picks one of two ways by the address:

- a GCS address (``auto``, ``HOST:6379``): this process is the study's driver; it attaches with
  ``ray.init(address=...)``. Run it on a node of the cluster (``ray attach cluster.yaml``).
- the Ray Jobs address of the dashboard (``http://HEAD:8265``, usually ``http://127.0.0.1:8265``
  through an SSH tunnel): the effective spec goes to the cluster as a Ray job whose entrypoint is
  ``labelmix submit spec.yaml --address auto``; the driver runs on the head. The code does not
  travel with the job: labelmix must be installed on every node (``cluster.yaml``'s
  ``setup_commands`` do it).

Storage: on a cluster of more than one node the study folder must be visible from every node,
because trials write their checkpoints and results from the node they run on. Which paths are
(``labelmix.platform.storage``) and the refusal of those that are not
(``storage_checks.check_shared_storage``, given this module's :func:`cluster_shape`) live with the
other storage code.

Cluster files: :func:`validate_cluster_file` checks ``cluster.yaml`` / ``cluster.local.yaml``
with Ray's own cluster-launcher validation (``ray/autoscaler/ray-schema.json``).
"""

from __future__ import annotations

import asyncio
import copy
import os
import shlex
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, TextIO

from labelmix.errors import UserError
from labelmix.platform.storage import SHARED_ENV

DEFAULT_JOBS_ADDRESS = "http://127.0.0.1:8265"
JOB_SPEC_FILE = "spec.yaml"


# --- addresses -----------------------------------------------------------------------------------


def is_jobs_address(address: Optional[str]) -> bool:
    """``http(s)://HOST:8265`` is the Ray Jobs API of a dashboard; anything else is a GCS address."""
    return bool(address) and address.lower().startswith(("http://", "https://"))


def check_gcs_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on ``HOST:PORT`` nobody listens on: ``ray.init`` itself waits minutes before giving up."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address: expected auto, HOST:PORT (the GCS of a running cluster) or http://HOST:8265 "
                        f"(its Ray Jobs API), got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise UserError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                        "start one (`ray up cluster.yaml`, `ray start --head`) or check the address") from None


def attach(address: str) -> None:
    """``ray.init`` on a running cluster, with the usual failures as one-line UserErrors."""
    import ray

    check_gcs_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as exc:
        hint = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        token = ""
        cause = exc.__cause__ or exc.__context__
        if "auth" in f"{exc} {cause}".lower():
            token = ("; the cluster uses token authentication: export RAY_AUTH_MODE=token and put the cluster's "
                     "token in ~/.ray/auth_token (or RAY_AUTH_TOKEN)")
        raise UserError(f"--address {address}: cannot attach to the Ray cluster: {hint}{token}") from None


# --- the cluster's shape -------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterShape:
    """What the driver sees of the cluster: alive nodes, and whether a trial fits on its own node."""

    nodes: int
    trials_fit_here: bool

    @property
    def multi_node(self) -> bool:
        # A head started with --num-cpus=0 (cluster.yaml) runs no trial: every trial lands on a worker
        # node, possibly one the autoscaler has not started yet.
        return self.nodes > 1 or not self.trials_fit_here


def cluster_shape(cpus: float, gpus: float) -> ClusterShape:
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    here = ray.get_runtime_context().get_node_id()
    mine = next((n for n in alive if n.get("NodeID") == here), None)
    fits = mine is not None and all(
        mine.get("Resources", {}).get(name, 0.0) >= need for name, need in (("CPU", cpus), ("GPU", gpus)) if need > 0
    )
    return ClusterShape(nodes=len(alive), trials_fit_here=fits)


# --- Ray Jobs ------------------------------------------------------------------------------------


def job_client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"--address {address}: no Ray Jobs API answers there ({exc}); open the tunnel to the head first "
            "(`ray dashboard cluster.yaml`, or ssh -L 8265:127.0.0.1:8265 ...)"
        ) from None


def job_entrypoint(*args: str) -> str:
    """``labelmix ARGS --address auto``: the command the job runs on the head, attached to its cluster."""
    return " ".join(["labelmix", *(shlex.quote(a) for a in args), "--address", "auto"])


def submit_job(address: str, entrypoint: str, files: Optional[Mapping[str, str]] = None,
               env: Optional[Mapping[str, str]] = None, metadata: Optional[Mapping[str, str]] = None,
               client: Any = None) -> str:
    """Send ``entrypoint`` as a Ray job; returns the job id.

    ``files`` (name -> text, e.g. the effective spec) make up the job's working directory. The
    code is not shipped: the entrypoint runs the labelmix installed on the cluster's nodes.
    """
    client = client or job_client(address)
    with tempfile.TemporaryDirectory(prefix="labelmix-job-") as folder:
        runtime_env: dict[str, Any] = {}
        if files:
            for name, text in files.items():
                (Path(folder) / name).write_text(text)
            runtime_env["working_dir"] = folder
        if env:
            runtime_env["env_vars"] = dict(env)
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env or None,
                                     metadata=dict(metadata or {}))
        except (RuntimeError, ConnectionError) as exc:
            raise UserError(f"--address {address}: the cluster refused the job: {exc}") from None


def job_env() -> dict[str, str]:
    """Settings of this shell that the job's driver on the head needs too."""
    return {k: os.environ[k] for k in (SHARED_ENV, "MLFLOW_TRACKING_URI") if os.environ.get(k)}


def job_info(address: str, job_id: str, client: Any = None):
    client = client or job_client(address)
    try:
        return client.get_job_info(job_id)
    except RuntimeError as exc:
        raise UserError(f"job {job_id}: not known to the cluster at {address} ({exc})") from None


FINISHED = ("SUCCEEDED", "FAILED", "STOPPED")


def status_of(info) -> str:
    return str(getattr(info.status, "value", info.status))


def describe_job(info) -> str:
    import datetime

    def when(ms):
        return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"

    lines = [
        f"job {info.submission_id or info.job_id}: {status_of(info)}",
        f"  entrypoint: {info.entrypoint}",
        f"  started: {when(info.start_time)}   ended: {when(info.end_time)}",
    ]
    if info.message:
        lines.append(f"  message: {info.message.strip()}")
    return "\n".join(lines)


def print_logs(address: str, job_id: str, follow: bool, out: Optional[TextIO] = None, client: Any = None) -> str:
    """Print a job's driver log (all of it, then new lines while it runs with ``follow``); returns its status."""
    out = out or sys.stdout
    client = client or job_client(address)
    info = job_info(address, job_id, client)
    if not follow:
        out.write(client.get_job_logs(job_id))
        out.flush()
        return status_of(info)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    return status_of(job_info(address, job_id, client))


# --- cluster launcher files ----------------------------------------------------------------------


def ray_schema() -> dict:
    import json

    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def validate_cluster_config(config: Mapping[str, Any]) -> dict:
    """Ray's checks of a cluster-launcher config, in the order ``ray up`` runs them, without a cloud call.

    1. The file as written against ``ray-schema.json`` (no unknown or legacy top-level keys such
       as ``head_node``, ``worker_nodes`` or ``min_workers``: ``ray up`` would drop or rewrite
       some of those silently).
    2. ``prepare_config`` (fills the provider's defaults; for ``type: local`` builds the node
       types from head_ip/worker_ips) and then ``validate_config``: the schema again, and that
       ``head_node_type`` is one of ``available_node_types`` and the workers' minimums fit
       ``max_workers``.

    Raises ``jsonschema.ValidationError`` or ``ValueError`` as Ray does; returns the prepared config.
    """
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    if not isinstance(config, Mapping):
        raise ValueError(f"a cluster config is a mapping, got {type(config).__name__}")
    jsonschema.validate(dict(config), ray_schema())
    prepared = prepare_config(copy.deepcopy(dict(config)))
    validate_config(prepared)
    return prepared


def validate_cluster_file(path: str | Path) -> dict:
    import yaml

    return validate_cluster_config(yaml.safe_load(Path(path).read_text()))

