"""A finished study as a user browses it: a real MLflow server, the links labelmix prints, a real
headless Chromium (Debian's ``chromium`` and ``chromium-driver``; skipped, saying so, where they are
missing). Each page is saved as a screenshot under ``test-results/browser/`` at the repo root."""

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from labelmix.platform.mlflow_links import experiment_url, frontier_runs_url, study_links

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SHOTS = Path(__file__).resolve().parents[2] / "test-results" / "browser"
WAIT_S = 60  # the UI's first load compiles a few MB of JavaScript on shared cores
CASES = [
    {"name": "all masks", "mix": {"full": 1}},
    {"name": "10% + boxes", "mix": {"full": 0.1, "box": 0.9}},
    {"name": "10% alone", "mix": {"full": 0.1, "none": 0.9}},
]
SPEC = {
    "name": "browse",
    "dataset": {"synthetic": {"volumes": 5, "slices": 4, "height": 64, "width": 64, "seed": 3}},
    "objectives": [{"metric": "val/miou", "mode": "max"}, {"metric": "cost/hours", "mode": "min"}],
    "space": {"cases": {"grid": CASES}},
    "fixed": {"encoder": "test_resnet", "epochs": 2, "batch_size": 4, "steps_per_epoch": 2, "threads": 1, "box_shape_steps": 5},
    "search": {"algorithm": "grid", "concurrency": 2, "seed": 0},
    "scheduler": {"type": "none"},
}


def chromium() -> tuple[str, str]:
    """(browser, chromedriver) paths, or a skip that says what to install."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no Chromium and chromedriver on PATH: apt-get install chromium chromium-driver (.ci/run does)")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="labelmix-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1600,1000"):
        options.add_argument(arg)
    # An explicit chromedriver: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):  # only this run's pages
        old.unlink()
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def study(mlflow_server, tmp_path_factory):
    """A finished three-case study tracked to the server, with its report written (and logged)."""
    root = tmp_path_factory.mktemp("browse")
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "storage": {"path": str(root / "studies")}}))
    for args in (["submit", str(spec), "--tracking-uri", mlflow_server.uri], ["report", str(root / "studies" / "browse")]):
        proc = subprocess.run([sys.executable, "-m", "labelmix.cli", *args], cwd=root, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = root / "studies" / "browse"
    table = pd.read_parquet(folder / "trials.parquet")
    assert set(table["status"]) == {"TERMINATED"} and len(table) == len(CASES)
    return folder


def trial_ids(folder: Path) -> tuple[set[str], set[str]]:
    """(every trial, the frontier trials) of the study folder."""
    table = pd.read_parquet(folder / "trials.parquet")
    return set(table["trial_id"]), set(pd.read_parquet(folder / "frontier.parquet")["trial_id"])


def cases_of(folder: Path, trials: set[str]) -> set[str]:
    table = pd.read_parquet(folder / "trials.parquet")
    return set(table.loc[table["trial_id"].isin(trials), "case"])


def show(driver, url: str, expected: list[str], shot: str) -> str:
    """Open ``url``, wait until every expected text is on the page, save a screenshot; the page's text."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # A fresh page load, as a link opened from a terminal gets: within one page, MLflow 3.17's UI
    # stays on its loading skeleton when it goes from a shared view to the plain runs URL.
    driver.get("about:blank")
    driver.get(url)
    text = ""

    def ready(d):
        nonlocal text
        for button in d.find_elements(By.CSS_SELECTOR, '[data-component-id="mlflow.assistant.chat_panel.close"]'):
            button.click()  # MLflow 3.17 opens its assistant panel on a first visit; it hides the table's columns
        text = d.find_element(By.TAG_NAME, "body").text
        return all(e in text for e in expected)

    try:
        WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(ready)
    except TimeoutException:
        driver.save_screenshot(str(SHOTS / f"{shot}-timeout.png"))
        missing = [e for e in expected if e not in text]
        raise AssertionError(f"{url}: after {WAIT_S} s the page lacks {missing}; it shows:\n{text[:3000]}") from None
    time.sleep(0.5)  # let the table finish its layout for the screenshot
    driver.save_screenshot(str(SHOTS / f"{shot}.png"))
    return text


def test_study_links_are_printed_for_a_server_study(study, mlflow_server):
    links = study_links(study)
    assert set(links) == {"frontier", "trials", "study run", "frontier plot", "report"}
    assert all(url.startswith(mlflow_server.uri + "/#/experiments/") for url in links.values())


def test_frontier_view_lists_the_frontier_trials_with_mix_cost_and_miou(browser, study):
    from selenium.webdriver.common.by import By

    everyone, front = trial_ids(study)
    columns = ["mix.full", "mix.box", "mix.none", "cost/hours", "cost/reduction", "val/miou", "case", "pareto"]
    text = show(browser, study_links(study)["frontier"],
                [*front, f"{len(front)} matching run", *columns, *cases_of(study, front), "Model training"],
                "frontier_runs")
    assert not [t for t in everyone - front if t in text]  # the other trials are filtered out
    searched = {i.get_attribute("value") for i in browser.find_elements(By.TAG_NAME, "input")}
    assert 'tags.`labelmix.study` = "browse" and tags.pareto = "true"' in searched  # the search box
    assert "Sort: cost/hours" in text


def test_plain_frontier_filter_in_the_url(browser, study):
    """Without the study's shared view: the filter and the order in the URL alone."""
    everyone, front = trial_ids(study)
    record = json.loads((study / "mlflow_runs.json").read_text())
    text = show(browser, frontier_runs_url(record["uri"], record["experiment_id"]),
                [*front, f"{len(front)} matching run", "Sort: cost/hours"], "frontier_filter")
    assert not [t for t in everyone - front if t in text]


def test_trials_view_lists_every_trial_best_first(browser, study):
    everyone, _ = trial_ids(study)
    # the study run is not a row: as many matching runs as trials
    show(browser, study_links(study)["trials"],
         [*everyone, f"{len(everyone)} matching runs", "Sort: val/miou", *(c["name"] for c in CASES)], "trials_runs")


def test_experiment_opens_on_training_runs(browser, study):
    record = json.loads((study / "mlflow_runs.json").read_text())
    # the runs table (with the filter and order the user last left there: the UI keeps them per experiment)
    text = show(browser, experiment_url(record["uri"], record["experiment_id"]),
                ["Model training", "Run Name", "matching run"], "experiment_runs")
    assert "Observability" not in text and "Prompts" not in text  # the GenAI side's navigation


def test_study_run_page_lists_its_trials(browser, study):
    everyone, _ = trial_ids(study)
    show(browser, study_links(study)["study run"], ["browse", "Child runs", *everyone, "labelmix.objectives"], "study_run")


def test_frontier_plot_is_drawn_in_the_run_page(browser, study):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, front = trial_ids(study)
    show(browser, study_links(study)["frontier plot"], ["frontier.html", "Artifacts"], "frontier_plot")
    frame = WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.TAG_NAME, "iframe"))[0]
    browser.switch_to.frame(frame)
    try:
        circles = WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "circle.front"))
        assert {json.loads(c.get_attribute("data-info"))["trial"] for c in circles} == front
        assert "annotation cost (hours)" in browser.find_element(By.TAG_NAME, "body").text
    finally:
        browser.switch_to.default_content()
    browser.save_screenshot(str(SHOTS / "frontier_plot.png"))


def test_report_page_opens_from_the_study_folder(browser, study):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    everyone, front = trial_ids(study)
    page = study / "report.html"
    show(browser, page.as_uri(), [*everyone, *(c["name"] for c in CASES), "on the frontier"], "report")
    rows = browser.find_elements(By.CSS_SELECTOR, "#trial-table tbody tr")
    assert len(rows) == len(everyone)
    assert browser.find_elements(By.CSS_SELECTOR, "svg circle.front")  # the frontier plot is drawn
    # the same page, logged to the study run, in MLflow's artifact viewer
    show(browser, study_links(study)["report"], ["report.html", "Artifacts"], "report_in_mlflow")
    browser.switch_to.frame(WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.TAG_NAME, "iframe"))[0])
    try:
        rows = WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#trial-table tbody tr"))
        assert len(rows) == len(everyone)
    finally:
        browser.switch_to.default_content()
