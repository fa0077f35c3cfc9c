"""The synthetic OCT generator: shapes, determinism, validation, prevalence, continuity, contrast."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from labelmix.errors import UserError, validated
from labelmix.trainables.data.synth import (
    SYNTH_CLASSES,
    SynthSettings,
    SynthSlice,
    _ellipsoid_cut,
    save_montage,
    synthesize,
    synthesize_volume,
)

IRF, SRF, PED = 1, 2, 3


@pytest.fixture(scope="module")
def cohort() -> list[SynthSlice]:
    """10 volumes x 20 slices at 128x128: the sample the statistical tests read."""
    return list(synthesize(SynthSettings(volumes=10, slices=20, seed=0)))


def presence(slices: list[SynthSlice], volumes: int, per_volume: int) -> np.ndarray:
    """(volumes, slices, 3) bool: is IRF/SRF/PED present in each B-scan."""
    flags = np.array([[(s.mask == c).any() for c in (IRF, SRF, PED)] for s in slices])
    return flags.reshape(volumes, per_volume, 3)


def test_classes_are_the_retouch_classes():
    assert SYNTH_CLASSES == ("background", "IRF", "SRF", "PED")


def test_shapes_dtypes_order_and_ids():
    settings = SynthSettings(volumes=2, slices=3, height=64, width=48, seed=1)
    slices = list(synthesize(settings))
    assert [(s.volume_id, s.slice_index) for s in slices] == [
        ("synth-0000", 0), ("synth-0000", 1), ("synth-0000", 2),
        ("synth-0001", 0), ("synth-0001", 1), ("synth-0001", 2),
    ]
    for s in slices:
        assert s.image.shape == s.mask.shape == (64, 48)
        assert s.image.dtype == np.uint8 and s.mask.dtype == np.uint8
        assert s.mask.max() < len(SYNTH_CLASSES)


def test_mask_values_within_classes(cohort):
    values = np.unique(np.concatenate([np.unique(s.mask) for s in cohort]))
    assert set(values.tolist()) <= {0, 1, 2, 3}
    assert {1, 2, 3} <= set(values.tolist())  # every fluid class occurs in 200 B-scans


def test_same_settings_give_identical_bytes():
    settings = SynthSettings(volumes=2, slices=4, seed=7)
    a, b = list(synthesize(settings)), list(synthesize(settings))
    assert [s.image.tobytes() for s in a] == [s.image.tobytes() for s in b]
    assert [s.mask.tobytes() for s in a] == [s.mask.tobytes() for s in b]


def test_volume_alone_equals_volume_in_sequence():
    settings = SynthSettings(volumes=3, slices=4, seed=3)
    alone = synthesize_volume(settings, 2)
    in_sequence = list(synthesize(settings))[8:]
    assert [s.image.tobytes() for s in alone] == [s.image.tobytes() for s in in_sequence]
    assert [s.mask.tobytes() for s in alone] == [s.mask.tobytes() for s in in_sequence]


def test_different_seed_differs():
    a = synthesize_volume(SynthSettings(volumes=1, slices=2, seed=0), 0)
    b = synthesize_volume(SynthSettings(volumes=1, slices=2, seed=1), 0)
    assert not np.array_equal(a[0].image, b[0].image)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("volumes", 0, "volumes: Input should be greater than or equal to 1 (got 0)"),
        ("slices", 0, "slices: Input should be greater than or equal to 1 (got 0)"),
        ("height", 16, "height: Input should be greater than or equal to 32 (got 16)"),
        ("width", 31, "width: Input should be greater than or equal to 32 (got 31)"),
        ("seed", -1, "seed: Input should be greater than or equal to 0 (got -1)"),
        ("volumes", 2.5, "volumes: Input should be a valid integer, got a number with a fractional part (got 2.5)"),
        ("slices", "many", "slices: Input should be a valid integer"),
        ("depth", 3, "depth: unknown key; allowed here: height, seed, slices, volumes, width"),
    ],
)
def test_invalid_settings_name_the_field(field, value, message):
    with pytest.raises(UserError) as info:  # as `labelmix data synth` and a config's dataset.synthetic validate them
        validated(SynthSettings, {field: value})
    assert str(info.value).startswith(message), str(info.value)
    with pytest.raises(ValueError, match=field):  # built in code: pydantic's ValidationError
        SynthSettings(**{field: value})


def test_volume_index_out_of_range():
    with pytest.raises(UserError, match="volume_index"):
        synthesize_volume(SynthSettings(volumes=2), 2)


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SynthSettings().volumes = 3  # type: ignore[misc]


def test_prevalence(cohort):
    flags = presence(cohort, 10, 20)
    without_fluid = (~flags.any(axis=2)).mean()
    assert 0.3 <= without_fluid <= 0.7
    irf, srf, ped = flags.reshape(-1, 3).sum(axis=0)
    assert irf > ped and irf > srf > 0 and ped > 0


def test_fluid_continues_across_neighbouring_slices(cohort):
    flags = presence(cohort, 10, 20)
    for c, name in enumerate(("IRF", "SRF", "PED")):
        present = flags[:, :, c]
        # pairs (slice, neighbour) where the slice has the class; share where the neighbour has it too
        pairs = np.concatenate([present[:, 1:][present[:, :-1]], present[:, :-1][present[:, 1:]]])
        assert len(pairs) > 0, name
        assert pairs.mean() > 0.7, name


def test_fluid_is_darker_than_the_tissue_around_it(cohort):
    for c in (IRF, SRF):
        inside, around = [], []
        for s in cohort:
            fluid = s.mask == c
            if fluid.sum() < 20:
                continue
            ring = ndimage.binary_dilation(fluid, iterations=3) & (s.mask == 0)
            inside.append(s.image[fluid].mean())
            around.append(s.image[ring].mean())
        assert len(inside) >= 5
        # per B-scan, not only on average: the fluid is visible in each
        assert np.mean(np.array(inside) < np.array(around)) > 0.9
        assert np.mean(around) - np.mean(inside) > 30


def test_top_is_dark_vitreous_and_retina_brighter(cohort):
    image = np.stack([s.image for s in cohort[:20]]).astype(float)
    assert image[:, :10].mean() < 25  # vitreous
    assert image.mean(axis=(0, 2)).max() > 120  # the brightest rows (RPE) are bright


@pytest.mark.parametrize("height, width", [(32, 32), (48, 96), (160, 64)])
def test_other_sizes(height, width):
    slices = synthesize_volume(SynthSettings(volumes=1, slices=3, height=height, width=width), 0)
    assert all(s.image.shape == s.mask.shape == (height, width) for s in slices)


def test_save_montage_writes_png(tmp_path, cohort):
    path = tmp_path / "montage.png"
    save_montage(cohort[:6], path, columns=3)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 200


def test_save_montage_accepts_image_mask_pairs(tmp_path):
    pairs = [(np.zeros((40, 60), np.uint8), np.eye(40, 60, dtype=np.uint8) * 2) for _ in range(3)]
    path = tmp_path / "pairs.png"
    save_montage(pairs, path)
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_save_montage_needs_slices(tmp_path):
    with pytest.raises(UserError):
        save_montage([], tmp_path / "empty.png")


def test_cli_synth_uses_the_generator_defaults_it_is_not_given(tmp_path, capsys):
    from labelmix.cli import main
    from labelmix.trainables.data.store import load_store

    out = tmp_path / "s.parquet"
    assert main(["data", "synth", "--out", str(out), "--slices", "1", "--size", "32", "32"]) == 0
    store = load_store(out)
    assert len(store) == SynthSettings().volumes == 120  # --volumes left out: the generator's default
    assert f"wrote 120 images to {out}" in capsys.readouterr().out


def test_ellipsoid_cut_hand_counted():
    # one ellipsoid in the middle of a 16x16 slice, in the middle of a band from row 0 to row 16:
    # centre (row 8, column 7.5), radii 2 rows x 4 columns. Rows 7 and 9 hold columns 5..10 (6 each),
    # row 8 holds 4..11 (8); rows 6 and 10 touch the ellipse only at column 7.5, between pixels.
    ellipsoid = np.array([[0.5, 0.5, 0.5, 0.1, 4 / 16, 2 / 16]])
    band_top, band_bottom = np.zeros(16), np.full(16, 16.0)
    cut = _ellipsoid_cut(ellipsoid, 0.5, band_top, band_bottom, 16, 16)
    assert cut.sum() == 20
    assert np.array_equal(np.flatnonzero(cut.any(axis=1)), [7, 8, 9])
    assert np.array_equal(np.flatnonzero(cut[8]), np.arange(4, 12))
    # at the edge of its v extent the cut is empty, and so is a slice beyond it
    assert not _ellipsoid_cut(ellipsoid, 0.6, band_top, band_bottom, 16, 16).any()
    assert not _ellipsoid_cut(ellipsoid, 0.9, band_top, band_bottom, 16, 16).any()
    # the band moves the centre: depth 0.5 of rows 4..8 is row 6
    moved = _ellipsoid_cut(ellipsoid, 0.5, np.full(16, 4.0), np.full(16, 8.0), 16, 16)
    assert np.array_equal(np.flatnonzero(moved.any(axis=1)), [5, 6, 7])


def test_cli_synth_refuses_bad_settings_in_one_line(tmp_path, capsys):
    from labelmix.cli import main

    out = tmp_path / "s.parquet"
    assert main(["data", "synth", "--out", str(out), "--volumes", "0"]) == 2
    assert capsys.readouterr().err == "labelmix: error: volumes: Input should be greater than or equal to 1 (got 0)\n"
    assert not out.exists()
