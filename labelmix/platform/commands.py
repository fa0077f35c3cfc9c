"""CLI subcommands of the platform: spaces, check, submit, resume, and status/logs of Ray jobs.

``submit`` and ``resume`` run the study's driver in this process (a local Ray, or ``--address
auto`` / ``HOST:PORT`` of a cluster this machine is a node of), or, with the Ray Jobs address
``--address http://HOST:8265``, send it to the cluster as a Ray job (labelmix.platform.cluster).
"""

from __future__ import annotations

import sys
import time

from labelmix.errors import UserError


def cmd_spaces(args) -> int:
    from labelmix.search_spaces import describe_builtins

    rows = describe_builtins()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_check(args) -> int:
    from labelmix.platform.space import distinct_points
    from labelmix.platform.spec import load_spec, smoke_spec
    from labelmix.platform.storage_checks import check_before_start, check_storage

    spec, _ = load_spec(args.spec)
    if args.smoke:
        spec = smoke_spec(spec)
    check_storage(spec.storage.path, f"{args.spec}: storage.path")  # as submit does
    check_before_start(spec)
    reference = f" + the reference ({spec.reference_case['name']})" if spec.reference_case else ""
    print(f"{args.spec}: valid study spec {spec.name!r}: {spec.search.trials} trials{reference}, "
          f"{spec.search.algorithm} search, {spec.scheduler.type} scheduler, "
          f"objectives {', '.join(f'{o.metric} ({o.mode})' for o in spec.objectives)}")
    points = distinct_points(spec)
    if points is not None and points < spec.search.trials:
        print(f"{args.spec}: the search space holds {points} distinct configurations and none runs twice: "
              f"the search ends after {points} of its {spec.search.trials} trials")
    return 0


def _unique_name(spec, smoke: bool):
    """Studies never overwrite each other: a second run of one spec gets a time suffix."""
    from labelmix.platform.storage import study_exists

    name = f"{spec.name}-smoke" if smoke else spec.name
    spec = spec.model_copy(update={"name": name})
    if study_exists(spec):
        spec = spec.model_copy(update={"name": f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"})
    return spec


def _print_result(result) -> int:
    """The frontier, then one line per failed trial (its last error line); the exit status: 1 when
    no trial finished."""
    from labelmix.platform.results import format_frontier

    table = result.table
    done = int((table["status"] == "TERMINATED").sum()) if len(table) else 0
    from labelmix.platform.trial_table import as_objectives, describe_reference

    axes = " vs ".join(metric for metric, _ in as_objectives(getattr(table, "attrs", {}).get("objectives")))
    print(f"\n{done} of {len(table)} trials finished. Frontier ({axes}):")
    print(format_frontier(result.frontier))
    for line in describe_reference(table):
        print(line)
    print(f"\nstudy folder: {result.location} (spec.yaml, trials.parquet, frontier.parquet)")
    _print_browsing(result.study_dir)
    failed = table[table["status"] == "ERROR"] if len(table) else table
    if len(failed):
        print(f"\n{len(failed)} of {len(table)} trials failed (the whole error: error.txt in each trial's folder):",
              file=sys.stderr)
        for row in failed.to_dict("records"):
            print(f"  {row['trial_id']}: {_last_error_line(row)}", file=sys.stderr)
    if done == 0:
        print(f"labelmix: no trial finished ({len(table)} trials); the study failed", file=sys.stderr)
        return 1
    return 0


def _print_browsing(study_dir) -> None:
    """The report (written now, and logged to the study's MLflow run) and the MLflow links."""
    from labelmix.platform.report import log_report, write_report
    from labelmix.platform.mlflow_links import browse_command, study_links

    try:
        report = write_report(study_dir)
    except (OSError, UserError) as exc:  # the study's results are safe in its folder; the page is extra
        print(f"report: not written ({exc}); `labelmix report {study_dir}` retries", file=sys.stderr)
        return
    try:
        log_report(study_dir, report)
    except Exception as exc:  # noqa: BLE001 - a tracking hiccup must not turn a finished study into a failure
        print(f"report: not logged to MLflow ({type(exc).__name__}: {exc})", file=sys.stderr)
    print(f"report: {report} (open it in a browser)")
    links, port = study_links(study_dir), 5000
    command = browse_command(study_dir, port) if not links else None
    if command:
        print(f"MLflow: serve the study's runs with\n  {command}\nthen open")
        links = study_links(study_dir, server=f"http://127.0.0.1:{port}")
    elif links:
        print("MLflow:")
    for name, url in links.items():
        print(f"  {name + ':':<15}{url}")


def _last_error_line(row) -> str:
    for key in ("error", "config/error"):
        text = row.get(key)
        if isinstance(text, str) and text.strip():
            line = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-1]
            return line if len(line) <= 300 else line[:297] + "..."
    return "no error text recorded"


def _without_password(spec):
    """(spec with tracking.uri redacted, the URI as given): the spec is written to the study folder
    and MLflow, and sent to clusters; the password reaches MLflow through its environment variables."""
    from labelmix.mlflow_server import mask_password

    uri = spec.tracking.uri
    if not uri or mask_password(uri) == uri:
        return spec, uri
    return spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"uri": mask_password(uri)})}), uri


def _for_cluster_job(spec):
    """The spec as the job's driver on the head will read it.

    A relative storage path would land in the job's temporary working directory: it is made
    relative to the home folder on the head instead. A dataset file on this machine's disk is not
    on the cluster: refused, with the ways to get it there.
    """
    from labelmix.platform.storage import SHARED_ENV, is_shared_path, scheme_of, shared_by_env

    storage = spec.storage.path
    if not scheme_of(storage) and not storage.startswith(("/", "~")):
        spec = spec.model_copy(update={"storage": spec.storage.model_copy(update={"path": f"~/{storage}"})})
    path = spec.dataset.path
    if path is not None and not scheme_of(path) and not is_shared_path(path) and not shared_by_env():
        raise UserError(
            f"dataset.path: {path} is a file on this machine, and the study runs on the cluster; copy it to "
            f"storage the cluster reads (aws s3 cp {path} s3://BUCKET/data/ and give that URI), or to a shared "
            f"folder (set {SHARED_ENV}=1 if {path} is one), or submit from the head (`ray attach cluster.yaml`, "
            "then labelmix submit SPEC --address auto)"
        )
    return spec


def _print_job(job_id: str, address: str, what: str) -> None:
    print(f"submitted {what} as Ray job {job_id} to {address}")
    print(f"  follow it:  labelmix logs {job_id} --address {address} --follow")
    print(f"  its state:  labelmix status {job_id} --address {address}")
    print(f"  stop it:    ray job stop {job_id} --address {address}")


def cmd_submit(args) -> int:
    import yaml

    from labelmix.mlflow_server import split_credentials
    from labelmix.platform.cluster import JOB_SPEC_FILE, is_jobs_address, job_entrypoint, job_env, submit_job
    from labelmix.platform.spec import load_spec, smoke_spec
    from labelmix.platform.storage_checks import check_storage

    spec, _ = load_spec(args.spec)
    if args.smoke:
        spec = smoke_spec(spec)
    if args.storage:
        spec = spec.model_copy(update={"storage": spec.storage.model_copy(update={"path": args.storage})})
    spec, spec_uri = _without_password(spec)
    if is_jobs_address(args.address):
        # The driver on the head names the study (time suffix if the name is taken there).
        spec = _for_cluster_job(spec.model_copy(update={"name": f"{spec.name}-smoke" if args.smoke else spec.name}))
        text = yaml.safe_dump(spec.model_dump(mode="json", by_alias=True), sort_keys=False)
        _, user, password = split_credentials(spec_uri or "")
        env = {**job_env(), **({"MLFLOW_TRACKING_USERNAME": user} if user else {}),
               **({"MLFLOW_TRACKING_PASSWORD": password} if password else {})}
        job_id = submit_job(args.address, job_entrypoint("submit", JOB_SPEC_FILE), files={JOB_SPEC_FILE: text},
                            env=env, metadata={"labelmix.study": spec.name})
        _print_job(job_id, args.address, f"study {spec.name!r} (results in {spec.storage.path}/{spec.name} on the cluster)")
        return 0
    from labelmix.platform.study import run_study

    # Before Ray starts and before anything is created (a job's driver checks it on the head).
    check_storage(spec.storage.path, "--storage" if args.storage else f"{args.spec}: storage.path")
    spec = _unique_name(spec, args.smoke)
    text = yaml.safe_dump(spec.model_dump(mode="json", by_alias=True), sort_keys=False)
    _quiet(args)
    result = run_study(spec, text, address=args.address, tracking_uri=args.tracking_uri or spec_uri)
    return _print_result(result)


def cmd_resume(args) -> int:
    from labelmix.platform.cluster import is_jobs_address, job_entrypoint, job_env, submit_job

    if is_jobs_address(args.address):
        job_id = submit_job(args.address, job_entrypoint("resume", args.study_dir), env=job_env(),
                            metadata={"labelmix.resume": args.study_dir})
        _print_job(job_id, args.address, f"the resume of {args.study_dir} (a folder on the cluster)")
        return 0
    from labelmix.platform.study import resume_study

    _quiet(args)
    result = resume_study(args.study_dir, address=args.address)
    return _print_result(result)


def _quiet(args) -> None:
    if not getattr(args, "verbose", False):
        from labelmix.platform.progress import quiet_others

        quiet_others()


def _jobs_address(address: str | None) -> str:
    import os

    from labelmix.platform.cluster import DEFAULT_JOBS_ADDRESS, is_jobs_address

    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_JOBS_ADDRESS
    if not is_jobs_address(address):
        raise UserError(f"--address: jobs are followed through the Ray Jobs API, http://HOST:8265; got {address!r}")
    return address


def cmd_status(args) -> int:
    """Exit status 0 while the job is pending or running and when it succeeded; 1 when it failed or was stopped."""
    from labelmix.platform.cluster import describe_job, job_info, status_of

    info = job_info(_jobs_address(args.address), args.job_id)
    print(describe_job(info))
    return 1 if status_of(info) in ("FAILED", "STOPPED") else 0


def cmd_logs(args) -> int:
    from labelmix.platform.cluster import print_logs

    address = _jobs_address(args.address)
    status = print_logs(address, args.job_id, follow=args.follow)
    if args.follow:
        print(f"\njob {args.job_id}: {status}")
    return 1 if status in ("FAILED", "STOPPED") else 0


def cmd_table(args) -> int:
    from pathlib import Path

    from labelmix.platform.paired import combine, format_paired, paired_table
    from labelmix.platform.trial_table import TRIALS_FILE, read_table

    frames = []
    for study in args.study:
        folder = Path(study)
        if not (folder / TRIALS_FILE).is_file():
            raise UserError(f"{study}: no {TRIALS_FILE} here; give a study folder such as studies/annotation-types")
        frames.append(read_table(folder))
    table = paired_table(combine(frames), args.metric, args.baseline)
    print(format_paired(table, args.metric, args.baseline))
    return 0


def register(sub) -> None:
    p = sub.add_parser("spaces", help="list the built-in study specs")
    p.set_defaults(func=cmd_spaces)

    p = sub.add_parser("check", help="validate a study spec (a YAML file or a built-in name) without running it")
    p.add_argument("spec")
    p.add_argument("--smoke", action="store_true", help="check the shrunk smoke version too")
    p.set_defaults(func=cmd_check)

    address_help = ("where the study runs: omitted, a local Ray started in this process; auto or HOST:PORT, the "
                    "cluster this machine is a node of (the driver runs here); http://HOST:8265, a cluster's Ray "
                    "Jobs API (the driver runs on its head as a Ray job; labelmix must be installed on the nodes)")
    p = sub.add_parser("submit", help="run a study: Ray Tune trials searched by Optuna")
    p.add_argument("spec", help="study spec YAML, or a built-in name (labelmix spaces)")
    p.add_argument("--smoke", action="store_true", help="shrink data, epochs and trials to a one-minute run")
    p.add_argument("--address", default=None, help=address_help)
    p.add_argument("--storage", default=None,
                   help="override storage.path of the spec (study folders go under it; a folder, s3://... or gs://...)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: the spec's tracking.uri, else $MLFLOW_TRACKING_URI, else SQLite in the study folder)")
    p.add_argument("--verbose", action="store_true", help="show Ray's, Tune's, MLflow's and Optuna's own log lines")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("resume", help="continue an interrupted study; finished trials are not rerun")
    p.add_argument("study_dir", help="the study folder: a path, or s3://.../NAME")
    p.add_argument("--address", default=None, help=address_help)
    p.add_argument("--verbose", action="store_true", help="show Ray's, Tune's, MLflow's and Optuna's own log lines")
    p.set_defaults(func=cmd_resume)

    jobs_help = "the Ray Jobs API of the cluster (default $RAY_ADDRESS, else http://127.0.0.1:8265: the SSH tunnel)"
    p = sub.add_parser("table", help="paired table of a seed x cases study: mean, std, paired difference to a baseline case")
    p.add_argument("study", nargs="+", help="study folder(s) (each holds trials.parquet); for the same case and seed a later one counts")
    p.add_argument("--metric", default="val/miou", help="a metric column of the trial table (default val/miou)")
    p.add_argument("--baseline", default=None, help="case to pair every case with, e.g. '5%% alone'")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("status", help="state of a study submitted as a Ray job (exit 1 if it failed or was stopped)")
    p.add_argument("job_id", help="the id `labelmix submit --address http://...` printed (raysubmit_...)")
    p.add_argument("--address", default=None, help=jobs_help)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="the driver log of a study submitted as a Ray job")
    p.add_argument("job_id")
    p.add_argument("--address", default=None, help=jobs_help)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    p.set_defaults(func=cmd_logs)
