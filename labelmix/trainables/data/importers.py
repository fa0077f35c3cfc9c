"""Importers: a RETOUCH release or two folders of images and label maps -> one dataset store.

Both importers check the output path first, then list and pair every input file (so a missing
mask or data file is reported before anything is decoded), then stream one ``Record`` per 2-D
image into ``write_store``, which writes atomically: any ``UserError`` raised while decoding
leaves no output file behind. Decoding errors from PIL, tifffile and SimpleITK are turned into
``UserError``s that name the file.

RETOUCH orientation: SimpleITK gives a volume as a z, y, x array. A B-scan is one slice along z,
stored as it comes: y (depth, rows) x x (A-scans, columns). A Cirrus volume with
``DimSize = 512 1024 128`` is therefore 128 images of 1024 rows x 512 columns, the "512x1024"
(width x height) of METHOD.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import SimpleITK as sitk
import tifffile
from PIL import Image

from labelmix.errors import UserError
from labelmix.trainables.data.store import (
    DEFAULT_SPLIT_FRACTIONS,
    Record,
    StoreSummary,
    check_output_path,
    write_store,
)

RETOUCH_CLASSES: tuple[str, ...] = ("background", "IRF", "SRF", "PED")
RETOUCH_VENDORS: tuple[str, ...] = ("Cirrus", "Spectralis", "Topcon")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff")

# Bytes per element of the MetaImage element types whose size does not depend on the platform.
_MET_SIZES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8,
}  # fmt: skip
_MET_DTYPES = {"MET_UCHAR": "uint8", "MET_USHORT": "uint16"}


# ---------------------------------------------------------------------------------------------
# Shared by both importers


def _check_class_names(class_names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(class_names, str):  # "background,IRF" from a flag
        class_names = class_names.split(",")
    names = tuple(str(n).strip() for n in class_names)
    if len(names) < 2:
        raise UserError(f"classes: need background and at least one class, got {list(names)}")
    if len(names) > 256:
        raise UserError(f"classes: at most 256 classes (masks are stored as uint8), got {len(names)}")
    if any(not n for n in names) or len(set(names)) != len(names):
        raise UserError(f"classes: names must be non-empty and distinct, got {list(names)}")
    return names


def _check_size(size: Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        height, width = (int(s) for s in size)
        valid = height > 0 and width > 0 and all(float(s) == int(s) for s in size)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise UserError(f"size: need two positive integers (height width), got {size!r}")
    return height, width


def _check_folder(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} folder {path} does not exist")
    if not path.is_dir():
        raise UserError(f"{what} folder {path} is not a folder")
    return path


def _natural_key(text: str) -> tuple:
    """'slice2' before 'slice10': digit runs compare as numbers (odd positions are always ints)."""
    parts = re.split(r"(\d+)", text)
    return (tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), text)


def _check_labels(mask: np.ndarray, class_names: Sequence[str], what: str) -> np.ndarray:
    """Mask as uint8 class indices; any value outside 0..len(class_names)-1 is an error naming `what`."""
    if mask.dtype.kind not in "biu":
        raise UserError(f"{what}: {mask.dtype} values; a mask must be an integer label map")
    if mask.size:
        low, high = int(mask.min()), int(mask.max())
        bad = high if high >= len(class_names) else low if low < 0 else None
        if bad is not None:
            raise UserError(
                f"{what}: value {bad} is outside the {len(class_names)} classes {','.join(class_names)}"
            )
    return mask.astype(np.uint8, copy=False)


def _resize(image: np.ndarray, mask: np.ndarray, size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Image bilinear (in float, rounded and clipped back to its dtype), mask nearest; size is (H, W)."""
    if size is None or image.shape == size:
        return image, mask
    height, width = size
    resized = Image.fromarray(image.astype(np.float32)).resize((width, height), Image.BILINEAR)
    info = np.iinfo(image.dtype)
    image = np.clip(np.rint(np.asarray(resized)), info.min, info.max).astype(image.dtype)
    mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
    return image, mask


# ---------------------------------------------------------------------------------------------
# Folder import


@dataclass(frozen=True)
class _Pair:
    stem: str
    image: Path
    mask: Path
    volume: str
    slice: int


def import_folder(
    images: Path,
    masks: Path,
    out: Path,
    class_names: Sequence[str],
    volume_regex: str | None = None,
    size: tuple[int, int] | None = None,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    split_seed: int = 0,
) -> StoreSummary:
    """Images and integer label maps matched by file stem -> a store at `out`.

    Images are 2-D 8-bit or 16-bit greyscale PNG or TIFF (kept as uint8 / uint16; one bit depth
    per store). `volume_regex` is searched in each stem; its first group (or the whole match) is
    the volume id, and the natural order of stems within a volume gives the slice index. Without
    it every image is its own volume. `size` = (height, width) resizes images bilinearly and
    masks by nearest neighbour.
    """
    out = check_output_path(out)
    names = _check_class_names(class_names)
    size = _check_size(size)
    images = _check_folder(images, "images")
    masks = _check_folder(masks, "masks")
    pairs = _plan_folder(images, masks, volume_regex)
    settings: dict[str, Any] = {
        "importer": "folder",
        "images": str(images.resolve()),
        "masks": str(masks.resolve()),
        "class_names": list(names),
        "volume_regex": volume_regex,
        "size": list(size) if size else None,
    }
    return write_store(
        _folder_records(pairs, names, size),
        out,
        names,
        settings,
        volumes=sorted({p.volume for p in pairs}),
        split_fractions=split_fractions,
        split_seed=split_seed,
    )


def _image_files(folder: Path, what: str) -> dict[str, Path]:
    """Stem -> file for the PNG/TIFF files directly in `folder` (extension case-insensitive)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in found:
            raise UserError(f"{what} {path}: same stem as {found[path.stem].name}; stems must be unique")
        found[path.stem] = path
    return found


def _require_partners(files: dict, partners: dict, kind: str, partner_kind: str, partner_folder: Path) -> None:
    """Every file needs a partner with its stem (an image its mask, a mask its image)."""
    lonely = [stem for stem in files if stem not in partners]
    if lonely:
        more = f"; {len(lonely) - 1} more {kind}s have no {partner_kind}" if len(lonely) > 1 else ""
        raise UserError(
            f"{kind} {files[lonely[0]]} has no {partner_kind}: looked for {lonely[0]}"
            f"{{{','.join(IMAGE_SUFFIXES)}}} in {partner_folder}{more}"
        )


def _plan_folder(images: Path, masks: Path, volume_regex: str | None) -> list[_Pair]:
    image_files = _image_files(images, "image")
    if not image_files:
        raise UserError(f"no PNG/TIFF images in {images} (looked for {', '.join(IMAGE_SUFFIXES)})")
    mask_files = _image_files(masks, "mask")
    _require_partners(image_files, mask_files, "image", "mask", masks)
    _require_partners(mask_files, image_files, "mask", "image", images)

    pattern = _compile_volume_regex(volume_regex)
    volume_of = {stem: _volume_id(stem, image_files[stem], pattern) for stem in image_files}
    pairs: list[_Pair] = []
    for volume in sorted(set(volume_of.values()), key=_natural_key):
        stems = sorted((s for s in image_files if volume_of[s] == volume), key=_natural_key)
        pairs += [_Pair(s, image_files[s], mask_files[s], volume, i) for i, s in enumerate(stems)]
    return pairs


def _compile_volume_regex(volume_regex: str | None) -> re.Pattern | None:
    if volume_regex is None:
        return None
    try:
        return re.compile(volume_regex)
    except re.error as exc:
        raise UserError(f"volume regex {volume_regex!r}: not a valid regular expression ({exc})") from None


def _volume_id(stem: str, path: Path, pattern: re.Pattern | None) -> str:
    if pattern is None:
        return stem
    match = pattern.search(stem)
    volume = (match.group(1) if pattern.groups else match.group(0)) if match else None
    if not volume:
        problem = "does not match" if match is None else "captures nothing from"
        raise UserError(f"image {path}: volume regex {pattern.pattern!r} {problem} its stem {stem!r}")
    return volume


def _folder_records(pairs: list[_Pair], class_names: tuple[str, ...], size) -> Iterator[Record]:
    first: tuple[Path, np.dtype] | None = None
    for pair in pairs:
        image = _read_image(pair.image)
        mask = _read_2d(pair.mask, "mask")
        if first is None:
            first = (pair.image, image.dtype)
        elif image.dtype != first[1]:
            raise UserError(
                f"image {pair.image} is {image.dtype.itemsize * 8}-bit but {first[0]} is "
                f"{first[1].itemsize * 8}-bit; a store holds one bit depth, convert the images first"
            )
        if mask.shape != image.shape:
            raise UserError(
                f"image {pair.image} is {image.shape[1]}x{image.shape[0]} but mask {pair.mask} is "
                f"{mask.shape[1]}x{mask.shape[0]} (width x height)"
            )
        mask = _check_labels(mask, class_names, f"mask {pair.mask}")
        image, mask = _resize(image, mask, size)
        yield Record(id=pair.stem, volume=pair.volume, source="folder", slice=pair.slice, image=image, mask=mask)


def _read_2d(path: Path, role: str) -> np.ndarray:
    """A PNG (PIL) or TIFF (tifffile) as a 2-D array in native byte order."""
    mode = None
    try:
        if path.suffix.lower() == ".png":
            with Image.open(path) as im:
                mode = im.mode
                array = np.array(im)
        else:
            array = tifffile.imread(path)
    except Exception as exc:  # decoders raise many types; each means "this file is unreadable"
        raise UserError(f"{role} {path}: cannot read it as an image ({type(exc).__name__}: {exc})") from None
    if role == "image" and mode == "P":
        raise UserError(f"image {path}: palette (mode P) image; expected 8- or 16-bit greyscale")
    if array.ndim > 2:  # a TIFF may carry singleton page or sample axes
        array = array.reshape([n for n in array.shape if n != 1] or [1])
    if array.ndim != 2:
        expected = "a 2-D greyscale image" if role == "image" else "a 2-D integer label map"
        described = f" (mode {mode})" if mode else ""
        raise UserError(f"{role} {path}: expected {expected}, got shape {'x'.join(map(str, array.shape))}{described}")
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _read_image(path: Path) -> np.ndarray:
    image = _read_2d(path, "image")
    if image.dtype == np.int32 and path.suffix.lower() == ".png":
        # Older Pillow opens 16-bit greyscale PNGs as mode "I" (int32).
        if image.size and 0 <= image.min() and image.max() <= 65535:
            image = image.astype(np.uint16)
    if image.dtype not in (np.uint8, np.uint16):
        raise UserError(f"image {path}: {image.dtype} pixels; expected 8-bit or 16-bit unsigned greyscale")
    return image


# ---------------------------------------------------------------------------------------------
# RETOUCH import


@dataclass(frozen=True)
class _Case:
    vendor: str
    name: str
    folder: Path
    dtype: str  # numpy name of the oct element type, or the MetaImage type when it has none

    @property
    def volume(self) -> str:
        return f"{self.vendor}/{self.name}"


def import_retouch(
    root: Path,
    out: Path,
    vendors: Sequence[str] | None = None,
    size: tuple[int, int] | None = None,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    split_seed: int = 0,
) -> StoreSummary:
    """A RETOUCH release (``ROOT/<vendor folder>/<case>/oct.mhd`` + ``reference.mhd``) -> a store.

    Vendor folders are found by name: any folder whose name contains a vendor name (any case),
    such as ``RETOUCH-TrainingSet-Cirrus``. One row per B-scan; volume ``<vendor>/<case>``,
    id ``<vendor>/<case>/<slice:03d>``, source ``retouch/<vendor>``. Intensities stay uint8 (or
    uint16 when every volume is uint16); when element types are mixed, every volume that is not
    uint8 is scaled to uint8 per volume (min-max), as the store holds one dtype.
    """
    out = check_output_path(out)
    size = _check_size(size)
    root = _check_folder(root, "RETOUCH root")
    wanted = _check_vendors(vendors)
    cases = _find_cases(root, wanted)
    dtypes = {c.dtype for c in cases}
    if dtypes in ({"uint8"}, {"uint16"}):
        store_dtype, intensity = dtypes.pop(), "kept as stored"
    else:
        store_dtype = "uint8"
        scaled = sorted({c.vendor for c in cases if c.dtype != "uint8"})
        intensity = (
            f"{'/'.join(scaled)} volumes ({', '.join(sorted(dtypes - {'uint8'}))}) scaled to uint8 per volume: "
            "round(255 * (v - min) / (max - min)); uint8 volumes kept as stored"
        )
    settings: dict[str, Any] = {
        "importer": "retouch",
        "root": str(root.resolve()),
        "vendors": sorted({c.vendor for c in cases}, key=RETOUCH_VENDORS.index),
        "size": list(size) if size else None,
        "image_dtype": store_dtype,
        "intensity": intensity,
        "orientation": "B-scan = slice along z of the z,y,x array; rows = y (depth), columns = x",
    }
    return write_store(
        _retouch_records(cases, np.dtype(store_dtype), size),
        out,
        RETOUCH_CLASSES,
        settings,
        volumes=[c.volume for c in cases],
        split_fractions=split_fractions,
        split_seed=split_seed,
    )


def _check_vendors(vendors: Sequence[str] | None) -> tuple[str, ...]:
    if vendors is None:
        return RETOUCH_VENDORS
    if isinstance(vendors, str):
        vendors = [vendors]
    canonical = {v.lower(): v for v in RETOUCH_VENDORS}
    unknown = [v for v in vendors if str(v).lower() not in canonical]
    if not vendors:
        raise UserError(f"vendors: empty list; give one or more of {list(RETOUCH_VENDORS)}, or none for all")
    if unknown:
        raise UserError(f"vendors: unknown vendor(s) {unknown}; allowed: {list(RETOUCH_VENDORS)}")
    return tuple(v for v in RETOUCH_VENDORS if v.lower() in {str(x).lower() for x in vendors})


def _find_cases(root: Path, wanted: tuple[str, ...]) -> list[_Case]:
    vendor_folders: list[tuple[str, Path]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        matches = [v for v in RETOUCH_VENDORS if v.lower() in folder.name.lower()]
        if len(matches) == 1:
            vendor_folders.append((matches[0], folder))
    if not vendor_folders:
        raise UserError(
            f"RETOUCH root {root}: no vendor folders (folder names containing {', '.join(RETOUCH_VENDORS)})"
        )
    explicit = wanted != RETOUCH_VENDORS
    cases: list[_Case] = []
    seen: dict[str, Path] = {}
    for vendor in wanted:
        folders = [f for v, f in vendor_folders if v == vendor]
        if explicit and not folders:
            raise UserError(f"RETOUCH root {root}: no folder for vendor {vendor} (a name containing {vendor!r})")
        found = 0
        for folder in folders:
            case_dirs = [p for p in folder.iterdir() if (p / "oct.mhd").is_file()]
            for case_dir in sorted(case_dirs, key=lambda p: _natural_key(p.name)):
                case = _check_case(vendor, case_dir)
                if case.volume in seen:
                    raise UserError(f"case {case.volume} found twice: {seen[case.volume]} and {case_dir}")
                seen[case.volume] = case_dir
                cases.append(case)
                found += 1
        if explicit and not found:
            raise UserError(
                f"RETOUCH root {root}: no {vendor} cases (case folders with an oct.mhd) in {', '.join(map(str, folders))}"
            )
    if not cases:
        raise UserError(
            f"RETOUCH root {root}: no cases (case folders with an oct.mhd) in "
            f"{', '.join(str(f) for _, f in vendor_folders)}"
        )
    return cases


def _check_case(vendor: str, case_dir: Path) -> _Case:
    """Headers of oct.mhd and reference.mhd, with their data files present, long enough and of one size."""
    oct_header = _read_mhd_header(case_dir / "oct.mhd")
    reference = case_dir / "reference.mhd"
    if not reference.is_file():
        raise UserError(
            f"case {case_dir}: no reference.mhd (labels); cases without a reference, such as the "
            "RETOUCH test set, cannot be imported"
        )
    ref_header = _read_mhd_header(reference)
    if oct_header["DimSize"].split() != ref_header["DimSize"].split():
        raise UserError(
            f"{reference}: size {ref_header['DimSize']} does not match oct.mhd's {oct_header['DimSize']} (x y z)"
        )
    element = oct_header.get("ElementType", "")
    return _Case(vendor, case_dir.name, case_dir, _MET_DTYPES.get(element, element))


def _read_mhd_header(path: Path) -> dict[str, str]:
    """Key = value lines up to ElementDataFile (the last header line); checks the data file exists.

    SimpleITK's own message for a missing or short data file is a multi-line ITK trace.
    """
    header: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            for raw in f:
                key, sep, value = raw.decode("latin-1").partition("=")
                if sep:
                    header[key.strip()] = value.strip()
                if key.strip() == "ElementDataFile":
                    break
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if "ElementDataFile" not in header or "DimSize" not in header:
        raise UserError(f"{path}: not a MetaImage header (no DimSize or ElementDataFile line)")
    data_name = header["ElementDataFile"]
    if data_name.upper() == "LOCAL" or data_name.upper().startswith("LIST") or "%" in data_name:
        return header  # data inline or split over several files: SimpleITK checks those
    data = path.parent / data_name
    if not data.is_file():
        raise UserError(f"{path}: its data file {data_name} is missing")
    try:
        dims = [int(d) for d in header["DimSize"].split()]
        channels = int(header.get("ElementNumberOfChannels", "1"))
    except ValueError:
        raise UserError(f"{path}: DimSize {header['DimSize']!r} is not a list of integers") from None
    element = header.get("ElementType", "")
    compressed = header.get("CompressedData", "False").lower() == "true"
    if element in _MET_SIZES and not compressed and int(header.get("HeaderSize", "0")) == 0:
        expected = int(np.prod(dims)) * channels * _MET_SIZES[element]
        actual = data.stat().st_size
        if actual < expected:
            raise UserError(
                f"{path}: its data file {data_name} holds {actual} bytes, but the header describes "
                f"{'x'.join(map(str, dims))} {element} ({expected} bytes); the file is truncated"
            )
    return header


def _read_volume(path: Path) -> np.ndarray:
    """z, y, x array via SimpleITK; a single 2-D image becomes one slice."""
    try:
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:] if line.strip())
        raise UserError(f"{path}: cannot read it as a MetaImage ({detail or exc})") from None
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise UserError(f"{path}: expected a 3-D scalar volume, got array shape {array.shape}")
    return array


def _to_uint8(volume: np.ndarray) -> np.ndarray:
    low, high = float(volume.min()), float(volume.max())
    scaled = (volume.astype(np.float32) - low) * (255.0 / (high - low) if high > low else 0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _retouch_records(cases: list[_Case], dtype: np.dtype, size) -> Iterator[Record]:
    for case in cases:
        octs = _read_volume(case.folder / "oct.mhd")
        reference = case.folder / "reference.mhd"
        labels = _read_volume(reference)
        if labels.shape != octs.shape:
            raise UserError(
                f"{reference}: shape {labels.shape} does not match oct.mhd's {octs.shape} (z, y, x)"
            )
        labels = _check_labels(labels, RETOUCH_CLASSES, str(reference))
        if octs.dtype != dtype:
            octs = _to_uint8(octs)
        for z in range(octs.shape[0]):
            image, mask = _resize(octs[z], labels[z], size)  # y x: rows are depth
            yield Record(
                id=f"{case.volume}/{z:03d}",
                volume=case.volume,
                source=f"retouch/{case.vendor}",
                slice=z,
                image=image,
                mask=mask,
            )
