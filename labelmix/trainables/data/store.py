"""The dataset store: one Parquet file, one row per 2-D image.

Columns: id, volume (patient), source, slice, split, height, width, image (raw bytes) with
image_dtype, mask (raw uint8 bytes), boxes (list of [class, y0, x0, y1, x1], half-open),
global_label (list of classes present). File metadata under the key ``labelmix``: format
version, class names, the generator/importer settings, split seed and fractions, and a content
fingerprint (sha256 over ids, volumes, splits, images and masks in row order). ``load_store``
recomputes the fingerprint and refuses a store whose content no longer matches it (a file changed
after it was written); ``verify_store`` does the same without decoding the images.

Writers stream rows into a temporary file next to the target and rename it at the end, so a
failed import leaves nothing behind. Splits are by volume, decided before any row is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from labelmix.chunks import chunks
from labelmix.errors import UserError
from labelmix.trainables.data.annotations import boxes_from_mask, global_label

FORMAT_VERSION = 1
METADATA_KEY = b"labelmix"
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_SPLIT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)
_IMAGE_DTYPES = ("uint8", "uint16")
_FINGERPRINTED = ("id", "volume", "split", "image", "mask")  # the columns the fingerprint covers, in its order
_ROWS_PER_BATCH = 256

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("volume", pa.string()),
        ("source", pa.string()),
        ("slice", pa.int32()),
        ("split", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("image_dtype", pa.string()),
        ("image", pa.binary()),
        ("mask", pa.binary()),
        ("boxes", pa.list_(pa.list_(pa.int32(), 5))),
        ("global_label", pa.list_(pa.int8())),
    ]
)


@dataclass(frozen=True)
class Record:
    """One 2-D image and its mask, as an importer or generator yields it."""

    id: str
    volume: str
    source: str
    slice: int
    image: np.ndarray  # H x W, uint8 or uint16
    mask: np.ndarray  # H x W, uint8 class indices


def assign_splits(
    volumes: Sequence[str], fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS, seed: int = 0
) -> dict[str, str]:
    """Volume -> split, deterministic from the seed; every image of a volume shares its split.

    Volumes are sorted, shuffled with the seed and cut at the rounded cumulative fractions.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(not (0.0 <= f <= 1.0) for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(f"split fractions: need three numbers in [0, 1] summing to 1 (train val test), got {fractions}")
    unique = sorted(set(volumes))
    order = np.random.default_rng(seed).permutation(len(unique))
    cuts = np.rint(np.cumsum(fractions) * len(unique)).astype(int)
    split_of_rank = np.searchsorted(cuts, np.arange(len(unique)), side="right")
    return {unique[i]: SPLITS[min(s, 2)] for i, s in zip(order, split_of_rank)}


def check_output_path(path: Path) -> Path:
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"{path}: output folder {path.parent} does not exist")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file path such as {path / 'data.parquet'}")
    return path


def _row(rec: Record, split: str, num_classes: int) -> dict[str, Any]:
    image, mask = rec.image, rec.mask
    if image.ndim != 2 or image.dtype.name not in _IMAGE_DTYPES:
        raise UserError(f"{rec.id}: image must be 2-D uint8 or uint16, got {image.dtype} {image.shape}")
    if mask.shape != image.shape:
        raise UserError(f"{rec.id}: image is {image.shape[1]}x{image.shape[0]} but mask is {mask.shape[1]}x{mask.shape[0]} (width x height)")
    if mask.size and int(mask.max()) >= num_classes:
        raise UserError(f"{rec.id}: mask value {int(mask.max())} is outside the {num_classes} classes (0..{num_classes - 1})")
    mask = mask.astype(np.uint8, copy=False)
    return {
        "id": rec.id,
        "volume": rec.volume,
        "source": rec.source,
        "slice": int(rec.slice),
        "split": split,
        "height": image.shape[0],
        "width": image.shape[1],
        "image_dtype": image.dtype.name,
        "image": np.ascontiguousarray(image).tobytes(),
        "mask": np.ascontiguousarray(mask).tobytes(),
        "boxes": boxes_from_mask(mask, num_classes).tolist(),
        "global_label": np.flatnonzero(global_label(mask, num_classes)).tolist(),
    }


def write_store(
    records: Iterable[Record],
    path: str | os.PathLike,
    class_names: Sequence[str],
    settings: Mapping[str, Any],
    volumes: Sequence[str],
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    split_seed: int = 0,
) -> "StoreSummary":
    """Stream records into a new store at path (atomically: temp file, rename at the end)."""
    path = check_output_path(Path(path))
    if len(class_names) < 2:
        raise UserError(f"classes: need background and at least one class, got {list(class_names)}")
    splits = assign_splits(volumes, split_fractions, split_seed)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    digest = hashlib.sha256()
    seen: set[str] = set()
    dtype = None
    n = 0
    try:
        with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer:
            for batch in chunks(records, _ROWS_PER_BATCH):
                rows = []
                for rec in batch:
                    if rec.id in seen:
                        raise UserError(f"{rec.id}: duplicate image id")
                    seen.add(rec.id)
                    if rec.volume not in splits:
                        raise UserError(f"{rec.id}: volume {rec.volume!r} was not announced to the writer")
                    row = _row(rec, splits[rec.volume], len(class_names))
                    if dtype is None:
                        dtype = row["image_dtype"]
                    elif row["image_dtype"] != dtype:
                        raise UserError(f"{rec.id}: image is {row['image_dtype']} but earlier images are {dtype}; one store holds one dtype")
                    _update_digest(digest, *(row[key] for key in _FINGERPRINTED))
                    rows.append(row)
                writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
                n += len(rows)
            if n == 0:
                raise UserError(f"{path}: no images to write")
            meta = {
                "format_version": FORMAT_VERSION,
                "class_names": list(class_names),
                "settings": dict(settings),
                "split_seed": split_seed,
                "split_fractions": list(split_fractions),
                "fingerprint": digest.hexdigest(),
                "images": n,
            }
            writer.add_key_value_metadata({METADATA_KEY: json.dumps(meta).encode()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return StoreSummary(path=path, images=n, fingerprint=meta["fingerprint"])


def _update_digest(digest, image_id: str, volume: str, split: str, image, mask) -> None:
    """One row's share of the content fingerprint (strings as UTF-8, images and masks as raw bytes)."""
    for text in (image_id, volume, split):
        digest.update(text.encode())
    digest.update(image)
    digest.update(mask)


def _binary_views(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, data) of a binary array: row i is data[offsets[i]:offsets[i + 1]], no copy."""
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    return offsets, np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)


def content_fingerprint(table: pa.Table) -> str:
    """The fingerprint ``write_store`` records, recomputed from a table holding the columns it covers."""
    digest = hashlib.sha256()
    for batch in table.select(list(_FINGERPRINTED)).to_batches():
        ids, volumes, splits = (batch.column(k).to_pylist() for k in _FINGERPRINTED[:3])
        (image_offsets, images), (mask_offsets, masks) = (_binary_views(batch.column(k)) for k in _FINGERPRINTED[3:])
        for i in range(batch.num_rows):
            _update_digest(digest, ids[i], volumes[i], splits[i], images[image_offsets[i] : image_offsets[i + 1]],
                           masks[mask_offsets[i] : mask_offsets[i + 1]])
    return digest.hexdigest()


def check_fingerprint(path: str | os.PathLike, table: pa.Table, meta: Mapping[str, Any]) -> None:
    """Refuse a store whose content differs from what it was written with (edited, truncated, swapped rows)."""
    recorded, actual = meta.get("fingerprint"), content_fingerprint(table)
    if actual != recorded:
        raise UserError(
            f"{path}: the store's content does not match the fingerprint recorded when it was written "
            f"({str(recorded)[:12]} recorded, {actual[:12]} now): it was changed afterwards; write it again "
            "with `labelmix data ...`"
        )


def verify_store(path: str | os.PathLike) -> None:
    """The fingerprint check of ``load_store`` alone (reads the five covered columns, decodes nothing)."""
    check_fingerprint(path, pq.read_table(path, columns=list(_FINGERPRINTED)), read_metadata(path))


@dataclass(frozen=True)
class StoreSummary:
    path: Path
    images: int
    fingerprint: str


@dataclass
class ImageStore:
    """A store in memory. Images and masks are stacked N x H x W when all sizes agree."""

    ids: np.ndarray
    volumes: np.ndarray
    sources: np.ndarray
    slices: np.ndarray
    splits: np.ndarray
    images: np.ndarray | list[np.ndarray]
    masks: np.ndarray | list[np.ndarray]
    boxes: list[np.ndarray]  # per image K x 5 int32 [class, y0, x0, y1, x1]
    global_labels: np.ndarray  # N x C bool
    class_names: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def box_counts(self) -> np.ndarray:
        return np.array([len(b) for b in self.boxes], dtype=np.int64)

    @property
    def uniform_size(self) -> tuple[int, int] | None:
        return tuple(self.images.shape[1:]) if isinstance(self.images, np.ndarray) else None

    def select(self, index: np.ndarray) -> "ImageStore":
        index = np.asarray(index)
        pick = (lambda a: a[index]) if isinstance(self.images, np.ndarray) else (lambda a: [a[i] for i in index])
        return ImageStore(
            ids=self.ids[index],
            volumes=self.volumes[index],
            sources=self.sources[index],
            slices=self.slices[index],
            splits=self.splits[index],
            images=pick(self.images),
            masks=pick(self.masks),
            boxes=[self.boxes[i] for i in index],
            global_labels=self.global_labels[index],
            class_names=self.class_names,
            metadata=self.metadata,
        )

    def split(self, name: str) -> "ImageStore":
        if name not in SPLITS:
            raise UserError(f"split: unknown split {name!r}; allowed: {list(SPLITS)}")
        return self.select(np.flatnonzero(self.splits == name))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The store's labelmix metadata, from its Parquet footer alone: a local path, or a pyarrow
    filesystem URI (``s3://``, ``gs://``, ``file://``). The one reader of it (the platform's
    ``store_fingerprint`` too)."""
    if "://" in str(path):
        import pyarrow.fs as pafs

        try:
            fs, inner = pafs.FileSystem.from_uri(str(path))
            with fs.open_input_file(inner) as handle:
                meta = pq.read_metadata(handle).metadata or {}
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise UserError(f"{path}: cannot read the store ({exc})") from None
    else:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: dataset store not found")
        try:
            meta = pq.read_metadata(path).metadata or {}
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"{path}: not a Parquet dataset store ({exc})") from None
    if METADATA_KEY not in meta:
        raise UserError(f"{path}: Parquet file without labelmix metadata; create stores with `labelmix data ...`")
    return json.loads(meta[METADATA_KEY])


def _binary_column(column: pa.ChunkedArray, dtype: np.dtype, heights: np.ndarray, widths: np.ndarray):
    """Decode a binary column without a Python loop when all images share one size."""
    arr = column.combine_chunks()
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)
    if len(set(heights.tolist())) == 1 and len(set(widths.tolist())) == 1:
        flat = data[offsets[0] : offsets[-1]].view(dtype)
        return flat.reshape(len(arr), heights[0], widths[0])  # N x H x W, zero-copy view
    return [
        data[offsets[i] : offsets[i + 1]].view(dtype).reshape(heights[i], widths[i]) for i in range(len(arr))
    ]


def load_store(path: str | os.PathLike) -> ImageStore:
    """Read the whole store into memory (images and masks as numpy views of the Arrow buffers)."""
    meta = read_metadata(path)
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: store format {meta.get('format_version')} is not the supported {FORMAT_VERSION}")
    table = pq.read_table(path)
    check_fingerprint(path, table, meta)
    dtypes = set(table.column("image_dtype").unique().to_pylist())
    if len(dtypes) != 1:
        raise UserError(f"{path}: mixed image dtypes {sorted(dtypes)} in one store")
    heights = table.column("height").to_numpy()
    widths = table.column("width").to_numpy()
    boxes_col = table.column("boxes").combine_chunks()
    box_rows = boxes_col.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, 5).astype(np.int32)
    box_offsets = boxes_col.offsets.to_numpy()
    box_offsets = box_offsets - box_offsets[0]
    num_classes = len(meta["class_names"])
    glob_col = table.column("global_label").combine_chunks()
    global_labels = np.zeros((len(table), num_classes), dtype=bool)
    lengths = np.diff(glob_col.offsets.to_numpy())
    global_labels[np.repeat(np.arange(len(table)), lengths), glob_col.flatten().to_numpy()] = True
    return ImageStore(
        ids=table.column("id").to_numpy(zero_copy_only=False),
        volumes=table.column("volume").to_numpy(zero_copy_only=False),
        sources=table.column("source").to_numpy(zero_copy_only=False),
        slices=table.column("slice").to_numpy(),
        splits=table.column("split").to_numpy(zero_copy_only=False),
        images=_binary_column(table.column("image"), np.dtype(dtypes.pop()), heights, widths),
        masks=_binary_column(table.column("mask"), np.dtype(np.uint8), heights, widths),
        boxes=[box_rows[box_offsets[i] : box_offsets[i + 1]] for i in range(len(table))],
        global_labels=global_labels,
        class_names=tuple(meta["class_names"]),
        metadata=meta,
    )


def describe(store: ImageStore) -> dict[str, Any]:
    """Images, volumes, split sizes, and per class the image share and the pixel share."""
    masks = store.masks
    pixel_counts = (
        np.bincount(masks.ravel(), minlength=store.num_classes)
        if isinstance(masks, np.ndarray)
        else sum(np.bincount(m.ravel(), minlength=store.num_classes) for m in masks)
    )[: store.num_classes]
    n = len(store)
    return {
        "images": n,
        "volumes": int(len(set(store.volumes.tolist()))),
        "sizes": sorted({f"{m.shape[0]}x{m.shape[1]}" for m in (masks if isinstance(masks, list) else masks[:1])}),
        "splits": {
            s: {
                "images": int((store.splits == s).sum()),
                "volumes": int(len(set(store.volumes[store.splits == s].tolist()))),
            }
            for s in SPLITS
        },
        "classes": {
            name: {
                "image_share": float(store.global_labels[:, c].mean()) if n else 0.0,
                "pixel_share": float(pixel_counts[c] / max(pixel_counts.sum(), 1)),
                "boxes": int(sum(int((b[:, 0] == c).sum()) for b in store.boxes)),
            }
            for c, name in enumerate(store.class_names)
        },
        "fingerprint": store.metadata.get("fingerprint"),
        "settings": store.metadata.get("settings", {}),
    }


def format_description(info: Mapping[str, Any]) -> str:
    lines = [
        f"images   {info['images']}",
        f"volumes  {info['volumes']}",
        f"sizes    {', '.join(info['sizes'])}",
        "",
        f"{'split':<8}{'images':>8}{'volumes':>9}",
    ]
    lines += [f"{s:<8}{v['images']:>8}{v['volumes']:>9}" for s, v in info["splits"].items()]
    lines += ["", f"{'class':<14}{'images with it':>15}{'pixel share':>13}{'boxes':>8}"]
    lines += [
        f"{name:<14}{v['image_share']:>14.1%}{v['pixel_share']:>13.2%}{v['boxes']:>8}"
        for name, v in info["classes"].items()
    ]
    lines += ["", f"fingerprint {info['fingerprint']}"]
    return "\n".join(lines)
