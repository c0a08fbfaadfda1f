"""The MLflow UI is the comparison screen: a real `mlflow server` on a finished search's store,
opened in headless Chromium (Debian's chromium and chromium-driver, which `.ci/run` installs).

Set SCREENSHOT_DIR to keep the screenshots (the README's comes from here)."""

from __future__ import annotations

import contextlib
import json
import os
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import running_mlflow_server
from mlflow.tracking import MlflowClient

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
           "chromium-driver; .ci/run does)")


@pytest.fixture
def mlflow_server(finished_search, tmp_path: Path):
    """`mlflow server` on the search's store."""
    with running_mlflow_server(finished_search.tracking_uri, finished_search.storage.parent,
                               tmp_path / "server.log") as url:
        yield url


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # no sandbox as root; no background connections (the machine has no internet)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1600,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait_for_text(driver, texts: list[str], timeout: float = 60) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: all(t in d.find_element(By.TAG_NAME, "body").text for t in texts))
    return driver.find_element(By.TAG_NAME, "body").text


def _screenshot(driver, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / name))


def test_trials_are_listed_and_compared_in_the_mlflow_ui(finished_search, mlflow_server, browser,
                                                        tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    client = MlflowClient(finished_search.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags["kind"] == "search")
    trials = [r for r in runs if r.data.tags["kind"] == "trial"]

    # the experiment opens on its runs table (not MLflow's GenAI overview), the search's parent
    # run listed; expanded, it lists every trial
    browser.get(f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs")
    _wait_for_text(browser, [parent.info.run_name])
    browser.find_element(
        By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()
    _wait_for_text(browser, [t.info.run_name for t in trials])
    _screenshot(browser, "mlflow_runs.png", tmp_path)

    # the comparison view: every trial, its params and its metrics, with no setup
    query = urllib.parse.urlencode({"runs": json.dumps([t.info.run_id for t in trials]),
                                    "experiments": json.dumps([experiment.experiment_id])})
    browser.get(f"{mlflow_server}/#/compare-runs?{query}")
    for close in browser.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        close.click()  # the assistant's side panel
    text = _wait_for_text(browser, ["Parallel Coordinates Plot", "val_accuracy",
                                    "learning_rate", *[t.info.run_name for t in trials]])
    assert f"Comparing {len(trials)} Runs" in text
    # show accuracy against the searched params in the parallel-coordinates plot
    params, metrics = browser.find_elements(By.CSS_SELECTOR, "input[role='combobox']")[:2]
    metrics.click()
    metrics.send_keys("val_accuracy", Keys.ENTER)
    params.click()
    for name in ("learning_rate", "optimizer"):
        params.send_keys(name, Keys.ENTER)
    params.send_keys(Keys.ESCAPE)
    # the plot (plotly's parallel coordinates) has an axis for each
    wanted = {"learning_rate", "optimizer", "val_accuracy"}
    assert wanted <= _wait_for_axes(browser, wanted)
    _screenshot(browser, "mlflow_compare.png", tmp_path)


def _wait_for_axes(driver, wanted: set[str], timeout: float = 60) -> set[str]:
    """The titles of the parallel-coordinates plot's axes, once they include `wanted`."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def titles(d) -> set[str]:
        return {e.text for e in d.find_elements(By.CSS_SELECTOR, ".parcoords .axis-title")}

    with contextlib.suppress(TimeoutException):
        WebDriverWait(driver, timeout).until(lambda d: wanted <= titles(d))
    return titles(driver)
