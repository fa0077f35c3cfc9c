#!/usr/bin/env bash
# GPU packing check for a machine with one NVIDIA GPU: a 16-trial study at 0.25 GPU per trial
# (four trials share the GPU), on a local Ray that finds the GPU itself.
#
#   bash benchmarks/gpu_check.sh            # from the repo root, after scripts/setup.sh
#
# First, one trial's data and step times on the GPU: benchmarks/data_loading.py --device cuda at
# fp32 and at bf16 (batch preparation, old per-image CPU Augmenter against the whole-batch
# BatchAugmenter on the GPU, next to the training step's compute, synchronised), written to
# benchmarks/results/data_loading_cuda.json and data_loading_cuda_bf16.json (the step times come
# from data_loading.py, which synchronises the GPU around each step).
#
# Then the study. Prints trials per hour, GPU utilisation (nvidia-smi sampled every 0.5 s in the
# background, during the study only) and the peak GPU memory of every trial (gpu/peak_memory_mb,
# reported by the trial adapter), checks that four trials ran at once and that every trial trained
# on the GPU, prints a table of all figures and writes benchmarks/results/gpu_check.json.
# Time caps (timeout): BENCH_LIMIT_S per benchmark run (45 s), LIMIT_S for the study (360 s): at
# most 7.5 minutes in all plus a few seconds of checks; on an H200 the study needs a few minutes.
# Exit status: 0 all checks passed, 1 a check failed, 2 no GPU / setup missing.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
LIMIT_S=${LIMIT_S:-360}
BENCH_LIMIT_S=${BENCH_LIMIT_S:-45}

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: nvidia-smi not found: this check needs a machine with an NVIDIA GPU and its driver" >&2
    exit 2
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: nvidia-smi finds no usable GPU:" >&2
    nvidia-smi -L >&2 || true
    exit 2
fi
if [ ! -x "$PYTHON" ]; then
    echo "gpu_check: $PYTHON not found: run bash scripts/setup.sh first (or set PYTHON=...)" >&2
    exit 2
fi
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch in $PYTHON sees no CUDA device (a CPU-only torch build?)" >&2
    exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/labelmix-gpu-check.XXXXXX")
mkdir -p benchmarks/results

# One trial's data and step times, before the study (which would share the GPU with them).
BENCH_STATUS=""
for PRECISION in fp32 bf16; do
    echo "gpu_check: benchmarks/data_loading.py --device cuda --precision $PRECISION"
    set +e
    timeout "$BENCH_LIMIT_S" "$PYTHON" benchmarks/data_loading.py --device cuda --precision "$PRECISION" \
        > "$WORK/data_loading_$PRECISION.log" 2>&1
    CODE=$?
    set -e
    sed -n '/^batch of/,/^old \/ new/p' "$WORK/data_loading_$PRECISION.log"
    if [ "$CODE" -ne 0 ]; then
        tail -n 5 "$WORK/data_loading_$PRECISION.log" >&2
        echo "gpu_check: data_loading.py at $PRECISION failed (exit $CODE$([ "$CODE" -eq 124 ] && echo ", over ${BENCH_LIMIT_S} s"))" >&2
    fi
    BENCH_STATUS="$BENCH_STATUS $PRECISION=$CODE"
done
SPEC="$WORK/gpu-check.yaml"
cat > "$SPEC" <<YAML
name: gpu-check
dataset:
  synthetic: {volumes: 24, slices: 16, height: 128, width: 128, seed: 0}
objectives:
  - {metric: val/miou, mode: max}
  - {metric: cost/hours, mode: min}
space:
  mix: {full: {uniform: [0.05, 1.0]}, box: {uniform: [0, 1]}, none: {uniform: [0, 1]}}
  ema_decay: {loguniform: [0.9, 0.999]}
fixed: {encoder: resnet18, pretrained: false, epochs: 4, steps_per_epoch: 25, batch_size: 16, device: cuda}
search: {algorithm: random, trials: 16, concurrency: 4, seed: 0}
scheduler: {type: none}
resources: {cpus: 2, gpus: 0.25}
storage: {path: $WORK/studies}
YAML

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits \
    -lms 500 > "$WORK/nvidia-smi.csv" &
SAMPLER=$!
trap 'kill "$SAMPLER" 2>/dev/null || true' EXIT

echo "gpu_check: 16 trials, 0.25 GPU each, on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); work dir $WORK"
START=$(date +%s.%N)
set +e
timeout "$LIMIT_S" "$PYTHON" -m labelmix.cli submit "$SPEC" > "$WORK/submit.log" 2>&1
STATUS=$?
set -e
END=$(date +%s.%N)
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
tail -n 5 "$WORK/submit.log"
if [ "$STATUS" -ne 0 ]; then
    echo "gpu_check: the study did not finish (exit $STATUS$([ "$STATUS" -eq 124 ] && echo ", over ${LIMIT_S} s")); log: $WORK/submit.log" >&2
fi

"$PYTHON" - "$WORK" "$START" "$END" "$STATUS" $BENCH_STATUS <<'PY'
import json, sys
from pathlib import Path

import pandas as pd

work, start, end, status = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
bench_status = dict(arg.split("=") for arg in sys.argv[5:])  # precision -> exit status of data_loading.py
study = work / "studies" / "gpu-check"
table = pd.read_parquet(study / "trials.parquet") if (study / "trials.parquet").is_file() else pd.DataFrame()
done = table[table["status"] == "TERMINATED"] if len(table) else table
wall_s = end - start

peaks = {}
for result_file in study.glob("*/result.json"):
    rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
    if rows:
        peaks[rows[-1]["trial_id"]] = max(r.get("gpu/peak_memory_mb", float("nan")) for r in rows)

samples = pd.read_csv(work / "nvidia-smi.csv", header=None, names=["time", "util", "mem_used", "mem_total"],
                      skipinitialspace=True)
busy = samples[samples["util"] > 0]

# Most trials running at one moment, from the trial table's start and end times.
events = sorted([(t, 1) for t in done["started_at"]] + [(t, -1) for t in done["ended_at"]]) if len(done) else []
running = most = 0
for _, step in events:
    running += step
    most = max(most, running)

summary = {
    "trials_finished": int(len(done)),
    "trials": int(len(table)),
    "wall_s": round(wall_s, 1),
    "trials_per_hour": round(len(done) / wall_s * 3600, 1) if wall_s > 0 else None,
    "most_trials_at_once": most,
    "gpu_util_mean_pct": round(float(samples["util"].mean()), 1) if len(samples) else None,
    "gpu_util_median_pct": round(float(samples["util"].median()), 1) if len(samples) else None,
    "gpu_util_mean_while_busy_pct": round(float(busy["util"].mean()), 1) if len(busy) else None,
    "gpu_memory_used_max_mib": int(samples["mem_used"].max()) if len(samples) else None,
    "gpu_memory_total_mib": int(samples["mem_total"].max()) if len(samples) else None,
    "peak_memory_mb_per_trial": {k: (round(v, 1) if v == v else None) for k, v in sorted(peaks.items())},
    "study_exit_status": status,
}
bench = {}
for precision, code in bench_status.items():
    path = Path("benchmarks/results") / f"data_loading_cuda{'' if precision == 'fp32' else '_' + precision}.json"
    record = json.loads(path.read_text()) if code == "0" and path.is_file() else {}
    bench[precision] = {key: record.get(key) for key in (
        "old_median_ms", "new_median_ms", "ratio_old_over_new", "new_in_training_median_ms",
        "step_compute_median_ms", "data_share_of_step_new", "data_share_of_step_old")} | {"exit_status": int(code)}
summary["data_loading_cuda"] = bench
out = Path("benchmarks/results/gpu_check.json")
out.write_text(json.dumps(summary, indent=2) + "\n")

print(f"\ntrials finished      {summary['trials_finished']} of 16 in {summary['wall_s']} s "
      f"= {summary['trials_per_hour']} trials per hour")
print(f"trials at once       {most} (0.25 GPU each: 4 expected)")
print(f"GPU utilisation      mean {summary['gpu_util_mean_pct']} %, median {summary['gpu_util_median_pct']} %, "
      f"mean while busy {summary['gpu_util_mean_while_busy_pct']} % ({len(samples)} samples)")
print(f"GPU memory in use    max {summary['gpu_memory_used_max_mib']} of {summary['gpu_memory_total_mib']} MiB")
print("peak GPU memory per trial (MiB, torch.cuda.max_memory_allocated):")
for trial, peak in summary["peak_memory_mb_per_trial"].items():
    print(f"  {trial}  {peak}")
print("\none trial on the GPU (batch 8 at 128x128, configs/full.yaml; medians, ms)")
print(f"{'precision':<11}{'old prep':>10}{'new prep':>10}{'old/new':>9}{'new in step':>13}{'step compute':>14}{'data share':>12}")
for precision, row in bench.items():
    cells = [row[k] for k in ("old_median_ms", "new_median_ms", "ratio_old_over_new", "new_in_training_median_ms",
                              "step_compute_median_ms", "data_share_of_step_new")]
    if None in cells:
        print(f"{precision:<11}failed (exit {row['exit_status']}): see {work}/data_loading_{precision}.log")
        continue
    old_ms, new_ms, ratio, in_step, step, share = cells
    print(f"{precision:<11}{old_ms:>10.2f}{new_ms:>10.2f}{ratio:>8.1f}x{in_step:>13.2f}{step:>14.2f}{share:>11.1%}")
print(f"written: {out}")

problems = []
if status != 0 or len(done) != 16:
    problems.append(f"{len(done)} of 16 trials finished (study exit status {status})")
if most < 4:
    problems.append(f"at most {most} trials ran at once, 4 expected")
if len(peaks) != len(table) or any(v is None for v in summary["peak_memory_mb_per_trial"].values()):
    problems.append("some trials reported no gpu/peak_memory_mb: they did not train on the GPU")
for precision, row in bench.items():
    if row["exit_status"] != 0:
        problems.append(f"data_loading.py --device cuda --precision {precision} exited {row['exit_status']}")
for p in problems:
    print(f"gpu_check: FAILED: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
