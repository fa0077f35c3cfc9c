"""Integration (real Ray): a study whose trials all fail exits 1, with each trial's last error line.

The spec is valid, and its trials fail at run time on their own: one 32x32 training image in
batches of 1 leaves BatchNorm a single value per channel at the encoder's 1x1 stride-32 level.
"""

import pandas as pd
import pytest

from tests.conftest import cli, write_spec

pytestmark = pytest.mark.slow

SPEC = {
    "name": "all-fail",
    "dataset": {"synthetic": {"volumes": 5, "slices": 2, "height": 32, "width": 32, "seed": 0}, "max_train_images": 1},
    "objectives": [{"metric": "val/miou"}],
    "space": {"ema_decay": {"loguniform": [0.9, 0.99]}},
    "fixed": {"encoder": "test_resnet", "epochs": 1, "batch_size": 1, "threads": 1, "lr": 0.001},
    "search": {"algorithm": "random", "trials": 2, "concurrency": 2, "seed": 0},
    "failure": {"max_failures": 0},
}
ERROR = "ValueError: Expected more than 1 value per channel when training, got input size torch.Size([1, 96, 1, 1])"


def test_a_study_whose_trials_all_fail_exits_1_with_their_errors(tmp_path):
    path = write_spec(tmp_path, SPEC)
    check = cli("check", str(path))
    assert check.returncode == 0, check.stderr  # nothing check could have seen

    proc = cli("submit", str(path), cwd=tmp_path, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "0 of 2 trials finished." in proc.stdout
    table = pd.read_parquet(tmp_path / "studies" / "all-fail" / "trials.parquet")
    summary = proc.stderr[proc.stderr.index("2 of 2 trials failed"):].splitlines()
    assert summary == [
        "2 of 2 trials failed (the whole error: error.txt in each trial's folder):",
        *(f"  {trial_id}: {ERROR}" for trial_id in table["trial_id"]),  # in the trial table's order
        "labelmix: no trial finished (2 trials); the study failed",
    ]
