"""Tune's trial folders read without Ray: which folders are trials, and result.json line by line."""

from labelmix.platform.trial_folders import result_lines, trial_folders


def test_trial_folders_are_found_by_name_and_a_half_written_line_is_skipped(tmp_path):
    for name in ("run_trial_0a1b2c3d_1_mix=0.5_2026", "run_trial_ffffffff", "run_trial_xyz", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "run_trial_12345678.txt").write_text("a file, not a trial")
    assert {k: v.name for k, v in trial_folders(tmp_path).items()} == {
        "0a1b2c3d": "run_trial_0a1b2c3d_1_mix=0.5_2026", "ffffffff": "run_trial_ffffffff"}
    folder = tmp_path / "run_trial_ffffffff"
    (folder / "result.json").write_text('{"epoch": 1, "val/miou": 0.25}\n[1, 2]\n{"epoch": 2, "val/mi')
    assert result_lines(folder) == [{"epoch": 1, "val/miou": 0.25}]
    assert result_lines(tmp_path / "run_trial_0a1b2c3d_1_mix=0.5_2026") == [] and result_lines(None) == []
