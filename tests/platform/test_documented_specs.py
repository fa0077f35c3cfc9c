"""Every study spec under docs/studies/ still loads and validates against today's config.

docs/RESULTS.md gives `labelmix submit docs/studies/NAME.yaml` as the command behind each table; a
field renamed or removed in TrainConfig would make that command fail at its first line. The name in
each spec is its file's, so `labelmix table studies/NAME` finds the study the command made.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labelmix.platform.spec import load_spec

DOCUMENTED = sorted((Path(__file__).parents[2] / "docs" / "studies").glob("*.yaml"))


def test_the_documented_specs_are_found():
    names = {path.stem for path in DOCUMENTED}
    assert {"annotation-types-balanced", "annotation-types-balanced-1600", "annotation-types-global-pseudo"} <= names


@pytest.mark.parametrize("path", DOCUMENTED, ids=lambda path: path.stem)
def test_documented_spec_validates_and_names_its_study_after_its_file(path):
    spec, source = load_spec(str(path))
    assert source == path.read_text()
    assert spec.name == path.stem
    assert spec.search.trials >= 1
