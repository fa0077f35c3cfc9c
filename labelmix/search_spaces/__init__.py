"""Built-in study specs, shipped as package data: ``labelmix submit quickstart`` runs one by name."""

from __future__ import annotations

from pathlib import Path

import yaml

_HERE = Path(__file__).resolve().parent


def builtin_specs() -> dict[str, Path]:
    """Built-in spec name (the file stem) -> its YAML file, sorted by name."""
    return {path.stem: path for path in sorted(_HERE.glob("*.yaml"))}


def describe_builtins() -> list[tuple[str, str]]:
    """(name, one-line description) of every built-in spec, for ``labelmix spaces``."""
    rows = []
    for name, path in builtin_specs().items():
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        rows.append((name, " ".join(str(data.get("description", "")).split())))
    return rows
