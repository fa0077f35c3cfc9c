"""The storage checks that need no disk of their own (the others run through `labelmix check`:
tests/platform/test_check.py, and on full and read-only mounts: test_faults.py)."""

from __future__ import annotations

import pytest

from labelmix.errors import UserError
from labelmix.platform.cluster import ClusterShape
from labelmix.platform.storage import SHARED_ENV, parse_mounts
from labelmix.platform.storage_checks import check_shared_storage
from tests.platform.test_storage import MOUNTS


def test_local_storage_is_refused_on_a_multi_node_cluster(monkeypatch):
    monkeypatch.delenv(SHARED_ENV, raising=False)
    mounts = parse_mounts(MOUNTS)
    with pytest.raises(UserError, match=r"storage.path: /home/me/studies .*3 nodes.*s3://.*NFS"):
        check_shared_storage("/home/me/studies", ClusterShape(nodes=3, trials_fit_here=True), mounts)
    # A CPU-less head (cluster.yaml) runs no trial: one node now, trials elsewhere later.
    with pytest.raises(UserError, match="other nodes"):
        check_shared_storage("/home/me/studies", ClusterShape(nodes=1, trials_fit_here=False), mounts)
    for accepted in ("s3://bucket/studies", "/mnt/shared/studies"):
        check_shared_storage(accepted, ClusterShape(nodes=3, trials_fit_here=True), mounts)
    check_shared_storage("/home/me/studies", ClusterShape(nodes=1, trials_fit_here=True), mounts)
    monkeypatch.setenv(SHARED_ENV, "1")
    check_shared_storage("/home/me/studies", ClusterShape(nodes=3, trials_fit_here=True), mounts)


def test_storage_cannot_reach_a_virtual_filesystem_through_a_symlink_or_dots(tmp_path):
    from labelmix.platform.storage_checks import check_storage

    (tmp_path / "link").symlink_to("/proc")
    dots = f"{tmp_path}/" + "../" * len(tmp_path.parts) + "proc/studies"
    for path in (str(tmp_path / "link" / "studies"), dots):
        with pytest.raises(UserError) as info:
            check_storage(path)
        assert str(info.value) == (f"storage.path: {path} is under /proc, a virtual filesystem; give a folder on a "
                                   "disk, such as studies or ~/studies")
