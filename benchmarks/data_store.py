"""Synthetic store: generate 2,000 images at 128x128 (target <= 30 s) and load it (target <= 2 s).

Run: .venv/bin/python benchmarks/data_store.py [--volumes 40 --slices 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402

from labelmix.trainables.data.store import load_store  # noqa: E402
from labelmix.trainables.data.synth import SynthSettings  # noqa: E402
from labelmix.trainables.data.synth_store import write_synthetic_store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=40)
    parser.add_argument("--slices", type=int, default=50)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "synth.parquet"
        t0 = time.perf_counter()
        summary = write_synthetic_store(SynthSettings(args.volumes, args.slices, args.size, args.size, 0), out)
        synth_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        store = load_store(out)
        load_s = time.perf_counter() - t0
        size_mb = out.stat().st_size / 1e6
    save("data_store", {
        "images": summary.images, "size": f"{args.size}x{args.size}",
        "synth_seconds": round(synth_s, 2), "synth_target_seconds": 30,
        "load_seconds": round(load_s, 3), "load_target_seconds": 2,
        "store_megabytes": round(size_mb, 1), "loaded_images_shape": list(store.images.shape),
    })


if __name__ == "__main__":
    main()
