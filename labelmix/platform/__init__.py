"""Spec -> Ray Tune study -> results: the names a user of the library calls.

    from labelmix.platform import frontier_of, load_spec, read_table, run_study, write_report

    spec, text = load_spec("quickstart")
    result = run_study(spec, text)           # starts a local Ray unless given an address
    print(frontier_of(read_table(result.study_dir)))
    write_report(result.study_dir)           # <study>/report.html

Each name is imported on first use (module ``__getattr__``), so importing this package, or a
Ray-free module in it (``browse``, ``trial_table``, ``spec``), imports no Ray; ``run_study`` and
``resume_study`` import it when they are first looked up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labelmix.platform.report import write_report
    from labelmix.platform.spec import StudySpec, load_spec, parse_spec, smoke_spec
    from labelmix.platform.study import StudyResult, resume_study, run_study
    from labelmix.platform.trial_table import frontier_of, read_table

# Public name -> the module that defines it.
_HOMES = {
    "StudySpec": "labelmix.platform.spec",
    "load_spec": "labelmix.platform.spec",
    "parse_spec": "labelmix.platform.spec",
    "smoke_spec": "labelmix.platform.spec",
    "StudyResult": "labelmix.platform.study",
    "run_study": "labelmix.platform.study",
    "resume_study": "labelmix.platform.study",
    "read_table": "labelmix.platform.trial_table",
    "frontier_of": "labelmix.platform.trial_table",
    "write_report": "labelmix.platform.report",
}

__all__ = ["StudyResult", "StudySpec", "frontier_of", "load_spec", "parse_spec", "read_table", "resume_study",
           "run_study", "smoke_spec", "write_report"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
