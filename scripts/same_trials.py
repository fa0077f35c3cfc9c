"""Whether two study folders hold the same trials: every metric, cost, label-count and config column
of their trial tables equal, trial by trial (matched on their config). Used to show that a refactor
left studies unchanged: run one spec at two commits, then

    python scripts/same_trials.py STUDY_A STUDY_B [STUDY_A2 STUDY_B2 ...]

Exit 0 when every pair is equal, 1 otherwise; one line per pair."""

from __future__ import annotations

import sys

import pandas as pd

COMPARED = ("val/", "test/", "cost/", "config/", "labels/")
PLAIN = ("epoch", "status", "reference", "case")


def compared(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith(COMPARED) or c in PLAIN]


def differing(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """The compared columns whose values differ once both tables are sorted on their config."""
    columns = [c for c in compared(a) if c in b.columns]
    keys = [c for c in columns if c.startswith("config/")] + [c for c in ("case", "reference") if c in columns]

    def ordered(t: pd.DataFrame) -> pd.DataFrame:
        return t.sort_values(keys, key=lambda col: col.astype(str))[columns].reset_index(drop=True)

    if len(a) != len(b):
        return ["(number of trials)"]
    left, right = ordered(a), ordered(b)
    missing = sorted(set(compared(a)) ^ set(compared(b)))
    return missing + [c for c in columns if not left[c].astype(str).equals(right[c].astype(str))]


def main(argv: list[str]) -> int:
    if len(argv) < 2 or len(argv) % 2:
        print(__doc__, file=sys.stderr)
        return 2
    same = True
    for first, second in zip(argv[::2], argv[1::2]):
        a, b = pd.read_parquet(f"{first}/trials.parquet"), pd.read_parquet(f"{second}/trials.parquet")
        diff = differing(a, b)
        same &= not diff
        print(f"{first} vs {second}: {len(a)} trials, {len(compared(a))} columns, "
              + ("the same" if not diff else f"differ in {', '.join(diff)}"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
