"""The `labelmix` command. Each subcommand is a thin shell over a library function.

Bad input raises UserError anywhere below; main() prints it as one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from labelmix.errors import UserError, validated

EXIT_USAGE = 2


def _size(values: Sequence[str]) -> tuple[int, int]:
    h, w = (int(v) for v in values)
    if h < 8 or w < 8:
        raise UserError(f"--size: height and width must be >= 8, got {h} {w}")
    return h, w


def _split_fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise UserError(f"--split: expected three comma-separated fractions like 0.6,0.2,0.2, got {text!r}") from None
    if len(parts) != 3:
        raise UserError(f"--split: expected three fractions (train,val,test), got {text!r}")
    return parts  # type: ignore[return-value]


# ---------------------------------------------------------------- data
def cmd_data_synth(args) -> int:
    from labelmix.trainables.data.synth import SynthSettings
    from labelmix.trainables.data.synth_store import write_synthetic_store

    height, width = _size(args.size)
    counts = {k: v for k, v in (("volumes", args.volumes), ("slices", args.slices)) if v is not None}
    settings = validated(SynthSettings, {"height": height, "width": width, "seed": args.seed, **counts})
    summary = write_synthetic_store(settings, Path(args.out), _split_fractions(args.split), args.split_seed)
    print(f"wrote {summary.images} images to {summary.path} (fingerprint {summary.fingerprint[:12]})")
    return 0


def cmd_data_import_folder(args) -> int:
    from labelmix.trainables.data.importers import import_folder

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    summary = import_folder(
        Path(args.images), Path(args.masks), Path(args.out), classes, volume_regex=args.volume_regex,
        size=_size(args.size) if args.size else None, split_fractions=_split_fractions(args.split), split_seed=args.split_seed,
    )
    print(f"wrote {summary.images} images to {summary.path}")
    return 0


def cmd_data_import_retouch(args) -> int:
    from labelmix.trainables.data.importers import import_retouch

    summary = import_retouch(
        Path(args.root), Path(args.out), vendors=args.vendors, size=_size(args.size) if args.size else None,
        split_fractions=_split_fractions(args.split), split_seed=args.split_seed,
    )
    print(f"wrote {summary.images} images to {summary.path}")
    return 0


def cmd_data_info(args) -> int:
    from labelmix.trainables.data.store import describe, format_description, load_store

    info = describe(load_store(args.path))
    print(json.dumps(info, indent=2) if args.json else format_description(info))
    return 0


# ---------------------------------------------------------------- train
def read_yaml(path: Path) -> dict:
    from labelmix.errors import load_yaml

    if not path.is_file():
        raise UserError(f"{path}: file not found")
    data = load_yaml(path.read_text(), str(path))  # duplicate keys refused, like study specs
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, assignments: Sequence[str]) -> dict:
    """A copy of ``data`` with each ``dotted.path=VALUE`` set (VALUE read as YAML: 1, 0.5, true, [1, 2])."""
    import copy

    import yaml

    out = copy.deepcopy(data)
    for text in assignments:
        key, sep, raw = text.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise UserError(f"--set: expected FIELD=VALUE (e.g. seed=1 or mix.full=0.5), got {text!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UserError(f"--set {key}: value {raw!r} is not valid YAML") from None
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            if not isinstance(node.get(part, {}), dict):
                raise UserError(f"--set {key}: {part!r} is not a mapping in the config")
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def cmd_train(args) -> int:
    import shutil

    from tqdm import tqdm

    from labelmix.trainables.config import load_config
    from labelmix.trainables.fit import NonFiniteLossError, build_run, train

    path = Path(args.config)
    config = load_config(apply_overrides(read_yaml(path), args.set), source=str(path))
    out = Path(args.out or Path("runs") / path.stem)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.model_dump_json(indent=2, by_alias=True))
    run = build_run(config)  # the store read and checked before the bar, so a refusal prints one line
    bar = tqdm(total=config.epochs, desc="epochs", unit="epoch", dynamic_ncols=True)
    history = (out / "metrics.jsonl").open("a")

    def report(metrics, checkpoint_dir):
        history.write(json.dumps(metrics) + "\n")
        history.flush()
        if checkpoint_dir:  # keep the latest checkpoint: copy, then swap in
            tmp = out / "checkpoint.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(checkpoint_dir, tmp)
            shutil.rmtree(out / "checkpoint", ignore_errors=True)
            tmp.rename(out / "checkpoint")
        bar.n = int(metrics["epoch"])
        bar.set_postfix({"loss": f"{metrics.get('train/loss', float('nan')):.3f}", "val mIoU": f"{metrics.get('val/miou', float('nan')):.3f}"})
        bar.refresh()

    try:
        final = train(run, report, resume_from=args.resume)
    except NonFiniteLossError as exc:  # an outcome of the settings, neither bad input nor a bug: one line, exit 1
        bar.close()
        history.close()
        print(f"labelmix: training stopped: {exc}; a lower lr (now {config.lr:g}) or loss weights usually help; "
              f"the epochs before are in {out / 'metrics.jsonl'}", file=sys.stderr)
        return 1
    bar.close()
    history.close()
    (out / "final_metrics.json").write_text(json.dumps(final, indent=2, sort_keys=True))
    print(json.dumps({k: final[k] for k in sorted(final) if k.split("/")[0] in ("val", "test", "cost")}, indent=2))
    print(f"run folder: {out} (final_metrics.json, metrics.jsonl, checkpoint/)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labelmix", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="create and inspect dataset stores").add_subparsers(dest="data_command", required=True, metavar="ACTION")

    def split_args(p):
        p.add_argument("--split", default="0.6,0.2,0.2", help="train,val,test fractions of the volumes (default 0.6,0.2,0.2)")
        p.add_argument("--split-seed", type=int, default=0, help="seed of the volume split (default 0)")

    p = data.add_parser("synth", help="generate synthetic OCT B-scans into a store")
    p.add_argument("--out", required=True, help="store file to write (.parquet)")
    p.add_argument("--volumes", type=int, default=None, help="volumes (default: the generator's, SynthSettings)")
    p.add_argument("--slices", type=int, default=None, help="B-scans per volume (default: the generator's, SynthSettings)")
    p.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=0)
    split_args(p)
    p.set_defaults(func=cmd_data_synth)

    p = data.add_parser("import-folder", help="import image and mask folders (PNG/TIFF, matched by file stem)")
    p.add_argument("images")
    p.add_argument("masks")
    p.add_argument("--out", required=True)
    p.add_argument("--classes", required=True, help="class names in label order, background first: background,IRF,SRF,PED")
    p.add_argument("--volume-regex", default=None, help="regex on the file stem; its first group is the volume (patient) id")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize: images bilinear, masks nearest")
    split_args(p)
    p.set_defaults(func=cmd_data_import_folder)

    p = data.add_parser("import-retouch", help="import a RETOUCH release (vendor/case/oct.mhd + reference.mhd)")
    p.add_argument("root")
    p.add_argument("--out", required=True)
    p.add_argument("--vendors", nargs="+", default=None, help="Cirrus Spectralis Topcon (default: all found)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize: images bilinear, masks nearest")
    split_args(p)
    p.set_defaults(func=cmd_data_import_retouch)

    p = data.add_parser("info", help="images, volumes, splits and class shares of a store")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=cmd_data_info)

    p = sub.add_parser("train", help="one training run outside Ray (debug a setting before a study)")
    p.add_argument("config", help="trial config YAML (fields of labelmix.trainables.config.TrainConfig)")
    p.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    p.add_argument("--resume", default=None, help="checkpoint folder to continue from")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set seed=1 --set mix.full=0.5 (repeatable)")
    p.set_defaults(func=cmd_train)

    from labelmix.platform.commands import register as register_platform

    from labelmix.mlflow_server.commands import register as register_server
    from labelmix.platform.browse import register as register_browse
    from labelmix.platform.report import register as register_report

    register_platform(sub)
    register_server(sub)
    register_browse(sub)
    register_report(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"labelmix: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("labelmix: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # python -m labelmix.cli
    sys.exit(main())
