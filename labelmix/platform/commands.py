"""CLI subcommands of the platform: spaces, check, submit, resume."""

from __future__ import annotations

import time
from pathlib import Path

from labelmix.errors import UserError


def cmd_spaces(args) -> int:
    from labelmix.search_spaces import describe_builtins

    rows = describe_builtins()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_check(args) -> int:
    from labelmix.platform.spec import load_spec, smoke_spec

    spec, _ = load_spec(args.spec)
    if args.smoke:
        spec = smoke_spec(spec)
    print(f"{args.spec}: valid study spec {spec.name!r}: {spec.search.trials} trials, "
          f"{spec.search.algorithm} search, {spec.scheduler.type} scheduler, "
          f"objectives {', '.join(f'{o.metric} ({o.mode})' for o in spec.objectives)}")
    return 0


def _unique_name(spec, smoke: bool):
    """Studies never overwrite each other: a second run of one spec gets a time suffix."""
    from labelmix.platform.study import SPEC_FILE, study_dir

    name = f"{spec.name}-smoke" if smoke else spec.name
    spec = spec.model_copy(update={"name": name})
    if (study_dir(spec) / SPEC_FILE).exists():
        spec = spec.model_copy(update={"name": f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"})
    return spec


def _print_result(result) -> None:
    from labelmix.platform.results import format_frontier

    table = result.table
    done = int((table["status"] == "TERMINATED").sum()) if len(table) else 0
    print(f"\n{done} of {len(table)} trials finished. Frontier (annotation hours vs val/miou):")
    print(format_frontier(result.frontier))
    print(f"\nstudy folder: {result.study_dir} (spec.yaml, trials.parquet, frontier.parquet)")


def cmd_submit(args) -> int:
    import yaml

    from labelmix.platform.spec import load_spec, smoke_spec
    from labelmix.platform.study import run_study

    spec, _ = load_spec(args.spec)
    if args.smoke:
        spec = smoke_spec(spec)
    if args.storage:
        spec = spec.model_copy(update={"storage": spec.storage.model_copy(update={"path": args.storage})})
    spec = _unique_name(spec, args.smoke)
    text = yaml.safe_dump(spec.model_dump(mode="json", by_alias=True), sort_keys=False)
    result = run_study(spec, text, address=args.address)
    _print_result(result)
    return 0


def cmd_resume(args) -> int:
    from labelmix.platform.study import resume_study

    result = resume_study(Path(args.study_dir), address=args.address)
    _print_result(result)
    return 0


def register(sub) -> None:
    p = sub.add_parser("spaces", help="list the built-in study specs")
    p.set_defaults(func=cmd_spaces)

    p = sub.add_parser("check", help="validate a study spec (a YAML file or a built-in name) without running it")
    p.add_argument("spec")
    p.add_argument("--smoke", action="store_true", help="check the shrunk smoke version too")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("submit", help="run a study: Ray Tune trials searched by Optuna")
    p.add_argument("spec", help="study spec YAML, or a built-in name (labelmix spaces)")
    p.add_argument("--smoke", action="store_true", help="shrink data, epochs and trials to a one-minute run")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray started in-process)")
    p.add_argument("--storage", default=None, help="override storage.path of the spec (study folders go under it)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("resume", help="continue an interrupted study; finished trials are not rerun")
    p.add_argument("study_dir")
    p.add_argument("--address", default=None)
    p.set_defaults(func=cmd_resume)
