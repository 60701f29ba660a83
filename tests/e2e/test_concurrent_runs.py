"""Two ``tlp run`` started at once in one project: one runs, the other waits for it (--wait)
or stops with a clear message; never 'database is locked', never a half-written dvc.lock.
What each prints is read as a terminal shows it (stdout and stderr together): it ends with
the summary, no warning among the last lines.

Then faults, in a project of their own: Ctrl-C (SIGINT to the process group), then kill -9
in the middle of training, then a rerun that must end what the kill left and give the metrics
the uninterrupted runs above gave."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tasks.core.params import resolve_params
from tasks.stages import stage_names
from tests.conftest import ROOT, make_dvc_project

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# a loaded 2-core CI machine can take longer than Prefect's default 20 s to start its API
SLOW_MACHINE = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
TINY = [
    "data.source.limit=300",
    "pretrain.epochs=1",
    "transfer.epochs=2",
]
STAGE_NAMES = stage_names(resolve_params(ROOT / "params.yaml", "smoke", TINY))  # transfer@NAME


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
        assert ("'models:/tlp-uci-digits@champion')" in out) == holds_this_run
    _assert_lock_whole(project)


def test_two_runs_without_wait_one_stops_with_a_clear_message(project, tmp_path_factory):
    lock_before = (project / "dvc.lock").read_text()
    # --force-flow: both go through the flow (the shortcut would finish before the other starts)
    results = sorted(_both(project, tmp_path_factory.mktemp("prefect-home"), "--force-flow"))
    (ok_code, ok_out), (busy_code, busy_out) = results
    assert ok_code == 0, ok_out[-2000:]
    assert busy_code == 3, busy_out[-2000:]
    assert (
        "tlp: run stopped:" in busy_out and "another tlp command holds the project lock" in busy_out
    )
    assert "--wait SECONDS" in busy_out
    assert "database is locked" not in busy_out + ok_out
    assert (project / "dvc.lock").read_text() == lock_before
    _assert_lock_whole(project)


def _start_in_a_terminal(project: Path, home: Path) -> subprocess.Popen:
    """``tlp run`` as a terminal starts a job: a process group of its own. HOME is a fresh one
    and no Prefect setting is passed, so Prefect's state is where tlp puts it by default."""
    from flows.prefect_api import USER_CHOICES

    argv = [str(Path(sys.executable).parent / "tlp"), "-C", str(project), "run"]
    argv += ["--profile", "smoke", *[a for s in TINY for a in ("--set", s)]]
    env = {**os.environ, "HOME": str(home), **SLOW_MACHINE}
    for key in (*USER_CHOICES, "PREFECT_PROFILES_PATH", "PREFECT_PROFILE", "TLP_VERBOSE"):
        env.pop(key, None)
    return subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # SIGINT as a terminal leaves it (a test runner started in the background ignores it,
        # and a child inherits that)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )


def _read_until(proc: subprocess.Popen, pattern: str) -> None:
    for line in proc.stdout:
        if re.search(pattern, line):
            return
    raise AssertionError(f"tlp run ended (code {proc.wait()}) before printing {pattern!r}")


def _rows(db: Path, query: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(query).fetchall()


def _run_statuses(project: Path) -> dict[str, str]:
    return dict(_rows(project / "mlflow.db", "select run_uuid, status from runs"))


def _api_pid(project: Path) -> int:
    from flows.prefect_api import PID_FILE

    return json.loads((project / PID_FILE).read_text())["pid"]


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_ctrl_c_then_kill_9_then_a_rerun_gives_the_uninterrupted_metrics(project, tmp_path_factory):
    from tasks.core.locking import run_lock
    from tasks.core.stale import ENDED_TAG

    reference = project / "reports" / "metrics.json"  # the uninterrupted runs above
    if not reference.is_file():  # this test alone: one uninterrupted run first
        assert _both(project, tmp_path_factory.mktemp("prefect-home"), "--wait", "600")[0][0] == 0
    faults = make_dvc_project(tmp_path_factory.mktemp("faults"))
    home = tmp_path_factory.mktemp("home")

    # Ctrl-C from the terminal: SIGINT to the whole group, once pretraining started
    proc = _start_in_a_terminal(faults, home)
    _read_until(proc, r"pretrain: started")
    api = _api_pid(faults)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, rest[-3000:]
    assert time.monotonic() - sent < 15
    assert rest.strip().splitlines()[-1] == "tlp: interrupted", rest[-3000:]
    assert _gone(api, within=5)  # the temporary API ended with it
    assert "RUNNING" not in _run_statuses(faults).values()
    flow_runs = _rows(faults / ".tlp/prefect/prefect.db", "select state_type from flow_run")
    assert flow_runs and all(state != "RUNNING" for (state,) in flow_runs), flow_runs
    assert not (home / ".prefect" / "prefect.db").exists()  # stored in the project
    with run_lock(faults):  # released
        pass

    # kill -9 once a strategy finished an epoch (a checkpoint to resume from)
    proc = _start_in_a_terminal(faults, home)
    _read_until(proc, r"transfer/\w+: epoch 1/")
    api = _api_pid(faults)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert _gone(api, within=10)  # the kernel ended the API with its parent (PDEATHSIG)
    left = [run for run, status in _run_statuses(faults).items() if status == "RUNNING"]
    assert left  # what kill -9 leaves: the parent run and the strategy's run

    # the rerun ends what was left, resumes, and lands on the uninterrupted metrics
    proc = _start_in_a_terminal(faults, home)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "tlp run: an earlier run of this project was killed: " in out, out[:3000]
    statuses = _run_statuses(faults)
    assert all(statuses[run] == "FAILED" for run in left)
    assert "RUNNING" not in statuses.values()
    ended = _rows(faults / "mlflow.db", f"select run_uuid from tags where key = '{ENDED_TAG}'")
    assert {run for (run,) in ended} == set(left)
    metrics = json.loads((faults / "reports" / "metrics.json").read_text())
    assert metrics == json.loads(reference.read_text())
    _assert_lock_whole(faults)
