"""Where studies and stores live: local, shared and remote paths, the study folder and its mirror,
a store's fingerprint, and StudyFolder pickles written before the class moved here."""

from __future__ import annotations

import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labelmix.errors import UserError
from labelmix.platform import storage
from labelmix.platform.storage import StudyFolder, store_fingerprint, study_folder
from tests.conftest import TINY_STUDY

MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
server:/export /mnt/shared nfs4 rw,relatime 0 0
server:/export/sub /mnt/shared/local\\040disk ext4 rw 0 0
sshfs#me@host: /mnt/ssh fuse.sshfs rw 0 0
/dev/sdb1 /mnt/usb fuseblk rw 0 0
"""

# pickle.dumps(StudyFolder(Path("/tmp/labelmix-studies/s3/bucket/studies/demo"), "s3://bucket/studies/demo"),
# protocol=5) as the code wrote it when StudyFolder lived in labelmix.platform.study (what Tune's
# cloudpickle writes for it too): the class by that module path, then its two fields.
OLD_PICKLE = (
    b"\x80\x05\x95\xb5\x00\x00\x00\x00\x00\x00\x00\x8c\x17labelmix.platform.study\x94\x8c\x0bStudyFolder\x94\x93"
    b"\x94)\x81\x94}\x94(\x8c\x05local\x94\x8c\x07pathlib\x94\x8c\tPosixPath\x94\x93\x94(\x8c\x01/\x94\x8c\x03tmp"
    b"\x94\x8c\x10labelmix-studies\x94\x8c\x02s3\x94\x8c\x06bucket\x94\x8c\x07studies\x94\x8c\x04demo\x94t\x94R\x94"
    b"\x8c\x03uri\x94\x8c\x18s3://bucket/studies/demo\x94ub."
)


# --- local, shared and remote paths --------------------------------------------------------------


def test_parse_mounts_unescapes_and_longest_mount_point_wins():
    mounts = storage.parse_mounts(MOUNTS)
    assert ("/mnt/shared/local disk", "ext4") in mounts
    assert storage.filesystem_type("/mnt/shared/studies/new/folder", mounts) == "nfs4"
    assert storage.filesystem_type("/mnt/shared/local disk/x", mounts) == "ext4"
    assert storage.filesystem_type("/home/me/studies", mounts) == "ext4"
    assert storage.filesystem_type("/mnt/sharedfoo", mounts) == "ext4"  # a prefix of the name is not a parent


@pytest.mark.parametrize("path, shared", [
    ("s3://bucket/studies", True), ("gs://bucket/studies", True), ("/mnt/shared/studies", True),
    ("/mnt/ssh/studies", True), ("/mnt/usb/studies", False), ("/home/me/studies", False),
    ("file:///mnt/shared/studies", True), ("file:///home/me/studies", False),
])
def test_shared_paths(path, shared):
    assert storage.is_shared_path(path, storage.parse_mounts(MOUNTS)) is shared


# --- the study folder and its mirror -------------------------------------------------------------


def test_a_remote_study_folder_mirrors_its_files(tmp_path, monkeypatch):
    monkeypatch.setenv(storage.MIRROR_ENV, str(tmp_path / "mirror"))
    folder = StudyFolder.at(f"file://{tmp_path}/bucket/studies/demo")
    assert folder.remote and folder.name == "demo" and folder.storage_path == f"file://{tmp_path}/bucket/studies"
    assert folder.local == tmp_path / "mirror" / "file" / "_" / str(tmp_path).strip("/") / "bucket/studies/demo"
    folder.local.mkdir(parents=True)
    (folder.local / "spec.yaml").write_text("name: demo\n")
    assert not folder.has("spec.yaml")
    folder.upload("spec.yaml", "missing.parquet")
    assert folder.has("spec.yaml") and (tmp_path / "bucket/studies/demo/spec.yaml").read_text() == "name: demo\n"
    (folder.local / "spec.yaml").unlink()
    folder.download("spec.yaml", "missing.parquet")
    assert (folder.local / "spec.yaml").read_text() == "name: demo\n"

    from labelmix.platform.spec import parse_spec

    spec = parse_spec({**TINY_STUDY, "name": "nodes", "storage": {"path": "s3://my-bucket/studies/"}})
    remote = study_folder(spec)
    assert remote.uri == "s3://my-bucket/studies/nodes" and remote.storage_path == "s3://my-bucket/studies"
    assert remote.local == tmp_path / "mirror" / "s3" / "my-bucket" / "studies" / "nodes"


def test_a_study_folder_pickled_under_its_old_module_still_loads():
    """Tune keeps StudyFolders in the tuner.pkl of every study (the trial table callback, the searcher)."""
    import labelmix.platform.study as study

    assert study.StudyFolder is StudyFolder
    folder = pickle.loads(OLD_PICKLE)
    assert type(folder) is StudyFolder
    assert folder == StudyFolder(Path("/tmp/labelmix-studies/s3/bucket/studies/demo"), "s3://bucket/studies/demo")
    assert folder.location == "s3://bucket/studies/demo" and folder.name == "demo"
    again = pickle.dumps(folder, protocol=5)
    assert b"labelmix.platform.storage" in again and pickle.loads(again) == folder


# --- a store's fingerprint -----------------------------------------------------------------------


def test_a_stores_fingerprint_is_read_alike_from_a_path_and_a_uri(tmp_path):
    from labelmix.trainables.data.synth import SynthSettings
    from labelmix.trainables.data.synth_store import write_synthetic_store

    summary = write_synthetic_store(SynthSettings(2, 2, 32, 32, 0), tmp_path / "store.parquet")
    assert store_fingerprint(str(summary.path)) == store_fingerprint(f"file://{summary.path}") == summary.fingerprint
    pq.write_table(pa.table({"x": [1]}), tmp_path / "plain.parquet")
    for path in (str(tmp_path / "plain.parquet"), f"file://{tmp_path}/plain.parquet"):
        with pytest.raises(UserError, match=r"^dataset.path: .*plain.parquet: Parquet file without labelmix metadata"):
            store_fingerprint(path)
    with pytest.raises(UserError, match=r"^dataset.path: .*missing.parquet: dataset store not found"):
        store_fingerprint(str(tmp_path / "missing.parquet"))
    with pytest.raises(UserError, match=r"^dataset.path: file://.*missing.parquet: cannot read the store"):
        store_fingerprint(f"file://{tmp_path}/missing.parquet")
