"""labelmix report: one offline HTML page from a study folder built by hand (no Ray, no server)."""

import json
import re
import xml.etree.ElementTree as ET

import pandas as pd
import pytest

from labelmix.errors import UserError
from labelmix.platform.report import REPORT_FILE, learning_curves, log_report, write_report
from labelmix.platform.trial_table import RUNS_FILE, TRIALS_FILE, with_pareto, write_parquet

SVG = "{http://www.w3.org/2000/svg}"
REF, BOX, GLOBAL, NONE, BROKEN = "0e0e0e0e", "a1a1a1a1", "b2b2b2b2", "c3c3c3c3", "d4d4d4d4"
TRIALS = {  # id: (case, reference, status, (full, box, global, none), ds_type, hours, mIoU per epoch)
    REF: ("all masks", True, "TERMINATED", (1.0, 0.0, 0.0, 0.0), "multi_label", 57.6, [0.5, 0.65, 0.70]),
    BOX: ("5% + boxes", False, "TERMINATED", (0.05, 0.95, 0.0, 0.0), "multi_label", 4.0, [0.4, 0.6, 0.66]),
    GLOBAL: ("10% + global", False, "TERMINATED", (0.1, 0.0, 0.9, 0.0), "standard", 6.0, [0.3, 0.5, 0.60]),
    NONE: ("5% alone", False, "TERMINATED", (0.05, 0.0, 0.0, 0.95), "none", 3.5, [0.1, 0.2, 0.30]),
    BROKEN: ("20% + boxes", False, "ERROR", (0.2, 0.8, 0.0, 0.0), "standard", None, []),
}


def make_study(root, reference=True):
    """A study folder as a finished study leaves it: trials.parquet and Tune's run_trial_* folders."""
    rows = []
    for i, (tid, (case, ref, status, mix, ds_type, hours, curve)) in enumerate(TRIALS.items()):
        row = {"trial_id": tid, "status": status, "case": case, "config/ds_type": ds_type, "config/epochs": 3,
               **{f"config/mix.{k}": v for k, v in zip(("full", "box", "global", "none"), mix)},
               "cost/hours": hours, "cost/reduction": None if hours is None else 1 - hours / 57.6,
               "val/miou": curve[-1] if curve else None}
        if reference:
            row["reference"] = ref
        rows.append(row)
        folder = root / f"run_trial_{tid}_{i}_cases={i},seed=0_2026-12-02_06-19-18"
        folder.mkdir(parents=True)
        if curve:
            lines = [json.dumps({"val/miou": m, "train/loss": 1 - m, "epoch": e + 1.0, "training_iteration": e + 1,
                                 "trial_id": tid}) for e, m in enumerate(curve)]
            (folder / "result.json").write_text("\n".join(lines) + ("\n{\"val/miou\": 0.9, \"ep" if tid == BOX else "\n"))
    write_parquet(with_pareto(pd.DataFrame(rows)), root / TRIALS_FILE)
    return root


def svgs(page):
    return [ET.fromstring(m) for m in re.findall(r"<svg .*?</svg>", page, re.S)]


def test_report_page_is_offline_and_has_every_part(tmp_path):
    study = make_study(tmp_path / "study")
    out = write_report(study)
    assert out == study / REPORT_FILE
    page = out.read_text()
    frontier, curves, mix = svgs(page)

    # offline: nothing fetched; "http" only in the SVG namespaces
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page) and "@import" not in page and "<link" not in page
    assert page.count("http") == page.count('xmlns="http://www.w3.org/2000/svg"') == 3
    for tid in TRIALS:
        assert tid in page

    # 1. the frontier: searched trials only; the reference a line at 0.700 with a band of 0.05
    circles = frontier.findall(f"{SVG}circle")
    assert {json.loads(c.get("data-info"))["trial"] for c in circles} == {BOX, GLOBAL, NONE}
    assert {json.loads(c.get("data-info"))["trial"] for c in circles if c.get("class") == "front"} == {BOX, NONE}
    (line,) = [e for e in frontier.iter(f"{SVG}line") if e.get("class") == "reference"]
    (band,) = [e for e in frontier.iter(f"{SVG}rect") if e.get("class") == "within"]
    assert float(band.get("y")) == pytest.approx(float(line.get("y1")))  # the band hangs below the line
    texts = [t.text for t in frontier.iter(f"{SVG}text")]
    assert "reference (all masks) 0.700" in texts and "within 0.05 of the reference" in texts
    assert "reference (all masks): val/miou 0.700" in page  # the summary line

    # 2. the sortable table: one row per trial, the asked-for columns, the script
    table = ET.fromstring(re.search(r'<table class="sortable".*?</table>', page, re.S).group(0))
    heads = [th.text for th in table.iter("th")]
    assert heads == ["trial_id", "case", "reference", "status", "mix.full", "mix.box", "mix.global", "mix.none",
                     "cost/hours", "cost/reduction", "val/miou", "ds_type", "pareto"]
    rows = table.find("tbody").findall("tr")
    assert [r[0].text for r in rows] == list(TRIALS)
    assert [r.get("class") for r in rows] == [None, "front", None, "front", None]  # the reference is not on it
    assert "function sortTable(th)" in page and 'querySelectorAll("table.sortable th")' in page

    # 3. learning curves: one polyline per trial with a result.json, 3 points each, frontier in red
    lines = {p.get("data-trial"): p for p in curves.iter(f"{SVG}polyline")}
    assert set(lines) == {REF, BOX, GLOBAL, NONE}
    assert {t: len(p.get("points").split()) for t, p in lines.items()} == {REF: 3, BOX: 3, GLOBAL: 3, NONE: 3}
    assert {t: p.get("class") for t, p in lines.items()} == {
        REF: "curve reference", BOX: "curve front", GLOBAL: "curve trial", NONE: "curve front"}

    # 4. the effect of each axis: mIoU vs mask fraction per dominant weak label; means per setting
    assert '<h2 id="effects">Effect of each axis</h2>' in page
    series = {p.get("data-kind"): len(p.get("points").split()) for p in mix.iter(f"{SVG}polyline")}
    assert series == {"box": 1, "global": 1, "none": 1, "full only": 1}  # the errored trial has no score
    effect = ET.fromstring(re.search(r'<table class="effect" data-setting="config/ds_type">.*?</table>', page, re.S).group(0))
    means = {r[0].text: (r[1].text, r[2].text) for r in effect.findall("tr")[1:]}
    assert means == {"multi_label": ("1", "0.660"), "standard": ("1", "0.600"), "none": ("1", "0.300")}  # searched only
    assert 'data-setting="case"' in page and 'data-setting="config/epochs"' not in page  # fixed: not an axis


def test_without_a_reference_column_there_is_no_reference_line(tmp_path):
    page = write_report(make_study(tmp_path / "study", reference=False), tmp_path / "r.html").read_text()
    frontier = svgs(page)[0]
    assert not [e for e in frontier.iter(f"{SVG}line") if e.get("class") == "reference"]
    assert {json.loads(c.get("data-info"))["trial"] for c in frontier.findall(f"{SVG}circle")} == {REF, BOX, GLOBAL, NONE}
    assert "no reference trial" in page


def test_learning_curves_skip_half_written_lines(tmp_path):
    curves = learning_curves(make_study(tmp_path / "study"))
    assert curves[BOX] == [(1.0, 0.4), (2.0, 0.6), (3.0, 0.66)]
    assert BROKEN not in curves  # no result.json


def test_bad_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such study folder"):
        write_report(tmp_path / "missing")
    with pytest.raises(UserError, match=f"no {TRIALS_FILE}"):
        write_report(tmp_path)


def test_cli_writes_and_prints_the_path(tmp_path, capsys):
    from labelmix.cli import main

    study = make_study(tmp_path / "study")
    assert main(["report", str(study), "--out", str(tmp_path / "page.html"), "--no-mlflow"]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'page.html'}\n"
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such study folder" in capsys.readouterr().err


def test_log_report_puts_the_page_on_the_study_run(tmp_path, mlflow_db):
    from mlflow import MlflowClient

    study = make_study(tmp_path / "study")
    page = write_report(study, tmp_path / "other-name.html")
    assert log_report(study, page) is None  # no mlflow_runs.json: nothing logged

    client = MlflowClient(mlflow_db)
    parent = client.create_run(client.create_experiment("demo")).info.run_id
    (study / RUNS_FILE).write_text(json.dumps({"uri": mlflow_db, "experiment": "demo", "parent": parent, "children": {}}))
    assert log_report(study, page) == parent
    assert [a.path for a in client.list_artifacts(parent)] == [REPORT_FILE]
