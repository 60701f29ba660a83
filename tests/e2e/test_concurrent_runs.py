"""Two ``tlp run`` started at once in one project: one runs, the other waits for it (--wait)
or stops with a clear message; never 'database is locked', never a half-written dvc.lock.
What each prints is read as a terminal shows it (stdout and stderr together): it ends with
the summary, no warning among the last lines."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.stages import STAGE_NAMES
from tests.conftest import make_dvc_project

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# a loaded 2-core CI machine can take longer than Prefect's default 20 s to start its API
SLOW_MACHINE = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
TINY = [
    "data.source.limit=300",
    "pretrain.epochs=1",
    "transfer.epochs=2",
]


def _start(project: Path, prefect_home: Path, *extra: str) -> subprocess.Popen:
    argv = [str(Path(sys.executable).parent / "tlp"), "-C", str(project), "run"]
    argv += ["--profile", "smoke", *[a for s in TINY for a in ("--set", s)], *extra]
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), **SLOW_MACHINE}
    env.pop("PREFECT_API_URL", None)
    env.pop("TLP_VERBOSE", None)
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _both(project: Path, prefect_home: Path, *extra: str) -> list[tuple[int, str]]:
    procs = [_start(project, prefect_home, *extra) for _ in range(2)]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    return [(proc.returncode, out) for proc, out in zip(procs, outputs, strict=True)]


def _assert_lock_whole(project: Path) -> None:
    from dvc.repo import Repo

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGE_NAMES)
    with Repo(str(project)) as repo:
        assert repo.status() == {}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_dvc_project(tmp_path_factory.mktemp("concurrent"))


def test_two_waiting_runs_both_finish_one_after_the_other(project, tmp_path_factory):
    results = _both(project, tmp_path_factory.mktemp("prefect-home"), "--wait", "600")
    for code, out in results:
        assert code == 0, out[-2000:]
        assert "database is locked" not in out
        assert "warning" not in out.lower(), out[-3000:]  # e.g. MLflow's on the type hint
    ran = next(out for _, out in results if "Transfer pipeline finished." in out)
    # the summary comes right after the pipeline's own last line: no MLflow notes between
    last_line = ran.split("\nTransfer pipeline finished.")[0].strip().splitlines()[-1]
    assert re.search(r"pipeline: finished in [0-9.]+ s$", last_line), ran[-3000:]
    summary = json.loads((project / "reports" / "summary.json").read_text())
    skipped = [out.split("skipped (up to date):")[1].splitlines()[0].strip() for _, out in results]
    # exactly one of them ran the stages; the other waited and found everything up to date
    # (tlp run's shortcut: nothing changed since the first finished, so no flow ran)
    assert sorted(skipped) == sorted(["none", ", ".join(STAGE_NAMES)])
    shortcut = "Nothing changed: data and pipelines are up to date."
    assert sum(shortcut in out for _, out in results) == 1
    assert summary["skipped_stages"] == []  # reports/summary.json of the run that trained
    # both say what the gate did (tiny training: it may refuse) and offer @champion only when
    # it holds this run's model; the shortcut's from what the first run recorded
    gate = summary["promotion"]
    decision = "PROMOTED" if gate["promoted"] else "REFUSED"
    holds_this_run = gate["champion_after"] == summary["version"]
    for _, out in results:
        assert f"  promotion gate      : {decision}: {gate['reason']}" in out, out[-3000:]
        assert ("'models:/tlp-digits@champion')" in out) == holds_this_run
    _assert_lock_whole(project)


def test_two_runs_without_wait_one_stops_with_a_clear_message(project, tmp_path_factory):
    lock_before = (project / "dvc.lock").read_text()
    # --force-flow: both go through the flow (the shortcut would finish before the other starts)
    results = sorted(_both(project, tmp_path_factory.mktemp("prefect-home"), "--force-flow"))
    (ok_code, ok_out), (busy_code, busy_out) = results
    assert ok_code == 0, ok_out[-2000:]
    assert busy_code == 3, busy_out[-2000:]
    assert (
        "tlp: run stopped:" in busy_out
        and "another tlp command holds the project lock" in busy_out
    )
    assert "--wait SECONDS" in busy_out
    assert "database is locked" not in busy_out + ok_out
    assert (project / "dvc.lock").read_text() == lock_before
    _assert_lock_whole(project)
