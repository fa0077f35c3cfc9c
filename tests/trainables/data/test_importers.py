"""Folder and RETOUCH importers: what they store, and one clear error per bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from labelmix.errors import UserError
from labelmix.trainables.data.importers import RETOUCH_CLASSES, import_folder, import_retouch
from labelmix.trainables.data.store import load_store

CLASSES = RETOUCH_CLASSES
RNG = np.random.default_rng(0)


# --- helpers -----------------------------------------------------------------------------------


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        Image.fromarray(array).save(path)
    else:
        tifffile.imwrite(path, array)
    return path


def image8(h=12, w=10):
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


def image16(h=12, w=10):
    return RNG.integers(256, 65536, (h, w), dtype=np.uint16)  # > 255: 8-bit would lose them


def label_map(h=12, w=10, classes=4):
    mask = np.zeros((h, w), np.uint8)
    mask[2:5, 1:4] = 1
    mask[6:9, 5:9] = classes - 1
    return mask


@pytest.fixture
def out(tmp_path):
    """Output path in its own folder, so 'nothing left behind' means that folder is empty."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder / "data.parquet"


def assert_fails(call, out: Path, *fragments: str) -> str:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message
    if out.parent.exists():
        assert list(out.parent.iterdir()) == [], "output or temp file left behind"
    return message


def folder_pair(tmp_path, stems, image_suffix=".png", mask_suffix=".tif", make=image8):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for stem in stems:
        save(images / f"{stem}{image_suffix}", make())
        save(masks / f"{stem}{mask_suffix}", label_map())
    images.mkdir(exist_ok=True)
    masks.mkdir(exist_ok=True)
    return images, masks


def by_id(store):
    return {str(i): k for k, i in enumerate(store.ids)}


# --- folder import -----------------------------------------------------------------------------


def test_folder_8bit_png_with_tif_masks_round_trips_exactly(tmp_path, out):
    images, masks = tmp_path / "images", tmp_path / "masks"
    pictures = {s: image8() for s in ("a", "b", "c")}
    labels = {s: label_map() for s in pictures}
    labels["c"][:] = 0
    for s in pictures:
        save(images / f"{s}.png", pictures[s])
    save(masks / "a.tif", labels["a"])
    save(masks / "b.TIFF", labels["b"])  # another extension, upper case
    save(masks / "c.png", labels["c"])
    (images / "notes.txt").write_text("ignored")

    summary = import_folder(images, masks, out, CLASSES)

    store = load_store(out)
    assert summary.images == len(store) == 3 and summary.path == out
    assert store.images.dtype == np.uint8
    assert store.class_names == CLASSES
    assert sorted(store.ids) == ["a", "b", "c"]
    for s, k in by_id(store).items():
        np.testing.assert_array_equal(store.images[k], pictures[s])
        np.testing.assert_array_equal(store.masks[k], labels[s])
        assert store.volumes[k] == s and store.slices[k] == 0 and store.sources[k] == "folder"
    k = by_id(store)["a"]
    assert store.boxes[k].tolist() == [[1, 2, 1, 5, 4], [3, 6, 5, 9, 9]]
    assert store.global_labels[k].tolist() == [True, True, False, True]
    assert store.global_labels[by_id(store)["c"]].tolist() == [True, False, False, False]
    settings = store.metadata["settings"]
    assert settings["importer"] == "folder" and settings["images"] == str(images.resolve())
    assert settings["class_names"] == list(CLASSES) and settings["size"] is None


def test_folder_16bit_png_and_tiff_keep_uint16_values(tmp_path, out):
    images, masks = tmp_path / "images", tmp_path / "masks"
    pictures = {"p": image16(), "t": image16()}
    save(images / "p.png", pictures["p"])
    save(images / "t.tif", pictures["t"])
    for s in pictures:
        save(masks / f"{s}.png", label_map())

    import_folder(images, masks, out, CLASSES)

    store = load_store(out)
    assert store.images.dtype == np.uint16
    for s, k in by_id(store).items():
        np.testing.assert_array_equal(store.images[k], pictures[s])


def test_volume_regex_groups_slices_in_natural_order_and_keeps_volumes_in_one_split(tmp_path, out):
    stems = [f"case{c}_{s}" for c in range(1, 7) for s in (1, 2, 10)]
    images, masks = folder_pair(tmp_path, stems)

    import_folder(images, masks, out, CLASSES, volume_regex=r"(case\d+)_\d+", split_seed=3)

    store = load_store(out)
    assert sorted(set(store.volumes)) == [f"case{c}" for c in range(1, 7)]
    slice_of = {str(i): int(s) for i, s in zip(store.ids, store.slices)}
    assert [slice_of[f"case4_{s}"] for s in (1, 2, 10)] == [0, 1, 2]  # 10 after 2
    for volume in set(store.volumes):
        assert len(set(store.splits[store.volumes == volume])) == 1
    assert set(store.splits) == {"train", "val", "test"}
    assert store.metadata["settings"]["volume_regex"] == r"(case\d+)_\d+"


def test_resize_keeps_dtype_and_only_original_mask_values(tmp_path, out):
    images, masks = tmp_path / "images", tmp_path / "masks"
    picture = image16(20, 24)
    save(images / "a.tif", picture)
    mask = np.zeros((20, 24), np.uint8)
    mask[3:9, 2:10], mask[12:18, 14:22] = 1, 3  # no class 2
    save(masks / "a.png", mask)

    import_folder(images, masks, out, CLASSES, size=(16, 16))

    store = load_store(out)
    assert store.uniform_size == (16, 16) and store.images.dtype == np.uint16
    assert set(np.unique(store.masks[0])) == {0, 1, 3}
    assert picture.min() <= store.images[0].min() and store.images[0].max() <= picture.max()
    assert store.metadata["settings"]["size"] == [16, 16]


# --- folder import: bad input ------------------------------------------------------------------


def test_corrupt_image(tmp_path, out):
    images, masks = folder_pair(tmp_path, ["a", "b"])
    (images / "b.png").write_bytes(b"\x89PNG not really")
    assert_fails(lambda: import_folder(images, masks, out, CLASSES), out, str(images / "b.png"), "cannot read")


def test_mask_value_outside_classes(tmp_path, out):
    images, masks = folder_pair(tmp_path, ["m1", "m2", "m3"])
    bad = label_map()
    bad[0, 0] = 7
    save(masks / "m3.tif", bad)
    assert_fails(
        lambda: import_folder(images, masks, out, CLASSES),
        out,
        f"mask {masks / 'm3.tif'}: value 7 is outside the 4 classes background,IRF,SRF,PED",
    )


def test_image_and_mask_sizes_differ(tmp_path, out):
    images, masks = folder_pair(tmp_path, ["a"])
    save(masks / "a.tif", label_map(16, 20))
    assert_fails(
        lambda: import_folder(images, masks, out, CLASSES),
        out,
        str(images / "a.png"),
        str(masks / "a.tif"),
        "10x12",
        "20x16",
    )


def test_image_without_mask(tmp_path, out):
    images, masks = folder_pair(tmp_path, ["a", "b"])
    (masks / "b.tif").unlink()
    assert_fails(
        lambda: import_folder(images, masks, out, CLASSES), out, str(images / "b.png"), "has no mask", str(masks)
    )


def test_mask_without_image(tmp_path, out):
    images, masks = folder_pair(tmp_path, ["a"])
    save(masks / "z.png", label_map())
    assert_fails(
        lambda: import_folder(images, masks, out, CLASSES), out, str(masks / "z.png"), "has no image", str(images)
    )


def test_empty_images_folder(tmp_path, out):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    (images / "readme.txt").write_text("no images here")
    assert_fails(lambda: import_folder(images, masks, out, CLASSES), out, f"no PNG/TIFF images in {images}")


def test_missing_folder(tmp_path, out):
    images, masks = folder_pair(tmp_path, ["a"])
    assert_fails(
        lambda: import_folder(images, tmp_path / "nope", out, CLASSES), out, str(tmp_path / "nope"), "does not exist"
    )


def test_fewer_than_two_classes(tmp_path, out):
    images, masks = folder_pair(tmp_path, ["a"])
    assert_fails(lambda: import_folder(images, masks, out, ["background"]), out, "classes", "at least one class")


def test_output_folder_missing_is_checked_before_reading_inputs(tmp_path):
    out = tmp_path / "missing" / "data.parquet"
    assert_fails(
        lambda: import_folder(tmp_path / "no-images", tmp_path / "no-masks", out, CLASSES),
        out,
        str(out),
        "output folder",
        "does not exist",
    )
    assert not out.parent.exists()


def test_stem_outside_volume_regex(tmp_path, out):
    images, masks = folder_pair(tmp_path, ["case1_1", "stray"])
    assert_fails(
        lambda: import_folder(images, masks, out, CLASSES, volume_regex=r"(case\d+)_\d+"),
        out,
        str(images / "stray.png"),
        "does not match",
    )


def test_invalid_volume_regex(tmp_path, out):
    images, masks = folder_pair(tmp_path, ["a"])
    assert_fails(lambda: import_folder(images, masks, out, CLASSES, volume_regex="(case"), out, "(case", "regular expression")


def test_rgb_image_is_not_greyscale(tmp_path, out):
    images, masks = folder_pair(tmp_path, ["a"])
    save(images / "a.png", np.zeros((12, 10, 3), np.uint8))
    assert_fails(lambda: import_folder(images, masks, out, CLASSES), out, str(images / "a.png"), "2-D greyscale", "RGB")


def test_mixed_bit_depths(tmp_path, out):
    images, masks = folder_pair(tmp_path, ["a", "b"])
    save(images / "b.png", image16())
    assert_fails(lambda: import_folder(images, masks, out, CLASSES), out, str(images / "b.png"), "16-bit", "8-bit")


def test_two_images_with_one_stem(tmp_path, out):
    images, masks = folder_pair(tmp_path, ["a"])
    save(images / "a.tif", image8())
    assert_fails(lambda: import_folder(images, masks, out, CLASSES), out, "a.png", "a.tif", "same stem")


# --- RETOUCH -----------------------------------------------------------------------------------

SLICES, HEIGHT, WIDTH = 4, 16, 12


def write_case(folder: Path, oct_volume: np.ndarray, reference: np.ndarray | None) -> None:
    folder.mkdir(parents=True)
    sitk.WriteImage(sitk.GetImageFromArray(oct_volume), str(folder / "oct.mhd"))  # + oct.raw
    if reference is not None:
        sitk.WriteImage(sitk.GetImageFromArray(reference), str(folder / "reference.mhd"))


def reference_volume():
    ref = np.zeros((SLICES, HEIGHT, WIDTH), np.uint8)
    ref[1, 2:6, 3:5] = 2  # SRF in slice 1: rows 2..5, columns 3..4
    ref[1, 10:12, 0:12] = 3
    return ref


@pytest.fixture
def retouch(tmp_path):
    """2 vendors: Cirrus (uint8, 3 cases) in a release-style folder name, Spectralis (uint16, 2 cases)."""
    root = tmp_path / "retouch"
    volumes = {}
    for vendor, folder, dtype, cases in (
        ("Cirrus", "RETOUCH-TrainingSet-Cirrus", np.uint8, 3),
        ("Spectralis", "spectralis", np.uint16, 2),
    ):
        for c in range(1, cases + 1):
            high = 256 if dtype == np.uint8 else 4000
            oct_volume = RNG.integers(0, high, (SLICES, HEIGHT, WIDTH)).astype(dtype)
            write_case(root / folder / f"TRAIN00{c}", oct_volume, reference_volume())
            volumes[f"{vendor}/TRAIN00{c}"] = oct_volume
    (root / "notes").mkdir()
    return root, volumes


def test_retouch_rows_ids_volumes_and_labels(retouch, out):
    root, volumes = retouch
    summary = import_retouch(root, out)

    store = load_store(out)
    assert summary.images == len(store) == 5 * SLICES
    assert store.class_names == RETOUCH_CLASSES
    assert set(store.volumes) == set(volumes)
    assert store.uniform_size == (HEIGHT, WIDTH)  # B-scan rows = y (depth), columns = x
    k = by_id(store)["Cirrus/TRAIN002/001"]
    assert store.volumes[k] == "Cirrus/TRAIN002" and store.slices[k] == 1
    assert store.sources[k] == "retouch/Cirrus"
    np.testing.assert_array_equal(store.images[k], volumes["Cirrus/TRAIN002"][1])  # uint8 kept exactly
    np.testing.assert_array_equal(store.masks[k], reference_volume()[1])
    assert store.boxes[k].tolist() == [[2, 2, 3, 6, 5], [3, 10, 0, 12, 12]]
    assert store.global_labels[k].tolist() == [True, False, True, True]
    assert store.global_labels[by_id(store)["Cirrus/TRAIN002/000"]].tolist() == [True, False, False, False]
    for volume in volumes:
        assert len(set(store.splits[store.volumes == volume])) == 1
    # uint8 and uint16 vendors mixed: Spectralis scaled per volume to the full uint8 range.
    assert store.images.dtype == np.uint8
    spectralis = store.images[store.volumes == "Spectralis/TRAIN001"]
    assert spectralis.min() == 0 and spectralis.max() == 255
    settings = store.metadata["settings"]
    assert settings["importer"] == "retouch" and settings["vendors"] == ["Cirrus", "Spectralis"]
    assert settings["image_dtype"] == "uint8" and "Spectralis" in settings["intensity"]


def test_retouch_vendor_filter_keeps_uint16(retouch, out):
    root, volumes = retouch
    import_retouch(root, out, vendors=["spectralis"], size=(8, 6))

    store = load_store(out)
    assert sorted(set(store.volumes)) == ["Spectralis/TRAIN001", "Spectralis/TRAIN002"]
    assert len(store) == 2 * SLICES and store.images.dtype == np.uint16
    assert store.uniform_size == (8, 6)
    assert set(np.unique(store.masks)) <= {0, 2, 3}


def test_retouch_missing_raw_file(retouch, out):
    root, _ = retouch
    (root / "RETOUCH-TrainingSet-Cirrus" / "TRAIN001" / "oct.raw").unlink()
    assert_fails(
        lambda: import_retouch(root, out),
        out,
        f"{root}/RETOUCH-TrainingSet-Cirrus/TRAIN001/oct.mhd: its data file oct.raw is missing",
    )


def test_retouch_truncated_raw_file(retouch, out):
    root, _ = retouch
    raw = root / "spectralis" / "TRAIN002" / "reference.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    assert_fails(lambda: import_retouch(root, out), out, str(raw.with_suffix(".mhd")), "truncated")


def test_retouch_unreadable_volume_mid_stream(retouch, out):
    """A data file that passes the header checks but fails in SimpleITK, after other rows were written."""
    root, _ = retouch
    header = root / "spectralis" / "TRAIN002" / "oct.mhd"
    header.write_text(header.read_text().replace("MET_USHORT", "MET_NOSUCHTYPE"))
    assert_fails(lambda: import_retouch(root, out), out, str(header), "cannot read")


def test_retouch_case_without_reference(retouch, out):
    root, _ = retouch
    write_case(root / "spectralis" / "TEST001", np.zeros((SLICES, HEIGHT, WIDTH), np.uint16), None)
    assert_fails(lambda: import_retouch(root, out), out, str(root / "spectralis" / "TEST001"), "no reference.mhd")


def test_retouch_reference_value_outside_classes(retouch, out):
    root, _ = retouch
    case = root / "spectralis" / "TRAIN002"
    bad = reference_volume()
    bad[3, 0, 0] = 5
    sitk.WriteImage(sitk.GetImageFromArray(bad), str(case / "reference.mhd"))
    assert_fails(
        lambda: import_retouch(root, out), out, f"{case / 'reference.mhd'}: value 5 is outside the 4 classes"
    )


def test_retouch_reference_size_differs(retouch, out):
    root, _ = retouch
    case = root / "RETOUCH-TrainingSet-Cirrus" / "TRAIN003"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((SLICES, HEIGHT, 10), np.uint8)), str(case / "reference.mhd"))
    assert_fails(lambda: import_retouch(root, out), out, str(case / "reference.mhd"), "does not match", "12 16 4")


def test_retouch_unknown_vendor(retouch, out):
    root, _ = retouch
    assert_fails(
        lambda: import_retouch(root, out, vendors=["Cirrus", "Heidelberg"]),
        out,
        "Heidelberg",
        "allowed: ['Cirrus', 'Spectralis', 'Topcon']",
    )


def test_retouch_requested_vendor_absent(retouch, out):
    root, _ = retouch
    assert_fails(lambda: import_retouch(root, out, vendors=["Topcon"]), out, str(root), "Topcon")


def test_retouch_no_cases(tmp_path, out):
    root = tmp_path / "retouch"
    (root / "Cirrus" / "TRAIN001").mkdir(parents=True)
    assert_fails(lambda: import_retouch(root, out), out, str(root), "no cases")


def test_retouch_no_vendor_folders(tmp_path, out):
    (tmp_path / "retouch" / "TRAIN001").mkdir(parents=True)
    assert_fails(lambda: import_retouch(tmp_path / "retouch", out), out, "no vendor folders")


def test_retouch_output_checked_first(tmp_path):
    out = tmp_path / "missing" / "data.parquet"
    assert_fails(lambda: import_retouch(tmp_path / "nope", out), out, "output folder")
