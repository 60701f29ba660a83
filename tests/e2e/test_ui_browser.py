"""Review in a real browser: ``tlp ui`` on a project after a pipeline run, driven by headless
Chromium (Debian's package), which renders the MLflow UI and must show the latest pipeline
run with its description, metrics and datasets, the registered model with its ``champion``
alias, and the version's page with its model card."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows.servers import stop
from tests.conftest import make_dvc_project
from tests.services import free_port, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.integration]

BIN = Path(sys.executable).parent
TINY = ["data.source.limit=300", "pretrain.epochs=1", "transfer.epochs=2"]
MODEL = "tlp-uci-digits"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium not found: install Debian's chromium package (.ci/run does)")


def render(url: str, profile: Path) -> str:
    """The DOM after the page's scripts ran (virtual time lets the UI's API calls finish)."""
    argv = [_chromium(), "--headless", "--no-sandbox", "--disable-background-networking"]
    argv += ["--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={profile}"]
    argv += ["--virtual-time-budget=30000", "--run-all-compositor-stages-before-draw"]
    argv += ["--window-size=1600,1200", "--dump-dom", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def text_of(dom: str) -> str:
    """The page's text, as a reader sees it: markup removed, white space collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


@pytest.fixture(scope="module")
def reviewed_project(tmp_path_factory):
    """A finished pipeline run in a fresh project, and ``tlp ui`` serving its store."""
    _chromium()
    project = make_dvc_project(tmp_path_factory.mktemp("browser"))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home"))}
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"  # a loaded 2-core machine
    env.pop("PREFECT_API_URL", None)
    argv = [str(BIN / "tlp"), "-C", str(project), "run", "--profile", "smoke"]
    argv += [a for s in TINY for a in ("--set", s)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((project / "reports" / "summary.json").read_text())
    port = free_port()
    ui = subprocess.Popen(
        [str(BIN / "tlp"), "-C", str(project), "ui", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", ui, "tlp ui", 120)
        yield project, summary, f"http://127.0.0.1:{port}"
    finally:
        stop([ui])


def test_browser_finds_the_latest_run_its_metrics_and_the_champion(reviewed_project, tmp_path):
    from mlflow import MlflowClient

    project, summary, base = reviewed_project
    store = f"sqlite:///{project}/mlflow.db"
    client = MlflowClient(tracking_uri=store, registry_uri=store)  # not a registry set earlier
    parent = client.get_run(summary["mlflow_run_id"])
    experiment = parent.info.experiment_id

    runs_page = render(f"{base}/#/experiments/{experiment}/runs", tmp_path / "p1")
    assert parent.info.run_name in runs_page  # the latest pipeline run is listed

    run_url = f"{base}/#/experiments/{experiment}/runs/{parent.info.run_id}"
    run_page = render(run_url, tmp_path / "p2")
    assert parent.info.run_name in run_page
    assert "test_accuracy" in run_page and "transfer.epochs" in run_page  # metrics, params
    shown = text_of(run_page)
    assert f"Registered {MODEL} version {summary['version']} (" in shown  # the description
    # the Datasets panel: the first in full (name, DVC digest, context), the rest behind "+N"
    target_hash = client.get_model_version(MODEL, summary["version"]).tags["dvc.data/target"]
    assert f"target/test ({target_hash}) test +" in shown

    model_page = render(f"{base}/#/models/{MODEL}", tmp_path / "p3")
    assert MODEL in model_page and "champion" in model_page
    assert f"Version {summary['version']}" in model_page


def test_browser_finds_the_model_card_on_the_version_page(reviewed_project, tmp_path):
    import urllib.request

    _, summary, base = reviewed_project
    page = render(f"{base}/#/models/{MODEL}/versions/{summary['version']}", tmp_path / "p4")
    shown = text_of(page)
    assert f"Model card: {MODEL} version {summary['version']}" in shown
    for section in ("Intended use", "Out of scope", "Candidates", "Calibration", "Limitations"):
        assert section in shown
    assert "Gate decision" in shown and "How to load it" in shown
    image = re.search(r'<img src="(get-artifact\?path=reliability\.png[^"]+)"', page)
    assert image, "the reliability diagram is not on the version page"
    with urllib.request.urlopen(f"{base}/{image.group(1).replace('&amp;', '&')}") as answer:
        assert answer.headers["Content-Type"] == "image/png"
