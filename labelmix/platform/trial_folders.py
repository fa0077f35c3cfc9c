"""What Tune leaves in a study folder for each trial, read without Ray: the trial folders
(``run_trial_<id>_...``) and their ``result.json`` (one JSON object per report)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

TRIAL_FOLDER = re.compile(r"^run_trial_([0-9a-f]{8})(?:_|$)")  # Tune's <trainable>_<trial id>_... folders
RESULT_FILE = "result.json"


def trial_folders(study_dir: Path) -> dict[str, Path]:
    """Trial id -> its folder, for every trial folder in ``study_dir``, in name order."""
    found = {}
    for folder in sorted(Path(study_dir).iterdir()):
        match = TRIAL_FOLDER.match(folder.name)
        if match and folder.is_dir():
            found[match.group(1)] = folder
    return found


def result_lines(folder: Optional[str | Path]) -> list[dict]:
    """A trial folder's result.json as dicts, one per report; a half-written or unreadable line (a
    trial killed while writing) is skipped, a missing file is no reports."""
    if not folder:
        return []
    try:
        lines = (Path(folder) / RESULT_FILE).read_text(errors="replace").splitlines()
    except OSError:
        return []
    results = []
    for line in lines:
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result, dict):
            results.append(result)
    return results
