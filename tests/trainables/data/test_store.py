import numpy as np
import pytest

from labelmix.errors import UserError
from labelmix.trainables.data.store import Record, assign_splits, describe, load_store, write_store

CLASSES = ["background", "IRF", "SRF", "PED"]


def _records(volumes=5, slices=3, size=(6, 8), dtype=np.uint8):
    rng = np.random.default_rng(0)
    for v in range(volumes):
        for s in range(slices):
            mask = np.zeros(size, np.uint8)
            mask[1:3, 2:4] = (v + s) % 4
            yield Record(f"v{v}/{s}", f"v{v}", "test", s, rng.integers(0, 200, size).astype(dtype), mask)


def _volumes(n=5):
    return [f"v{v}" for v in range(n)]


def test_split_is_by_volume_and_deterministic():
    vols = [f"p{i}" for i in range(20)]
    a = assign_splits(vols, (0.6, 0.2, 0.2), seed=1)
    assert a == assign_splits(list(reversed(vols)), (0.6, 0.2, 0.2), seed=1)
    assert sorted(a.values()).count("train") == 12 and list(a.values()).count("val") == 4
    assert a != assign_splits(vols, (0.6, 0.2, 0.2), seed=2)


def test_no_volume_in_two_splits(tmp_path):
    write_store(_records(10, 4), tmp_path / "s.parquet", CLASSES, {}, _volumes(10))
    st = load_store(tmp_path / "s.parquet")
    for vol in set(st.volumes.tolist()):
        assert len(set(st.splits[st.volumes == vol].tolist())) == 1
    assert set(st.splits.tolist()) == {"train", "val", "test"}


def test_round_trip_exact(tmp_path):
    recs = list(_records(dtype=np.uint16))
    summary = write_store(recs, tmp_path / "s.parquet", CLASSES, {"k": 1}, _volumes())
    st = load_store(tmp_path / "s.parquet")
    assert summary.images == len(st) == 15
    assert st.images.dtype == np.uint16 and st.images.shape == (15, 6, 8)
    for i, rec in enumerate(recs):
        assert np.array_equal(st.images[i], rec.image) and np.array_equal(st.masks[i], rec.mask)
    # v0/1 has class 1 in rows 1..2, cols 2..3 -> one box, global label {0, 1}
    i = list(st.ids).index("v0/1")
    assert st.boxes[i].tolist() == [[1, 1, 2, 3, 4]]
    assert st.global_labels[i].tolist() == [True, True, False, False]
    assert st.metadata["settings"] == {"k": 1} and st.class_names == tuple(CLASSES)
    assert len(st.metadata["fingerprint"]) == 64


def test_same_content_same_fingerprint(tmp_path):
    a = write_store(_records(), tmp_path / "a.parquet", CLASSES, {}, _volumes())
    b = write_store(_records(), tmp_path / "b.parquet", CLASSES, {}, _volumes())
    assert a.fingerprint == b.fingerprint


def test_ragged_sizes_load_as_lists(tmp_path):
    recs = list(_records(2, 1, size=(6, 8))) + list(_records(1, 1, size=(5, 5)))[:1]
    recs[-1] = Record("other", "v9", "t", 0, recs[-1].image, recs[-1].mask)
    write_store(recs, tmp_path / "r.parquet", CLASSES, {}, ["v0", "v1", "v9"])
    st = load_store(tmp_path / "r.parquet")
    assert isinstance(st.images, list) and st.images[2].shape == (5, 5)
    assert st.uniform_size is None
    assert describe(st)["sizes"] == ["5x5", "6x8"]


def test_failed_write_leaves_nothing(tmp_path):
    def bad():
        yield from _records(1, 2)
        yield Record("bad", "v0", "t", 9, np.zeros((6, 8), np.uint8), np.full((6, 8), 7, np.uint8))

    with pytest.raises(UserError, match="bad: mask value 7 is outside the 4 classes"):
        write_store(bad(), tmp_path / "s.parquet", CLASSES, {}, ["v0"])
    assert list(tmp_path.iterdir()) == []


def test_output_in_missing_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        write_store(_records(), tmp_path / "nope" / "s.parquet", CLASSES, {}, _volumes())


def test_describe_counts(tmp_path):
    write_store(_records(4, 4), tmp_path / "s.parquet", CLASSES, {}, _volumes(4))
    info = describe(load_store(tmp_path / "s.parquet"))
    assert info["images"] == 16 and info["volumes"] == 4
    assert sum(s["images"] for s in info["splits"].values()) == 16
    # (v + s) % 4 == 1 for 4 of the 16 images
    assert info["classes"]["IRF"]["image_share"] == pytest.approx(4 / 16)
    assert info["classes"]["IRF"]["pixel_share"] == pytest.approx(4 * 4 / (16 * 48))


def test_not_a_store(tmp_path):
    (tmp_path / "x.parquet").write_text("hello")
    with pytest.raises(UserError, match="not a Parquet dataset store"):
        load_store(tmp_path / "x.parquet")
    with pytest.raises(UserError, match="not found"):
        load_store(tmp_path / "missing.parquet")
