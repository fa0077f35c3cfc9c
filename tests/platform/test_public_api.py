"""labelmix.platform's public surface: the names a library user calls, imported on first use, so
that importing the package (or a Ray-free module in it) imports no Ray."""

import subprocess
import sys

import pytest

import labelmix.platform as platform

RAY_FREE = {
    "StudySpec": "labelmix.platform.spec",
    "load_spec": "labelmix.platform.spec",
    "parse_spec": "labelmix.platform.spec",
    "smoke_spec": "labelmix.platform.spec",
    "read_table": "labelmix.platform.trial_table",
    "frontier_of": "labelmix.platform.trial_table",
    "write_report": "labelmix.platform.report",
}
NEEDS_RAY = {"StudyResult", "run_study", "resume_study"}


def python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_surface_is_the_documented_names():
    assert set(platform.__all__) == set(RAY_FREE) | NEEDS_RAY
    assert set(platform.__all__) <= set(dir(platform))


def test_importing_the_package_and_its_ray_free_names_imports_no_ray():
    names = ", ".join(sorted(RAY_FREE))
    code = (
        "import sys, labelmix.platform\n"
        "print('ray' in sys.modules)\n"
        f"from labelmix.platform import {names}\n"
        "import labelmix.platform.axes, labelmix.platform.assembly, labelmix.platform.trial_checks\n"
        "import labelmix.platform.storage, labelmix.platform.storage_checks, labelmix.platform.trial_folders\n"
        "import labelmix.platform.report, labelmix.platform.report_charts\n"
        "print('ray' in sys.modules)\n"
    )
    assert python(code).split() == ["False", "False"]


@pytest.mark.parametrize("name", sorted(RAY_FREE))
def test_ray_free_names_are_their_home_modules_objects(name):
    module = __import__(RAY_FREE[name], fromlist=[name])
    assert getattr(platform, name) is getattr(module, name)


def test_study_names_resolve_to_the_study_runner():
    from labelmix.platform import resume_study, run_study, study

    assert run_study is study.run_study and resume_study is study.resume_study
    assert platform.StudyResult is study.StudyResult


def test_unknown_names_and_submodules():
    with pytest.raises(AttributeError, match="no attribute 'run'"):
        platform.run  # noqa: B018
    from labelmix.platform import cluster  # submodules import as before

    assert cluster.__name__ == "labelmix.platform.cluster"
