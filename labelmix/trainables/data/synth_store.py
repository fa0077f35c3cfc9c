"""The synthetic generator written into a dataset store, and the per-settings store cache."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from labelmix.trainables.data.store import DEFAULT_SPLIT_FRACTIONS, Record, StoreSummary, write_store
from labelmix.trainables.data.synth import SYNTH_CLASSES, SynthSettings, synthesize, volume_id

GENERATOR_VERSION = 3  # bump when the generator's output changes, so cached stores are rebuilt


def write_synthetic_store(
    settings: SynthSettings, out: Path, split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS, split_seed: int = 0
) -> StoreSummary:
    records = (
        Record(f"{s.volume_id}/{s.slice_index:03d}", s.volume_id, "synthetic", s.slice_index, s.image, s.mask)
        for s in synthesize(settings)
    )
    return write_store(
        records, out, SYNTH_CLASSES, {"generator": "synthetic", "version": GENERATOR_VERSION, **asdict(settings)},
        volumes=[volume_id(i) for i in range(settings.volumes)], split_fractions=split_fractions, split_seed=split_seed,
    )


def synthetic_store(settings: SynthSettings, cache_dir: Path) -> Path:
    """Path of the store for these generator settings (the config's ``dataset.synthetic``),
    generating it on first use. Concurrent first uses each write a temporary file and rename
    it, so the cache never holds a half-written store.
    """
    path = Path(cache_dir) / (
        f"synth-g{GENERATOR_VERSION}-v{settings.volumes}-s{settings.slices}-"
        f"{settings.height}x{settings.width}-seed{settings.seed}.parquet"
    )
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_store(settings, path)
    return path
