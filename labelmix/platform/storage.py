"""Where studies and dataset stores live: local paths, shared mounts and URIs; the study folder and
its local mirror; the fingerprint a store records. No Ray: ``check``, ``browse`` and tests use it too.

Paths: a plain local path, a ``file://`` URI, or the URI of an object store or distributed
filesystem (``s3://``, ``gs://``, ...: pyarrow filesystems, which Tune writes through directly).
Every node of a cluster sees a URI; a local path only when it lies on a network or FUSE
filesystem (``/proc/mounts``: NFS, CIFS, Lustre, sshfs, ...), or when ``LABELMIX_SHARED_STORAGE=1``
says so.

The study folder ``<storage>/<name>`` (:class:`StudyFolder`): with a URI the driver keeps a working
copy of its own files (spec, trial table, frontier) in a local mirror folder and uploads them
after every write; trials write their checkpoints and results to the URI from whichever node they
run on. Tune pickles StudyFolder instances into a study's ``tuner.pkl`` (in the trial table
callback and the searcher); studies started before this module existed name the class
``labelmix.platform.study.StudyFolder``, which study.py keeps importable.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional
from urllib.parse import urlsplit

from labelmix.errors import UserError
from labelmix.trainables.data.store import read_metadata

if TYPE_CHECKING:
    from labelmix.platform.spec import StudySpec

SHARED_ENV = "LABELMIX_SHARED_STORAGE"
MIRROR_ENV = "LABELMIX_MIRROR_DIR"
SPEC_FILE = "spec.yaml"
# Filesystem types of /proc/mounts whose files other machines see too. fuseblk is left out: it is
# a local disk read through FUSE (ntfs-3g, exfat).
SHARED_FS_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "glusterfs", "ceph", "beegfs", "gpfs", "panfs", "fuse",
})


# --- local, shared and remote paths --------------------------------------------------------------


def scheme_of(path: str) -> str:
    """``s3`` for ``s3://bucket/x``; ``file`` for ``file:///x``; ``""`` for a plain local path."""
    return urlsplit(path).scheme.lower() if "://" in path else ""


def is_remote(path: str) -> bool:
    """A URI of an object store or distributed filesystem (not a local path, not ``file://``)."""
    return scheme_of(path) not in ("", "file")


def local_part(path: str) -> Path:
    """The local filesystem path of a plain path or a ``file://`` URI (``~`` expanded)."""
    if scheme_of(path) == "file":
        return Path(urlsplit(path).path)
    return Path(path).expanduser()


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes (\040 ...).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str) -> list[tuple[str, str]]:
    """(mount point, filesystem type) per line of ``/proc/mounts``."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            mounts.append((_unescape(parts[1]), parts[2]))
    return mounts


def _existing_resolved(path: Path) -> Path:
    """``path`` with symlinks resolved as far as it exists (the study folder may not exist yet)."""
    path = Path(os.path.abspath(path))
    missing: list[str] = []
    while not path.exists() and path != path.parent:
        missing.append(path.name)
        path = path.parent
    return path.resolve().joinpath(*reversed(missing))


def filesystem_type(path: str | Path, mounts: Optional[Iterable[tuple[str, str]]] = None) -> str:
    """Filesystem type of the longest mount point holding ``path`` (``""`` when unknown)."""
    if mounts is None:
        try:
            mounts = parse_mounts(Path("/proc/mounts").read_text())
        except OSError:
            return ""
    target = _existing_resolved(Path(path))
    best, fstype = -1, ""
    for point, kind in mounts:  # a later mount over the same point hides the earlier one: keep the last
        point_path = Path(point)
        if (target == point_path or point_path in target.parents) and len(point) >= best:
            best, fstype = len(point), kind
    return fstype


def is_shared_filesystem(fstype: str) -> bool:
    return fstype in SHARED_FS_TYPES or (fstype.startswith("fuse.") and fstype != "fuseblk")


def shared_by_env() -> bool:
    return os.environ.get(SHARED_ENV, "").strip().lower() in ("1", "true", "yes")


def is_shared_path(path: str, mounts: Optional[Iterable[tuple[str, str]]] = None) -> bool:
    """Whether every node of a cluster can read ``path``: a remote URI, or a network/FUSE mount."""
    if is_remote(path):
        return True
    return is_shared_filesystem(filesystem_type(local_part(path), mounts))


# --- the study folder and its mirror -------------------------------------------------------------


def mirror_dir(uri: str) -> Path:
    """The local working copy of a remote study folder (``$LABELMIX_MIRROR_DIR`` or the temp dir)."""
    parts = urlsplit(uri)
    root = Path(os.environ.get(MIRROR_ENV) or Path(tempfile.gettempdir()) / "labelmix-studies")
    return root / parts.scheme / (parts.netloc or "_") / parts.path.strip("/")


@dataclass(frozen=True)
class StudyFolder:
    """A study folder: ``local`` is the folder this process writes; ``uri`` the remote one, if any."""

    local: Path
    uri: Optional[str] = None

    @classmethod
    def at(cls, location: str | Path) -> "StudyFolder":
        location = str(location)
        if scheme_of(location):
            uri = location.rstrip("/")
            return cls(mirror_dir(uri), uri)
        return cls(Path(location).expanduser().resolve())

    @property
    def remote(self) -> bool:
        return self.uri is not None

    @property
    def location(self) -> str:
        """The experiment folder as Tune sees it."""
        return self.uri or str(self.local)

    @property
    def storage_path(self) -> str:
        return self.uri.rsplit("/", 1)[0] if self.uri else str(self.local.parent)

    @property
    def name(self) -> str:
        return self.location.rstrip("/").rsplit("/", 1)[-1]

    def _remote(self, name: str):
        import pyarrow.fs as pafs

        fs, base = pafs.FileSystem.from_uri(self.uri)
        return fs, f"{base.rstrip('/')}/{name}"

    def has(self, name: str) -> bool:
        if not self.remote:
            return (self.local / name).exists()
        import pyarrow.fs as pafs

        fs, path = self._remote(name)
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    def matching(self, pattern: str) -> list[str]:
        """Names of the files directly in the folder that match ``pattern`` (a glob), newest first."""
        if not self.remote:
            files = [p for p in self.local.glob(pattern) if p.is_file()]
            return [p.name for p in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)]
        import pyarrow.fs as pafs

        fs, base = self._remote("")
        infos = [i for i in fs.get_file_info(pafs.FileSelector(base.rstrip("/"), allow_not_found=True))
                 if i.type == pafs.FileType.File and fnmatch.fnmatch(i.base_name, pattern)]
        return [i.base_name for i in sorted(infos, key=lambda i: i.mtime_ns or 0, reverse=True)]

    def read_bytes(self, name: str) -> bytes:
        if not self.remote:
            return (self.local / name).read_bytes()
        fs, path = self._remote(name)
        with fs.open_input_file(path) as handle:
            return handle.readall()

    def move_aside(self, name: str, suffix: str) -> None:
        """Rename a file so that no pattern of the same extension matches it any more."""
        if not self.remote:
            (self.local / name).rename(self.local / f"{name}{suffix}")
            return
        fs, path = self._remote(name)
        fs.move(path, f"{path}{suffix}")

    def upload(self, *names: str) -> None:
        """Copy the named local files to the remote folder (missing local files are skipped)."""
        if not self.remote:
            return
        import pyarrow.fs as pafs

        for name in names:
            if (self.local / name).is_file():
                fs, path = self._remote(name)
                fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
                pafs.copy_files(str(self.local / name), path, source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=fs)

    def download(self, *names: str) -> None:
        """Copy the named remote files into the local folder (missing remote files are skipped)."""
        if not self.remote:
            return
        import pyarrow.fs as pafs

        self.local.mkdir(parents=True, exist_ok=True)
        for name in names:
            if self.has(name):
                fs, path = self._remote(name)
                pafs.copy_files(path, str(self.local / name), source_filesystem=fs,
                                destination_filesystem=pafs.LocalFileSystem())


def study_folder(spec: StudySpec) -> StudyFolder:
    storage = spec.storage.path
    if scheme_of(storage):
        return StudyFolder.at(f"{storage.rstrip('/')}/{spec.name}")
    return StudyFolder.at(Path(storage).expanduser() / spec.name)


def study_dir(spec: StudySpec) -> Path:
    """The local study folder (for remote storage: its local mirror)."""
    return study_folder(spec).local


def study_exists(spec: StudySpec) -> bool:
    return study_folder(spec).has(SPEC_FILE)


# --- dataset stores ------------------------------------------------------------------------------


def store_fingerprint(path: str) -> str:
    """The fingerprint a dataset store recorded when it was written (its footer alone is read), at
    a local path or a URI; errors name ``dataset.path``."""
    try:
        return read_metadata(path if scheme_of(path) else Path(path).expanduser())["fingerprint"]
    except UserError as exc:
        raise UserError(f"dataset.path: {exc}") from None


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` at once: a reader (or a killed writer) never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
