"""The sweep report in a real headless browser: Debian's chromium, driven by chromedriver through selenium.

One browser for the module, one load per page. The page records its console errors and, per plot, the
traces it was given and the trace groups drawn (``window.mltrainReport``); the test compares those with
what this sweep must show, clicks the table's headings, and looks at the screenshot.
``.ci/provision-browser.sh`` (``make provision``) installs the browser.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, assert_one_line_error

from mltrain.store.db import CANCELED, COMPLETED, FAILED, PREPARING, RUNNING, Store, TrialRecord
from mltrain.store.workspace import Workspace
from mltrain.sweep.report import EARLY
from mltrain.tracking.report import write_report

pytestmark = pytest.mark.integration

HOSTILE = "</script><b>x</b>"  # a metric name a job may log: it must neither end the page's script nor bolden
# trial: (lr, opt, status, reason, final loss, steps logged); None: the trial never got a run
TRIALS: list[tuple[str, str, str, str | None, float, int] | None] = [
    ("0.1", "sgd", COMPLETED, None, 0.30, 20),
    ("0.01", "adam", COMPLETED, None, 0.20, 20),  # the best
    ("0.001", "sgd", CANCELED, EARLY, 0.90, 6),  # stopped early
    ("1", "adam", FAILED, "exit code 1", 2.50, 3),
    ("0.03", "sgd", COMPLETED, None, 0.40, 20),
    None,  # its submission failed: no run, no metric
]


def _sweep(workspace: Workspace, sweep_id: str, primary: str | None) -> None:
    workspace.ensure()
    settings = {"sampler": "grid", "goal": "min", **({"primary_metric": primary} if primary else {})}
    with Store(workspace.db_path) as store:
        store.create_sweep(sweep_id=sweep_id, key=sweep_id, experiment="exp", command={}, settings=settings,
                           planned=len(TRIALS), controller=None)
        for idx, trial in enumerate(TRIALS):
            params = [f"params.lr={trial[0] if trial else '0.5'}", f"params.opt={trial[1] if trial else 'sgd'}"]
            if trial is None:
                store.put_trial(TrialRecord(sweep_id, idx, params, f"{sweep_id}-{idx}", None, error="bad config"))
                continue
            _, _, status, reason, final, steps = trial
            run_id = f"{sweep_id[:4]}{idx:04d}"
            store.create_run(run_id=run_id, experiment="exp", script="train.py", source_dir="/src", compute="local",
                             environment="user_managed", overrides=params, sweep_id=sweep_id)
            store.transition(run_id, PREPARING)
            store.transition(run_id, RUNNING)
            store.transition(run_id, status, reason=reason)
            rows = [("loss", final + (2.0 - final) * (steps - 1 - s) / 19, s, None) for s in range(steps)]
            rows += [("acc", 1 - final / 3, s, None) for s in range(steps)]
            if idx == 0:
                rows.append((HOSTILE, 1.0, 0, None))
            store.add_metrics(run_id, rows)
            store.put_trial(TrialRecord(sweep_id, idx, params, f"{sweep_id}-{idx}", run_id))
        store.finish_sweep(sweep_id, COMPLETED)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra (make install)")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no chromium/chromedriver: run .ci/provision-browser.sh (make provision)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # swiftshader: WebGL without a GPU, for the parallel-coordinates plot
    for arg in ("--headless=new", "--no-sandbox", "--window-size=1280,1000", "--enable-unsafe-swiftshader"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(driver), options=options)  # the given driver: nothing downloaded
    try:
        chrome.execute_cdp_cmd("Network.enable", {})
        chrome.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["http://*", "https://*"]})  # as if offline
        yield chrome
    finally:
        chrome.quit()


def _open(browser: Any, page: Path) -> dict[str, Any]:
    """Load ``page`` and wait until every plot was drawn; the page's record of it, and the console's errors."""
    browser.get(page.as_uri())
    deadline = time.monotonic() + 60
    while not browser.execute_script("return window.mltrainReport && window.mltrainReport.done"):
        assert time.monotonic() < deadline, "the report's plots never finished drawing"
        time.sleep(0.1)
    record: dict[str, Any] = browser.execute_script("return window.mltrainReport")
    record["console"] = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    return record


def _figures(page: Path) -> dict[str, Any]:
    text = page.read_text()
    start = text.index('id="mltrain-figures">') + len('id="mltrain-figures">')
    return {f["id"]: f for f in json.loads(text[start:text.index("</script>", start)])}


def _column(browser: Any, n: int) -> list[str]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#trials tbody tr')).map(r => r.cells[arguments[0]].textContent)",
        n)  # type: ignore[no-any-return]


def _pixels(png: bytes) -> tuple[int, float]:
    """(distinct colours, share of pixels that are not white) of a screenshot."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    white = sum(n for n, rgb in colours if min(rgb) >= 250)
    return len(colours), 1 - white / (image.width * image.height)


def test_report_in_a_browser(project: Project, browser: Any, tmp_path: Path) -> None:
    workspace = Workspace(project.workspace)
    _sweep(workspace, "sw000001", "loss")
    page = tmp_path / "report.html"
    result = project.run("sweeps", "report", "sw00", "-o", str(page), check=True)  # an id prefix, as elsewhere
    assert result.stdout == f"wrote {page}\n"
    record = _open(browser, page)
    # self-contained: nothing to fetch (and the browser may fetch nothing: any try is a console error)
    assert browser.execute_script("return document.querySelectorAll('script[src], link[href], img[src]').length") == 0
    assert record["errors"] == [] and record["console"] == []
    # what this sweep must show: 5 trials with a run (all have a loss), 1 of them logged the hostile name
    expected = {"plot-trials": 3,  # trials, best so far, the best (star)
                "plot-curves-0": 5, "plot-curves-1": 1, "plot-curves-2": 5,  # loss first, then by name
                "plot-parallel": 1, "plot-param-0": 2, "plot-param-1": 2}  # each param: trials and the best
    assert {k: v["traces"] for k, v in record["plots"].items()} == expected
    assert {k: v["drawn"] for k, v in record["plots"].items()} == expected  # each trace drawn on the page
    figures = _figures(page)
    assert [t["name"] for t in figures["plot-curves-0"]["data"]] == [
        "#0", "#1", "#2 (stopped early)", "#3", "#4"]
    early = figures["plot-curves-0"]["data"][2]
    assert early["line"]["dash"] == "dot" and early["marker"]["size"][-1] > 0  # marked where it stopped
    assert figures["plot-trials"]["data"][2]["x"] == [1] and figures["plot-trials"]["data"][2]["y"] == [0.2]
    assert figures["plot-param-0"]["layout"]["xaxis"]["type"] == "log"  # lr spans 1e-3 .. 1
    assert figures["plot-param-1"]["layout"]["xaxis"]["type"] == "category"  # opt: sgd, adam
    dims = figures["plot-parallel"]["data"][0]["dimensions"]
    assert [d["label"] for d in dims] == ["log10(params.lr)", "params.opt", "loss"]

    # the hostile name is text everywhere: in the heading and in plotly's axis title
    shown = browser.execute_script(
        "return [document.querySelectorAll('h2')[3].textContent,"
        " document.querySelector('#plot-curves-1 .ytitle').textContent,"
        " document.querySelectorAll('#plot-curves-1 b, h2 b').length]")
    assert shown == [f"{HOSTILE} over steps, every trial", HOSTILE, 0]

    # the table: best marked, early-stopped named, sortable by a click (numbers as numbers, blanks last)
    assert _column(browser, 0) == ["0", "1 ★", "2", "3", "4", "5"]
    assert _column(browser, 2)[2] == "Canceled (stopped early)"
    heading = browser.find_elements("css selector", "#trials th")
    heading[3].click()
    assert _column(browser, 3) == ["0.2", "0.3", "0.4", "0.9", "2.5", "-"]
    heading[3].click()
    assert _column(browser, 3) == ["2.5", "0.9", "0.4", "0.3", "0.2", "-"]
    heading[5].click()
    assert _column(browser, 5) == ["0.001", "0.01", "0.03", "0.1", "0.5", "1"]

    colours, inked = _pixels(browser.get_screenshot_as_png())
    assert colours > 50 and inked > 0.05, (colours, inked)
    parallel = browser.find_element("css selector", "#plot-parallel")
    browser.execute_script("arguments[0].scrollIntoView()", parallel)
    colours, inked = _pixels(parallel.screenshot_as_png)  # WebGL lines, not only the axes' SVG
    assert colours > 30 and inked > 0.03, (colours, inked)


def test_report_of_a_sweep_without_a_primary_metric(project: Project, browser: Any, tmp_path: Path) -> None:
    """Nothing ranks the trials: the curves are drawn, the plots of a metric over trials and params are not."""
    workspace = Workspace(project.workspace)
    _sweep(workspace, "sw000002", None)
    page = write_report(workspace, "sw000002", tmp_path / "plain.html")
    record = _open(browser, page)
    assert record["errors"] == [] and record["console"] == []
    assert {k: v["drawn"] for k, v in record["plots"].items()} == {
        "plot-curves-0": 1, "plot-curves-1": 5, "plot-curves-2": 5}  # by name: the hostile one, acc, loss
    assert "set no sweep.primary_metric" in browser.find_element("css selector", "body").text


def test_report_command_default_path_and_bad_ids(project: Project) -> None:
    _sweep(Workspace(project.workspace), "sw000003", "loss")
    result = project.run("sweeps", "report", "sw000003", check=True)
    assert result.stdout == "wrote sweep-sw000003.html\n"  # beside where it was asked for
    page = (project.root / "sweep-sw000003.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "Plotly" in page
    assert "<h1>Sweep sw000003" in page and "</script><b>" not in page.split('id="mltrain-figures">')[1]
    assert_one_line_error(project.run("sweeps", "report", "nosuch"), "no sweep 'nosuch'", "sweeps list")
    assert_one_line_error(project.run("sweeps", "report", "sw000003", "-o", str(project.root / "no" / "r.html")),
                          "cannot write", "choose a folder that exists")
