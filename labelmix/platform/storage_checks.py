"""What a study's storage is checked for before anything is written: the dataset store
(``dataset.path``: ``check_store`` reads its metadata and three small columns, never the images;
``check_before_start`` reads it whole, against its fingerprint), the study folder (``storage.path``,
refused when it cannot be created, without creating it, or when its disk is full) and, on a
cluster, a study folder that other nodes cannot see (``check_shared_storage``). Where things live
is ``labelmix.platform.storage``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Optional

from labelmix.errors import UserError
from labelmix.platform.storage import (SHARED_ENV, filesystem_type, is_remote, is_shared_path, local_part, scheme_of,
                                       shared_by_env, study_folder)

if TYPE_CHECKING:
    from labelmix.platform.cluster import ClusterShape

__all__ = ["check_before_start", "check_free_space", "check_shared_storage", "check_storage", "check_store"]

# Virtual filesystems: a study folder there cannot be created, whatever the permissions say.
VIRTUAL_ROOTS = ("/proc", "/sys", "/dev")
# Free space a local study folder needs before anything starts: its MLflow store, the synthetic
# dataset and the first checkpoints. A floor that catches a full disk, not a forecast of the study.
MIN_FREE_MB = 64


def check_store(local: Path, path: str) -> None:
    """A dataset store: its metadata and three small columns, never the images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labelmix.trainables.data.store import FORMAT_VERSION, read_metadata

    if local.is_dir():
        raise UserError(f"dataset.path: {path} is a folder; give a dataset store file made by `labelmix data ...`")
    try:
        meta = read_metadata(local)
    except UserError as exc:
        raise UserError(f"dataset.path: {exc}") from None
    except ValueError:  # json
        raise UserError(f"dataset.path: {path}: its labelmix metadata is not valid JSON; recreate the store") from None
    if not isinstance(meta, Mapping) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, Mapping) else None
        raise UserError(f"dataset.path: {path}: store format {version} is not the supported {FORMAT_VERSION}")
    classes = meta.get("class_names")
    if not isinstance(classes, list) or len(classes) < 2:
        raise UserError(f"dataset.path: {path}: the store names classes {classes!r}; it needs background and at "
                        "least one class")
    try:
        table = pq.read_table(local, columns=["split", "height", "width"])
    except (pa.ArrowException, OSError, KeyError) as exc:
        raise UserError(f"dataset.path: {path}: not a dataset store ({exc})") from None
    splits = table.column("split").to_pylist()
    if "train" not in splits:
        raise UserError(f"dataset.path: {path}: the store has no training images (split train); re-import it "
                        "with a train fraction above 0 (--split)")
    sizes = set(zip(table.column("height").to_pylist(), table.column("width").to_pylist()))
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:4])
        raise UserError(f"dataset.path: {path}: images of {len(sizes)} sizes ({shown}, height x width); trials "
                        "batch one size, so re-import with --size H W")


def check_storage(path: str, where: str = "storage.path") -> None:
    """A local study folder must be one this user can create and write here; nothing is created
    to find out. Object-store URIs (s3://, gs://) are checked by the study when it writes."""
    if is_remote(path):
        return
    full = Path(os.path.abspath(local_part(path)))
    real = Path(os.path.realpath(full))
    for root in map(Path, VIRTUAL_ROOTS):
        if real == root or root in real.parents:
            raise UserError(f"{where}: {path} is under {root}, a virtual filesystem; give a folder on a disk, "
                            "such as studies or ~/studies")
    existing = full
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        what = f"{path} is" if existing == full else f"{path} cannot be created: {existing} is"
        raise UserError(f"{where}: {what} a file, not a folder")
    read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    if read_only or not os.access(existing, os.W_OK | os.X_OK):
        verb = "written" if existing == full else "created"
        why = "on a read-only filesystem" if read_only else "not writable by this user"
        raise UserError(f"{where}: {path} cannot be {verb}: {existing} is {why}")


def check_free_space(directory: Path, minimum_mb: int = MIN_FREE_MB) -> None:
    """A local study folder (or the nearest folder above it that exists) must have ``minimum_mb`` free."""
    existing = Path(directory)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    stats = os.statvfs(existing)
    free_mb = stats.f_bavail * stats.f_frsize / 2**20
    if free_mb < minimum_mb:
        raise UserError(f"storage.path: {directory}: only {free_mb:.1f} MiB free on the filesystem of {existing}; "
                        f"a study needs at least {minimum_mb} MiB there (its MLflow store, dataset and "
                        "checkpoints); free some space or choose another storage.path")


def check_before_start(spec) -> None:
    """What is only known by looking at the disk, checked by `check` and, before Ray starts and before
    anything is written, by `submit`: room for a local study folder (one on an object store or behind
    a ``file://`` URI is left to the study), and a dataset store whose content still matches its
    fingerprint (this reads the whole store once)."""
    from labelmix.trainables.data.store import verify_store

    folder = study_folder(spec)
    if not folder.remote:
        check_free_space(folder.local)
    path = spec.dataset.path
    if path is not None and not scheme_of(path) and Path(path).is_file():
        try:
            verify_store(path)
        except UserError as exc:
            raise UserError(f"dataset.path: {exc}") from None


def check_shared_storage(path: str, shape: ClusterShape, mounts: Optional[Iterable[tuple[str, str]]] = None) -> None:
    """Refuse a study folder that only one node of a multi-node cluster can see."""
    if not shape.multi_node or is_shared_path(path, mounts) or shared_by_env():
        return
    where = f"{shape.nodes} nodes" if shape.nodes > 1 else "trials that run on other nodes than this one"
    fstype = filesystem_type(local_part(path), mounts) or "unknown"
    raise UserError(
        f"storage.path: {path} is a local folder ({fstype} filesystem), but this cluster has {where}; trials "
        f"write their results where they run. Use s3://BUCKET/studies or gs://BUCKET/studies, or a folder on "
        f"NFS (or another network filesystem) mounted on every node; if {path} is shared in a way labelmix "
        f"cannot see, set {SHARED_ENV}=1"
    )
